"""Word-vector files, converted once into a memory-mapped matrix.

The formats people have: GloVe text (``word v1 ... vd``, no header),
word2vec text and fastText ``.vec`` (the same, after a ``n_words dim``
header line), word2vec binary (the header, then each word, a space and
``dim`` little-endian float32), each of them gzipped too (recognised by
content, not by name). A gensim ``KeyedVectors`` object is used as it is.

The first load of a file streams it, a chunk of lines at a time (memory
stays bounded whatever the file's size), into a folder named by the file's
content digest: ``vectors.f32`` (the raw float32 matrix), ``words.txt``
(one word a line, in row order) and ``meta.json``. The folder sits beside
the file (``.sktransfer-word-vectors/``) or, where that cannot be written,
in the cache folder (:func:`cache_folder`). A *stamp* (the file's path,
inode, size and modification and change times) maps to the digest, so a
second load, in any process, hashes nothing and reads no text: it maps the
matrix (pages shared between processes) and reads the words.

Words that are not valid UTF-8 (cp1252 punctuation is common in real
files) are decoded as cp1252; a word that appears twice keeps its first
row, as gensim does.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sktransfer._identity import file_digest
from sktransfer._memo import Memo
from sktransfer.exceptions import CacheWarning, warn

__all__ = [
    "BESIDE",
    "EXTENSIONS",
    "WordVectorTable",
    "cache_folder",
    "clear",
    "file_identity",
    "keyed_vectors_table",
    "load_file",
    "name_folders",
    "resolve_name",
]

#: The folder, beside a vectors file, that holds its conversions.
BESIDE = ".sktransfer-word-vectors"
#: The file names a vectors name may have in a folder (``name`` + one).
EXTENSIONS = ("", ".txt", ".vec", ".bin", ".w2v")
_GZIP = b"\x1f\x8b"
_FASTTEXT_BIN = (793712314).to_bytes(4, "little")  # fastText's model magic
_PICKLE = b"\x80"
_CHUNK_LINES = 8192
_VERSION = 1


@dataclass(frozen=True)
class WordVectorTable:
    """Loaded word vectors: a read-only float32 matrix (memory-mapped for a
    file) and the row of each word."""

    matrix: np.ndarray  # (n_words, dim) float32
    index: dict  # word -> row
    digest: str  # the content identity of the vectors

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return int(self.matrix.shape[0])


#: Loaded tables by digest: clones and refits of one process share them.
_TABLES = Memo(size=4)


def clear() -> None:
    """Forget the loaded tables (files are mapped again on demand)."""
    _TABLES.clear()


# -- where conversions live -------------------------------------------------------


def cache_folder() -> Path:
    """Where conversions go when a file's own folder cannot be written, and
    where vectors names are looked up: ``$SKTRANSFER_WORD_VECTORS`` or
    ``$XDG_CACHE_HOME/sktransfer/word_vectors`` (``~/.cache/...``)."""
    folder = os.environ.get("SKTRANSFER_WORD_VECTORS")
    if folder:
        return Path(os.path.expanduser(folder))
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expanduser(home)) / "sktransfer" / "word_vectors"


def _roots(path: Path) -> list[Path]:
    """The folders that may hold ``path``'s conversions, preferred first."""
    return [path.parent / BESIDE, cache_folder()]


