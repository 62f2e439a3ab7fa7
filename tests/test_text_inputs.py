"""Text inputs: every row in its place, a clear error for anything else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sktransfer import TextInputError
from sktransfer._text.inputs import as_texts, text_digest

TEXTS = ["a cat", "", "  spaced  ", "naïve café", "line\r\nbreak\u2028"]


@pytest.mark.parametrize(
    "wrap",
    [
        list,
        tuple,
        np.array,
        lambda t: np.array(t, dtype=object),
        lambda t: np.array(t, dtype=object)[:, None],
        pd.Series,
        lambda t: pd.Series(t, dtype="string"),
        pd.Index,
        lambda t: pd.DataFrame({"text": t}),
        iter,
    ],
)
def test_every_container_gives_the_texts_verbatim_in_order(wrap):
    texts = as_texts(wrap(TEXTS))
    assert texts.texts == TEXTS
    assert texts.errors == {}
    assert all(type(t) is str for t in texts.texts)


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA])
def test_a_missing_text_follows_on_error(missing):
    X = pd.Series(["a", missing, "c"], dtype=object)
    with pytest.raises(TextInputError, match="Row 1 has no text") as info:
        as_texts(X)
    assert info.value.index == 1
    texts = as_texts(X, on_error="nan")
    assert texts.texts == ["a", None, "c"]
    assert list(texts.errors) == [1] and texts.present() == [0, 2]
    assert texts.digests()[1] is None


def test_a_string_column_with_na():
    texts = as_texts(pd.Series(["a", None, "c"], dtype="string"), on_error="nan")
    assert texts.texts == ["a", None, "c"]


@pytest.mark.parametrize(
    "X, error, match",
    [
        ("one text", TypeError, r"single str.*\[text\]"),
        (b"bytes", TypeError, "single bytes"),
        (["a", 3], TypeError, "Row 1 is not a text: got int"),
        (["a", b"b"], TypeError, "Row 1 is not a text: got bytes"),
        (np.arange(3), TypeError, "dtype int64"),
        (np.array([["a", "b"]]), ValueError, "1-D array"),
        (pd.DataFrame({"a": ["x"], "b": ["y"]}), ValueError, "one column"),
        ([], ValueError, "0 texts"),
        (3, TypeError, "got int"),
    ],
)
def test_anything_else_is_refused_naming_the_fix(X, error, match):
    with pytest.raises(error, match=match):
        as_texts(X)


def test_digests_tell_texts_apart_and_round_trip_any_string():
    assert text_digest("a") != text_digest("a ")
    assert text_digest("\ud800") != text_digest("")  # (a lone surrogate)
    assert as_texts(["x", "x"]).digests() == [text_digest("x")] * 2
