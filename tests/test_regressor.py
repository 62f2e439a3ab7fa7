"""FineTunedRegressor: the recipe for continuous targets (issue 31)."""

import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import sktransfer
from sktransfer import FineTunedRegressor, PretrainedFeatureExtractor

from .conftest import SMALL, TinyCNN, assert_checks_backed, transform_in_fresh_process


@pytest.fixture(scope="module")
def bright():
    """Random 16x16 images of random brightness, and their mean brightness
    (0..1): a known function of image content."""
    rng = np.random.default_rng(0)
    level = rng.uniform(30, 225, (64, 1, 1, 1))
    X = np.clip(level + rng.normal(0, 25, (64, 16, 16, 3)), 0, 255).astype(np.uint8)
    return X, X.mean(axis=(1, 2, 3)) / 255


def reg(**params):
    torch.manual_seed(0)
    defaults = dict(
        model=TinyCNN(),
        preprocessing={"resize_size": 16, "crop_size": 16},
        precision="float32",
        max_epochs=2,
        batch_size=8,
        learning_rate=1e-2,
        random_state=0,
        verbose=False,
    )
    return FineTunedRegressor(**{**defaults, **params})


@pytest.mark.covers(
    "check_fit_score_takes_y",
    "check_estimators_fit_returns_self",
    "check_regressors_train",
    "check_regressors_no_decision_function",
)
def test_fits_mean_brightness_far_better_than_the_mean(bright):
    """R^2 well above 0 (predicting the mean) on held-out images, targets
    restored to their own scale."""
    X, y = bright
    model = reg(hidden_layer_sizes=(32,), max_epochs=40, trainable_layers="all")
    assert model.fit(X[:48], y[:48]) is model
    pred = model.predict(X[48:])
    assert pred.shape == (16,) and pred.dtype == np.float64
    assert model.score(X[48:], y[48:]) > 0.8
    assert abs(pred.mean() - y[48:].mean()) < 0.1  # on y's scale, not standardised
    assert model.target_mean_ == pytest.approx([y[:48].mean()])
    assert model.n_outputs_ == 1 and model.n_iter_ == 40
    assert not hasattr(model, "decision_function")
    assert not hasattr(model, "predict_proba")


@pytest.mark.covers("check_regressor_multioutput", "check_supervised_y_2d")
def test_several_outputs_and_column_y(bright):
    X, y = bright
    Y = np.c_[y, 1000 * y + 5]
    model = reg().fit(X, Y)
    assert model.predict(X).shape == (64, 2) and model.n_outputs_ == 2
    np.testing.assert_allclose(model.target_scale_, [y.std(), 1000 * y.std()])
    column = reg().fit(X, y.reshape(-1, 1))
    assert column.predict(X).shape == (64, 1)
    np.testing.assert_allclose(column.predict(X)[:, 0], reg().fit(X, y).predict(X))
    with pytest.raises(ValueError, match="dim <= 2"):
        reg().fit(X, y.reshape(-1, 1, 1))


def test_huber_loss_trains_and_differs(bright):
    X, y = bright
    huber = reg(loss="huber").fit(X, y)
    squared = reg().fit(X, y)
    assert not np.allclose(huber.predict(X), squared.predict(X))
    assert huber.loss_curve_[-1] < squared.loss_curve_[-1]  # Huber <= squared / 2
    with pytest.raises(ValueError, match="'loss' parameter"):
        reg(loss="absolute").fit(X, y)


def test_early_stopping_on_validation_r2(bright):
    X, y = bright
    model = reg(early_stopping=True, n_iter_no_change=2, max_epochs=30).fit(X, y)
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)


@pytest.mark.covers("check_fit_idempotent", "check_regressors_int")
def test_same_random_state_same_predictions_and_int_targets(bright):
    X, y = bright
    state = torch.random.get_rng_state()
    a = reg(dropout=0.2).fit(X, y).predict(X)
    model = reg(dropout=0.2)
    np.testing.assert_array_equal(model.fit(X, y).predict(X), a)
    np.testing.assert_array_equal(model.fit(X, y).predict(X), a)  # refit
    assert not np.array_equal(reg(dropout=0.2, random_state=1).fit(X, y).predict(X), a)
    assert torch.equal(torch.random.get_rng_state(), state)
    ints = (y * 100).astype(int)
    np.testing.assert_allclose(
        reg().fit(X, ints).predict(X), reg().fit(X, ints.astype(float)).predict(X)
    )


@pytest.mark.covers("check_pipeline_consistency")
def test_a_pipeline_predicts_as_the_regressor_alone(bright):
    X, y = bright
    alone = reg().fit(X, y)
    pipeline = make_pipeline(reg()).fit(X, y)
    np.testing.assert_array_equal(pipeline.predict(X), alone.predict(X))


