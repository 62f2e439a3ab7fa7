"""scikit-learn's estimator contract, on texts.

``check_estimator`` feeds numeric arrays and skips estimators whose tags say
they take strings, so no check of it ever runs on a text transformer. Each
test here runs the property of one or more of its checks on texts with
:class:`~sktransfer.PretrainedTextExtractor` (a tiny random BERT), and
declares which with ``@pytest.mark.covers``; the last test verifies the
pairing (:data:`TEXT_CHECKS`) and that each test does what its check does.
"""

from __future__ import annotations

import pickle
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import MissingTextsWarning, PretrainedTextExtractor

from .conftest import assert_checks_backed, assert_same_rows, transform_in_fresh_process

pytest.importorskip("transformers")

TEXTS = [
    "the cat sat on the mat",
    "a good movie",
    "i hated the ending , but loved the actors",
    "it was really not very good",
    "the dog",
    "a great film and a great plot",
    "awful",
    "the story was good",
    "i loved it",
    "bad actors , bad plot",
]

#: sklearn check -> the test of this module standing in for it on texts.
TEXT_CHECKS = {
    "check_get_params_invariance": "test_text_contract.py::test_clone_and_params",
    "check_estimators_overwrite_params": "test_text_contract.py::test_clone_and_params",
    "check_dont_overwrite_parameters": "test_text_contract.py::test_clone_and_params",
    "check_fit_check_is_fitted": (
        "test_text_contract.py::test_transform_before_fit_raises"
    ),
    "check_estimators_pickle": (
        "test_text_contract.py::test_pickle_round_trip_in_fresh_process"
    ),
    "check_methods_sample_order_invariance": (
        "test_text_contract.py::test_rows_independent_of_batch_and_order"
    ),
    "check_methods_subset_invariance": (
        "test_text_contract.py::test_rows_independent_of_batch_and_order"
    ),
    "check_fit_idempotent": "test_text_contract.py::test_transform_is_deterministic",
    "check_pipeline_consistency": (
        "test_text_contract.py::test_transform_is_deterministic"
    ),
    "check_transformer_general": (
        "test_text_contract.py::test_transform_is_deterministic"
    ),
    "check_dict_unchanged": (
        "test_text_contract.py::test_transform_leaves_state_unchanged"
    ),
    "check_estimators_fit_returns_self": "test_text_contract.py::test_fit_returns_self",
    "check_fit_score_takes_y": "test_text_contract.py::test_fit_returns_self",
    "check_estimators_empty_data_messages": (
        "test_text_contract.py::test_empty_and_bad_inputs_raise"
    ),
    "check_estimators_nan_inf": (
        "test_text_contract.py::test_empty_and_bad_inputs_raise"
    ),
    "check_dtype_object": "test_text_contract.py::test_containers_agree",
    "check_transformer_data_not_an_array": (
        "test_text_contract.py::test_containers_agree"
    ),
    "check_fit2d_1sample": "test_text_contract.py::test_single_text",
    "check_get_feature_names_out": (
        "test_text_contract.py::test_feature_names_and_set_output"
    ),
    "check_set_output_transform": (
        "test_text_contract.py::test_feature_names_and_set_output"
    ),
    "check_set_output_transform_pandas": (
        "test_text_contract.py::test_feature_names_and_set_output"
    ),
}


def make(folder, **params):
    params.setdefault("verbose", False)
    params.setdefault("cache", None)
    params.setdefault("layer", [1, -1])
    return PretrainedTextExtractor(model=str(folder), **params)


@pytest.mark.covers(
    "check_get_params_invariance",
    "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters",
)
def test_clone_and_params(tiny_text_model):
    """get_params round-trips; fit leaves every parameter as it was; a clone
    is cheap and unfitted, and set_params never fails."""
    extractor = make(tiny_text_model, layer=[2, 3], max_length=16)
    params = extractor.get_params()
    assert PretrainedTextExtractor(**params).get_params() == params
    extractor.fit(TEXTS)
    after = extractor.get_params()
    assert after.keys() == params.keys()
    for key, value in params.items():
        assert after[key] is value, key  # not even a copy
    start = time.perf_counter()
    copy = clone(extractor)
    assert time.perf_counter() - start < 0.5
    assert not hasattr(copy, "network_") and copy.get_params() == params
    copy.set_params(layer="nonsense", pooling="nonsense", max_length=-3, model=3)
    assert copy.get_params()["layer"] == "nonsense"
    assert clone(copy).get_params()["model"] == 3  # (fit says what is wrong)


@pytest.mark.covers("check_fit_check_is_fitted")
def test_transform_before_fit_raises(tiny_text_model):
    """transform and get_feature_names_out before fit: NotFittedError."""
    extractor = make(tiny_text_model)
    with pytest.raises(NotFittedError, match="not fitted"):
        extractor.transform(TEXTS)
    with pytest.raises(NotFittedError):
        extractor.get_feature_names_out()


@pytest.mark.covers("check_estimators_pickle")
def test_pickle_round_trip_in_fresh_process(tiny_text_model, tmp_path):
    """A pickled extractor gives the same rows in a fresh process."""
    extractor = make(tiny_text_model).fit(TEXTS)
    expected = extractor.transform(TEXTS)
    again = pickle.loads(pickle.dumps(extractor))
    assert_same_rows(again.transform(TEXTS), expected)
    rows = transform_in_fresh_process(extractor, np.array(TEXTS), tmp_path)
    assert_same_rows(rows, expected)