def _read_only(folder: Path) -> bool:
    """Whether ``folder`` is not to be written: no write permission, or no
    write bit at all (respected even by root, who could write anyway)."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return True
    return not (mode & 0o222) or not os.access(folder, os.W_OK)


def _stamp(path: Path) -> str:
    """What identifies one version of a file without reading it."""
    st = os.stat(path)
    key = (
        os.path.abspath(path),
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )
    return hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()


def file_identity(path) -> str:
    """The content digest of a vectors file, read from its stamp when a
    conversion recorded one (no hashing), else computed."""
    path = Path(path)
    stamp = _stamp(path)
    for root in _roots(path):
        try:
            recorded = (root / "stamps" / stamp).read_text().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if len(recorded) == 32:
            return recorded
    return file_digest(path)


# -- names ------------------------------------------------------------------------


def name_folders() -> list[Path]:
    """The folders where a vectors name is looked up, in order."""
    return [cache_folder()]


def _names_in(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return found
    for entry in entries:
        name = entry.name.removesuffix(".gz")
        for ext in EXTENSIONS[1:]:
            name = name.removesuffix(ext)
        found.setdefault(name, entry)
    return found


def resolve_name(name: str) -> Path | None:
    """The file of a vectors name (``glove.6B.100d`` for
    ``glove.6B.100d.txt``, gzipped or not), or None."""
    for folder in name_folders():
        names = _names_in(folder)
        if name in names:
            return names[name]
    return None


def known_names() -> list[str]:
    """Every vectors name that :func:`resolve_name` finds, sorted."""
    names: set[str] = set()
    for folder in name_folders():
        names.update(_names_in(folder))
    return sorted(names)


# -- reading the formats ------------------------------------------------------------


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(_GZIP):
        return gzip.open(path, "rb")
    if magic == _FASTTEXT_BIN:
        raise ValueError(
            f"{str(path)!r} is a fastText model (.bin), not a vectors file. Pass "
            "its .vec file, or load it with gensim "
            "(gensim.models.fasttext.load_facebook_vectors(path)) and pass that "
            "object as 'vectors'."
        )
    if magic.startswith(_PICKLE):
        raise ValueError(
            f"{str(path)!r} is a pickle (a gensim KeyedVectors.save file?), which "
            "sktransfer does not open: unpickling runs code the file carries. "
            "If you trust it, load it with gensim "
            "(KeyedVectors.load(path, mmap='r')) and pass that object as 'vectors'."
        )
    return open(path, "rb")


def _word(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _header(line: bytes) -> tuple[int, int] | None:
    """``(n_words, dim)`` of a word2vec / fastText header line, or None."""
    fields = line.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        n, dim = int(fields[0]), int(fields[1])
        if dim > 0:
            return n, dim
    return None


def _bad_line(path: Path, number: int, dim: int, line: bytes) -> ValueError:
    return ValueError(
        f"Line {number} of the vectors file {str(path)!r} is not a word and "
        f"{dim} numbers (as the first row has): {line[:80]!r}. Is the file "
        "truncated or in another format? Accepted: GloVe text, word2vec text "
        "or binary, fastText .vec, each gzipped or not."
    )


def _parse_lines(path, lines: list[bytes], first: int, dim: int):
    """Words and a (len(lines), dim) float32 block of text lines."""
    words, rests = [], []
    for line in lines:
        word, _, rest = line.rstrip(b"\r\n ").partition(b" ")
        words.append(word)
        rests.append(rest)
    try:
        with warnings.catch_warnings():  # (numpy < 2.3 warns on a bad field)
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(b"\n".join(rests), dtype=np.float32, sep=" ")
    except ValueError:  # (a field that is not a number: the slow way says where)
        values = np.empty(0, np.float32)
    if values.size == len(lines) * dim and all(r.count(b" ") == dim - 1 for r in rests):
        return [_word(w) for w in words], values.reshape(len(lines), dim)
    # The slow way, line by line: a word holding spaces (GloVe 840B has
    # some), runs of spaces or tabs, or a bad line (named in the error).
    out = np.empty((len(lines), dim), np.float32)
    words = []
    for k, line in enumerate(lines):
        fields = line.rstrip(b"\r\n ").rsplit(maxsplit=dim)
        try:
            if len(fields) != dim + 1:
                raise ValueError
            out[k] = np.array(fields[1:], dtype=np.float32)
        except ValueError:
            raise _bad_line(path, first + k, dim, line) from None
        words.append(fields[0])
    return [_word(w) for w in words], out


def _text_rows(path: Path, f, header: tuple[int, int] | None, first_line: bytes):
    """Blocks of (words, vectors) of a text file, after its header."""
    if header is None:
        dim = len(first_line.split()) - 1
        if dim < 1:
            raise _bad_line(path, 1, 1, first_line)
        pending, number = [first_line], 1
    else:
        dim, pending, number = header[1], [], 2
    for line in f:
        if not line.strip():
            continue
        pending.append(line)
        if len(pending) == _CHUNK_LINES:
            yield dim, _parse_lines(path, pending, number, dim)
            number += len(pending)
            pending = []
    if pending:
        yield dim, _parse_lines(path, pending, number, dim)


def _binary_rows(path: Path, f, n: int, dim: int):
    """Blocks of (words, vectors) of a word2vec binary file."""
    width = 4 * dim
    buffer, pos, done = b"", 0, 0
    while done < n:
        count = min(_CHUNK_LINES, n - done)
        words, block = [], np.empty((count, dim), np.float32)
        for k in range(count):
            while True:
                space = buffer.find(b" ", pos)
                if space != -1 and len(buffer) >= space + 1 + width:
                    break
                more = f.read(1 << 20)
                if not more:
                    raise ValueError(
                        f"The word2vec binary file {str(path)!r} ends at word "
                        f"{done + k + 1} of the {n} its header announces: it is "
                        "truncated (download it again)."
                    )
                buffer, pos = buffer[pos:] + more, 0
            words.append(_word(buffer[pos:space].strip(b"\n\r")))
            block[k] = np.frombuffer(buffer, "<f4", dim, space + 1)
            pos = space + 1 + width
        done += count
        yield dim, (words, block)


def _is_binary(path: Path, dim: int) -> bool:
    """Whether a file with a word2vec header is binary: text has a line of
    a word and ``dim`` numbers after the header; binary has raw floats."""
    with _open(path) as f:
        f.readline()
        fields = f.readline(64 * dim + 4096).split()
    if len(fields) != dim + 1:
        return True
    try:
        np.array(fields[1:], dtype=np.float32)
    except ValueError:
        return True
    return False


def _rows(path: Path):
    """``(format, blocks)``: the file's format and its (dim, (words,
    vectors)) blocks, streamed."""
    f = _open(path)
    try:
        first = f.readline()
        header = _header(first)
        if header is None:
            yield "glove", None
            yield from _text_rows(path, f, None, first)
            return
        binary = _is_binary(path, header[1])
        yield ("word2vec-binary" if binary else "word2vec"), header
        if binary:
            yield from _binary_rows(path, f, *header)
        else:
            yield from _text_rows(path, f, header, b"")
    finally:
        f.close()


# -- converting and mapping ---------------------------------------------------------


def _convert(path: Path, digest: str, root: Path) -> Path:
    """Convert ``path`` into ``root/digest`` (atomically: a finished
    folder, or none); OSError if ``root`` cannot be written."""
    if root.name == BESIDE and _read_only(root.parent):
        raise PermissionError(f"the folder {str(root.parent)!r} is read-only")
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest}."))
    try:
        rows, dim = 0, None
        blocks = _rows(path)
        kind, header = next(blocks)
        with (
            open(work / "vectors.f32", "wb") as vf,
            open(work / "words.txt", "w", encoding="utf-8", newline="\n") as wf,
        ):
            for _, (words, block) in blocks:
                dim = block.shape[1]
                vf.write(np.ascontiguousarray(block, "<f4").tobytes())
                wf.write("".join(w.replace("\n", " ") + "\n" for w in words))
                rows += len(words)
        if dim is None:
            raise ValueError(f"The vectors file {str(path)!r} holds no vectors.")
        if header is not None and header[0] != rows:
            raise ValueError(
                f"The vectors file {str(path)!r} announces {header[0]} words in "
                f"its header but holds {rows}: it is truncated or damaged."
            )
        meta = {
            "version": _VERSION,
            "digest": digest,
            "format": kind,
            "rows": rows,
            "dim": dim,
            "source": os.path.abspath(path),
        }
        (work / "meta.json").write_text(json.dumps(meta))
        final = root / digest
        try:
            os.rename(work, final)
        except OSError:
            if not (final / "meta.json").is_file():  # (another process won)
                raise
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _record_stamp(path: Path, digest: str, root: Path) -> None:
    if root.name == BESIDE and _read_only(root.parent):
        return
    try:
        (root / "stamps").mkdir(parents=True, exist_ok=True)
        (root / "stamps" / _stamp(path)).write_text(digest)
    except OSError:
        pass  # only the next load's hashing is lost


def _map(folder: Path, digest: str) -> WordVectorTable | None:
    """The table of a finished conversion, or None if there is none (a
    damaged one is reported and converted again)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        meta = {"error": str(exc)}
    try:
        rows, dim = int(meta["rows"]), int(meta["dim"])
        if meta.get("version") != _VERSION or meta.get("digest") != digest:
            raise ValueError("not this file's conversion")
        matrix = np.memmap(folder / "vectors.f32", "<f4", "r", shape=(rows, dim))
        words = (folder / "words.txt").read_text(encoding="utf-8").split("\n")
        if len(words) != rows + 1 or words[-1] != "":
            raise ValueError(f"{len(words) - 1} words for {rows} rows")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warn(
            f"The converted word vectors in {str(folder)!r} are damaged ({exc}); "
            "the file is converted again.",
            CacheWarning,
        )
        shutil.rmtree(folder, ignore_errors=True)
        return None
    del words[-1]
    # The first row of a word wins: assign the rows from the last one up.
    index = dict(zip(reversed(words), range(rows - 1, -1, -1), strict=True))
    return WordVectorTable(matrix, index, digest)