@pytest.mark.covers(
    "check_estimators_overwrite_params", "check_dont_overwrite_parameters"
)
def test_fit_leaves_parameters_unchanged(bright):
    X, y = bright
    model = reg(hidden_layer_sizes=[8])
    params = copy.deepcopy(model.get_params())
    before = {k for k in vars(model) if not k.startswith("_")}
    model.fit(X, y)
    after = model.get_params()
    assert all(after[k] == params[k] for k in params if k != "model")
    added = {k for k in vars(model) if not k.startswith("_")} - before
    assert added and all(name.endswith("_") for name in added), added


@pytest.mark.covers("check_dict_unchanged")
def test_predict_leaves_state_unchanged(bright):
    X, y = bright
    model = reg(trainable_layers=1).fit(X, y)
    before = dict(vars(model))
    model.predict(X)
    model.score(X, y)
    assert vars(model).keys() == before.keys()
    assert all(vars(model)[k] is before[k] for k in before)


@pytest.mark.covers(
    "check_methods_sample_order_invariance", "check_methods_subset_invariance"
)
def test_predictions_independent_of_order_and_subset(bright):
    X, y = bright
    model = reg(trainable_layers=1).fit(X, y)
    expected = model.predict(X)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(model.predict(X[order]), expected[order], atol=1e-6)
    np.testing.assert_allclose(model.predict(X[5:9]), expected[5:9], atol=1e-6)


@pytest.mark.covers(
    "check_readonly_memmap_input",
    "check_f_contiguous_array_estimator",
    "check_regressor_data_not_an_array",
    "check_regressors_train(readonly_memmap=True)",
)
def test_memmap_readonly_fortran_and_list_inputs_fit_alike(bright, tmp_path):
    X, y = bright
    expected = reg().fit(X, y).predict(X)
    np.save(tmp_path / "X.npy", X)
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    readonly = X.copy()
    readonly.setflags(write=False)
    for inputs in (memmap, readonly, np.asfortranarray(X), list(X)):
        before = np.array(inputs, copy=True)
        model = reg().fit(inputs, list(y))
        np.testing.assert_allclose(model.predict(inputs), expected, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(inputs), before)


@pytest.mark.covers(
    "check_estimators_dtypes",
    "check_regressors_train(readonly_memmap=True,X_dtype=float32)",
)
def test_image_dtypes_train_alike(bright, tmp_path):
    X, y = bright
    expected = reg().fit(X, y).predict(X)
    np.save(tmp_path / "X.npy", (X / 255).astype(np.float32))
    float32 = np.load(tmp_path / "X.npy", mmap_mode="r")
    for inputs in (X.astype(np.uint16) * 257, X / 255.0, float32):
        np.testing.assert_allclose(
            reg().fit(inputs, y).predict(inputs), expected, atol=1e-4
        )


@pytest.mark.covers(
    "check_positive_only_tag_during_fit",
    "check_dtype_object",
    "check_estimators_empty_data_messages",
    "check_estimators_nan_inf",
    "check_fit2d_1feature",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
)
def test_bad_inputs_raise(bright):
    X, y = bright
    model = reg()
    with pytest.raises(NotFittedError):
        model.predict(X)
    with pytest.raises(ValueError, match="tabular data"):
        model.fit(np.zeros((4, 1)), [0.0, 1.0, 0.0, 1.0])
    with pytest.raises(TypeError, match="uint8"):
        model.fit(X.astype(object), y)
    with pytest.raises(ValueError, match="image 1"):
        model.fit(np.r_[X[:1] / 255, -(X[1:2] / 255)], y[:2])  # negative
    infinite = X[:2] / 255.0
    infinite[1, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="Image 1 contains NaN or infinity"):
        model.fit(infinite, y[:2])
    with pytest.raises(ValueError, match="NaN"):
        model.fit(X[:2], [0.0, np.nan])
    with pytest.raises(ValueError, match="0 sample"):
        model.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="requires y"):
        model.fit(X, None)
    with pytest.raises(ValueError, match="64 images but y has 63 targets"):
        model.fit(X, y[:-1])
    fitted = reg(max_epochs=1).fit(X, y)
    assert not hasattr(fitted, "n_features_in_")
    with pytest.raises(ValueError, match="tabular data|batch of images"):
        fitted.predict(X[0, 0, :, 0])  # 1-D
    with pytest.raises(ValueError, match="tabular data"):
        fitted.predict(np.zeros((4, 3)))


@pytest.mark.covers("check_fit2d_1sample")
def test_a_single_image_fits(bright):
    """One image (a constant target: its scale is taken as 1) trains."""
    X, y = bright
    model = reg(max_epochs=5).fit(X[:1], y[:1])
    assert model.target_scale_ == [1.0] and model.target_mean_ == [y[0]]
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert np.isfinite(model.predict(X[:3])).all()


@pytest.mark.covers(
    "check_estimators_pickle", "check_estimators_pickle(readonly_memmap=True)"
)
def test_pickle_round_trip_in_a_fresh_process(bright, tmp_path):
    X, y = bright
    model = reg(hidden_layer_sizes=(8,), layer="block1").fit(X, y)
    expected = model.predict(X)
    out = transform_in_fresh_process(model, X, tmp_path, method="predict")
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(restored.predict(X), expected, rtol=1e-6)