@pytest.mark.covers(
    "check_methods_sample_order_invariance", "check_methods_subset_invariance"
)
def test_rows_independent_of_batch_and_order(tiny_text_model):
    """A text's row does not depend on the order, the batch size or the
    other texts of the call (float32 rounding aside)."""
    extractor = make(tiny_text_model, batch_size=3).fit(TEXTS)
    full = extractor.transform(TEXTS)
    permutation = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = extractor.transform([TEXTS[i] for i in permutation])
    assert_same_rows(shuffled, full[permutation])
    assert_same_rows(extractor.transform(TEXTS[2:4]), full[2:4])
    assert_same_rows(extractor.transform(TEXTS[5:9]), full[5:9])
    one_by_one = np.vstack([extractor.transform([t]) for t in TEXTS])
    assert_same_rows(one_by_one, full)
    wide = make(tiny_text_model, batch_size=64).fit(TEXTS).transform(TEXTS)
    assert_same_rows(wide, full)


@pytest.mark.covers(
    "check_fit_idempotent", "check_pipeline_consistency", "check_transformer_general"
)
def test_transform_is_deterministic(tiny_text_model):
    """Refitting, transforming again and running inside a pipeline give the
    same rows; fit_transform equals fit then transform."""
    extractor = make(tiny_text_model)
    first = extractor.fit_transform(TEXTS)
    np.testing.assert_array_equal(extractor.fit(TEXTS).transform(TEXTS), first)
    np.testing.assert_array_equal(extractor.transform(TEXTS), first)
    pipeline = make_pipeline(make(tiny_text_model), StandardScaler())
    np.testing.assert_allclose(
        pipeline.fit_transform(TEXTS), StandardScaler().fit_transform(first), atol=1e-4
    )
    np.testing.assert_array_equal(pipeline.transform(TEXTS), pipeline.transform(TEXTS))


@pytest.mark.covers("check_dict_unchanged")
def test_transform_leaves_state_unchanged(tiny_text_model):
    """transform writes no state beyond errors_: every other attribute is
    the same object with the same value."""
    extractor = make(tiny_text_model, on_error="nan").fit(TEXTS)
    before = dict(vars(extractor))
    with pytest.warns(MissingTextsWarning):
        extractor.transform([*TEXTS, None])
    after = dict(vars(extractor))
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key != "errors_":
            assert after[key] is value, key
    assert [e.index for e in after["errors_"]] == [len(TEXTS)]


@pytest.mark.covers("check_estimators_fit_returns_self", "check_fit_score_takes_y")
def test_fit_returns_self(tiny_text_model):
    """fit returns the extractor, with or without y (ignored)."""
    extractor = make(tiny_text_model)
    assert extractor.fit(TEXTS) is extractor
    y = np.arange(len(TEXTS)) % 2
    assert extractor.fit(TEXTS, y) is extractor
    np.testing.assert_array_equal(
        extractor.transform(TEXTS), make(tiny_text_model).fit(TEXTS).transform(TEXTS)
    )


@pytest.mark.covers("check_estimators_empty_data_messages", "check_estimators_nan_inf")
def test_empty_and_bad_inputs_raise(tiny_text_model):
    """No texts, a single string, a NaN or inf among texts, 2-D tabular
    data: clear errors naming the fix, before the model runs."""
    X = np.array(TEXTS, dtype=object)
    extractor = make(tiny_text_model)
    with pytest.raises(ValueError, match="0 texts"):
        extractor.fit(X[:0])
    with pytest.raises(TypeError, match="single str"):
        extractor.fit("one text")
    with pytest.raises(ValueError, match="Row 1 has no text"):
        extractor.fit(["a", float("nan")])
    with pytest.raises(TypeError, match="Row 1 is not a text: got float"):
        extractor.fit(["a", float("inf")])
    with pytest.raises(ValueError, match="1-D array of texts"):
        extractor.fit(np.zeros((4, 3)))  # tabular data
    with pytest.raises(TypeError, match="dtype float64"):
        extractor.fit(np.zeros(4))


@pytest.mark.covers("check_dtype_object", "check_transformer_data_not_an_array")
def test_containers_agree(tiny_text_model):
    """A list, tuple, object array, str array, Series and one-column
    DataFrame of the same texts give the same rows."""
    extractor = make(tiny_text_model).fit(list(TEXTS))
    expected = extractor.transform(list(TEXTS))
    for X in (
        tuple(TEXTS),
        np.array(TEXTS, dtype=object),
        np.array(TEXTS),
        pd.Series(TEXTS),
        pd.DataFrame({"text": TEXTS}),
    ):
        np.testing.assert_array_equal(extractor.transform(X), expected)


@pytest.mark.covers("check_fit2d_1sample")
def test_single_text(tiny_text_model):
    """One text fits and transforms to one row."""
    rows = make(tiny_text_model).fit(["a"]).transform(["a"])
    assert rows.shape == (1, 64) and np.isfinite(rows).all()


@pytest.mark.covers(
    "check_get_feature_names_out",
    "check_set_output_transform",
    "check_set_output_transform_pandas",
)
def test_feature_names_and_set_output(tiny_text_model):
    """One name per column, unique; set_output('pandas') uses them."""
    extractor = make(tiny_text_model, layer=[None, 0]).fit(TEXTS)
    names = extractor.get_feature_names_out()
    assert names.dtype == object and len(set(names)) == len(names) == 64
    assert names[0] == "embedding_0" and names[32] == "layer0_mean_0"
    rows = extractor.transform(TEXTS)
    frame = extractor.set_output(transform="pandas").transform(TEXTS)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(names)
    np.testing.assert_array_equal(frame.to_numpy(), rows)
    extractor.set_output(transform="default")
    assert isinstance(extractor.transform(TEXTS), np.ndarray)


def test_every_text_check_is_backed_by_a_test():
    """Each listed check names a test of this module that declares it
    covers it, uses the extractor and does what the check does."""
    assert_checks_backed(TEXT_CHECKS, estimator=("extractor", "make("))