def load_file(path, digest: str | None = None) -> WordVectorTable:
    """The table of a vectors file: mapped from its conversion, converted
    first if there is none. ``digest``: the file's, if known already."""
    path = Path(path)
    digest = digest or file_identity(path)
    table = _TABLES.get(digest)
    if table is not None:
        return table
    roots = _roots(path)
    for root in roots:
        table = _map(root / digest, digest)
        if table is not None:
            _record_stamp(path, digest, root)
            break
    else:
        failures = []
        for root in roots:
            try:
                folder = _convert(path, digest, root)
            except OSError as exc:  # (read-only, full...): the next root
                failures.append(f"{root}: {exc}")
                continue
            _record_stamp(path, digest, root)
            table = _map(folder, digest)
            break
        if table is None:
            raise OSError(
                f"The word vectors of {str(path)!r} could not be converted in "
                f"any folder ({'; '.join(failures)}). Set SKTRANSFER_WORD_VECTORS "
                "to a folder that can be written."
            )
    _TABLES.put(digest, table)
    return table


# -- gensim objects -----------------------------------------------------------------

_OBJECT_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keyed_vectors_table(kv) -> WordVectorTable:
    """The table of a gensim ``KeyedVectors`` (its own matrix, not copied if
    float32), identified by its vectors and words, hashed once per object."""
    matrix = np.asarray(kv.vectors, dtype=np.float32)
    digest = _OBJECT_DIGESTS.get(kv)
    if digest is None:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(matrix.shape).encode())
        h.update(np.ascontiguousarray(matrix).data)
        h.update("\n".join(map(str, kv.index_to_key)).encode("utf-8", "replace"))
        digest = h.hexdigest()
        _OBJECT_DIGESTS[kv] = digest
    return WordVectorTable(matrix, kv.key_to_index, digest)