def test_save_and_load_without_pickle(bright, tmp_path):
    pytest.importorskip("skops")
    X, y = bright
    model = reg(model="resnet18", weights=None, hidden_layer_sizes=(8,)).fit(X, y)
    sktransfer.save(model, tmp_path / "regressor")
    loaded = sktransfer.load(tmp_path / "regressor")
    assert isinstance(loaded, FineTunedRegressor)
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-5)


def test_a_fitted_regressor_is_an_extractor_model(bright):
    X, y = bright
    model = reg(trainable_layers="all").fit(X, y)
    extractor = PretrainedFeatureExtractor(model=model, cache=None, verbose=False)
    rows = extractor.fit_transform(X)
    with torch.inference_mode():
        x = model.preprocessing_(torch.from_numpy(X).permute(0, 3, 1, 2))
        expected = model.network_.backbone(x).numpy()
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    assert clone(extractor).model is model
    with pytest.raises(NotFittedError, match="FineTunedRegressor is not fitted"):
        PretrainedFeatureExtractor(model=reg(), verbose=False).fit(X)


def test_column_y_of_a_classifier_still_warns(bright):
    """(The classifier's 1-D rule is its own: a regressor keeps (n, 1).)"""
    X, y = bright
    with pytest.warns(DataConversionWarning):
        sktransfer.FineTunedClassifier(
            model=TinyCNN(), preprocessing=SMALL, max_epochs=1, verbose=False
        ).fit(X[:8], (y[:8] > 0.5).astype(int).reshape(-1, 1))


# -- sklearn's checks --------------------------------------------------------

_FIT = "test_fits_mean_brightness_far_better_than_the_mean"
_INPUTS = "test_memmap_readonly_fortran_and_list_inputs_fit_alike"
_DTYPES = "test_image_dtypes_train_alike"
_ORDER = "test_predictions_independent_of_order_and_subset"
_PARAMS = "test_fit_leaves_parameters_unchanged"
_BAD = "test_bad_inputs_raise"
_PICKLE = "test_pickle_round_trip_in_a_fresh_process"
_SEED = "test_same_random_state_same_predictions_and_int_targets"
_MULTI = "test_several_outputs_and_column_y"
#: Checks that feed 2-D tabular data (which an image regressor must refuse),
#: each with the test of this module that checks the same property on images.
EXPECTED_FAILED_CHECKS = {
    "check_fit_score_takes_y": _FIT,
    "check_estimators_fit_returns_self": _FIT,
    "check_regressors_train": _FIT,
    "check_regressors_no_decision_function": _FIT,
    "check_estimators_overwrite_params": _PARAMS,
    "check_dont_overwrite_parameters": _PARAMS,
    "check_readonly_memmap_input": _INPUTS,
    "check_f_contiguous_array_estimator": _INPUTS,
    "check_regressor_data_not_an_array": _INPUTS,
    "check_regressors_train(readonly_memmap=True)": _INPUTS,
    "check_regressors_train(readonly_memmap=True,X_dtype=float32)": _DTYPES,
    "check_estimators_dtypes": _DTYPES,
    "check_n_features_in_after_fitting": _BAD,
    "check_n_features_in": _BAD,
    "check_positive_only_tag_during_fit": _BAD,
    "check_dtype_object": _BAD,
    "check_estimators_empty_data_messages": _BAD,
    "check_estimators_nan_inf": _BAD,
    "check_fit2d_1feature": _BAD,
    "check_fit2d_predict1d": _BAD,
    "check_fit_check_is_fitted": _BAD,
    "check_fit2d_1sample": "test_a_single_image_fits",
    "check_pipeline_consistency": "test_a_pipeline_predicts_as_the_regressor_alone",
    "check_estimators_pickle": _PICKLE,
    "check_estimators_pickle(readonly_memmap=True)": _PICKLE,
    "check_supervised_y_2d": _MULTI,
    "check_regressor_multioutput": _MULTI,
    "check_regressors_int": _SEED,
    "check_methods_sample_order_invariance": _ORDER,
    "check_methods_subset_invariance": _ORDER,
    "check_dict_unchanged": "test_predict_leaves_state_unchanged",
    "check_fit_idempotent": _SEED,
}


@parametrize_with_checks(
    [reg(max_epochs=1)],
    expected_failed_checks=lambda estimator: {
        name: f"feeds 2-D tabular data, which is refused; see test_regressor.py::{test}"
        for name, test in EXPECTED_FAILED_CHECKS.items()
    },
)
def test_sklearn_estimator_checks(estimator, check):
    """Each applicable sklearn check passes; the others fail as listed."""
    check(estimator)


def test_every_expected_failure_is_backed_by_a_test():
    """Each listed check names a test of this module that declares it covers
    that check and exercises what the check does, on images."""
    assert_checks_backed(
        {
            check: f"test_regressor.py::{test}"
            for check, test in EXPECTED_FAILED_CHECKS.items()
        },
        estimator=("reg(",),
    )
