"""Word vectors as a model source: a file, a gensim ``KeyedVectors``, or a
name looked up offline in the local folder.

Its :meth:`~WordVectorsSource.load` gives a
:class:`~sktransfer._text.word_vectors.WordVectorTable` (the memory-mapped
matrix and the vocabulary), and its identity is the vectors' content digest.
"""

from __future__ import annotations

import os
from pathlib import Path

from sktransfer._common import did_you_mean
from sktransfer._sources.base import Source
from sktransfer._text import word_vectors as _wv

__all__ = ["WordVectorsSource", "is_keyed_vectors", "vectors_file"]


def is_keyed_vectors(value) -> bool:
    """Whether ``value`` is a gensim ``KeyedVectors`` (gensim not imported)."""
    return any(
        cls.__name__ == "KeyedVectors" and cls.__module__.startswith("gensim.")
        for cls in type(value).__mro__
    )


def vectors_file(vectors) -> Path:
    """The file a path or a name stands for, or FileNotFoundError naming
    the fix."""
    path = Path(os.path.expanduser(os.fspath(vectors)))
    if path.is_file():
        return path
    if isinstance(vectors, str) and os.sep not in vectors and "/" not in vectors:
        found = _wv.resolve_name(vectors)
        if found is not None:
            return found
        names = _wv.known_names()
        folders = ", ".join(repr(str(f)) for f in _wv.name_folders())
        raise FileNotFoundError(
            f"The 'vectors' parameter {vectors!r} is neither a file nor the name "
            f"of a vectors file in {folders} (set SKTRANSFER_WORD_VECTORS to "
            "another folder)."
            + (did_you_mean(vectors, names) or f" Names found there: {names[:10]}.")
        )
    if path.exists():
        raise IsADirectoryError(
            f"The 'vectors' parameter {str(vectors)!r} is a folder; pass the "
            "vectors file inside it."
        )
    raise FileNotFoundError(
        f"The 'vectors' parameter names no file: {str(vectors)!r} does not exist."
    )


class WordVectorsSource(Source):
    """Word vectors: a GloVe, word2vec or fastText file (gzipped or not), a
    gensim ``KeyedVectors``, or the name of a file in the local folder."""

    name = "word_vectors"
    kind = "word_vectors"

    def matches(self, model) -> bool:
        return isinstance(model, (str, os.PathLike)) or is_keyed_vectors(model)

    def check(self, model) -> None:
        if not is_keyed_vectors(model):
            vectors_file(model)

    def identity(self, model, weights=None, seed=None) -> str | None:
        if is_keyed_vectors(model):
            return _wv.keyed_vectors_table(model).digest
        return _wv.file_identity(vectors_file(model))

    def load(self, model, weights=None):  # type: ignore[override]
        """The :class:`~sktransfer._text.word_vectors.WordVectorTable`;
        ``weights``: the expected digest, if known."""
        if is_keyed_vectors(model):
            return _wv.keyed_vectors_table(model)
        return _wv.load_file(vectors_file(model), weights)
