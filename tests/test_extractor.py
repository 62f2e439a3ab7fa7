"""PretrainedFeatureExtractor: the sklearn contract and its behaviour."""

import pickle
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

from sktransfer import Preprocessing, PretrainedFeatureExtractor

from .conftest import SMALL, transform_in_fresh_process


def make(model, **params):
    params.setdefault("preprocessing", SMALL)
    params.setdefault("verbose", False)
    params.setdefault("cache", None)  # these tests check the computation itself
    return PretrainedFeatureExtractor(model=model, **params)


def test_init_only_stores_parameters(tiny_cnn):
    """__init__ stores its arguments unchanged and loads nothing."""
    layers = ["block1"]
    extractor = PretrainedFeatureExtractor(
        model=tiny_cnn, weights=None, layer=layers, batch_size=3
    )
    params = extractor.get_params()
    assert params["model"] is tiny_cnn and params["layer"] is layers
    assert not [k for k in vars(extractor) if k.endswith("_")]
    with pytest.raises(TypeError):
        PretrainedFeatureExtractor("resnet18")  # keyword-only


def test_clone_builds_no_model(monkeypatch):
    """Cloning builds and loads no network (cheap even for a large
    architecture): any attempt would raise here."""
    import torchvision

    from sktransfer._sources.torchvision import TorchvisionSource

    def refuse(*args, **kwargs):
        raise AssertionError("clone built a model")

    monkeypatch.setattr(torchvision.models, "get_model", refuse)
    monkeypatch.setattr(TorchvisionSource, "load", refuse)
    extractor = PretrainedFeatureExtractor(model="vit_h_14", weights=None)
    copy = clone(extractor)
    assert copy.get_params() == extractor.get_params()
    assert not [k for k in vars(copy) if k.endswith("_")]


@pytest.mark.covers("check_estimators_fit_returns_self")
def test_fit_returns_self(tiny_cnn, images):
    """fit returns the estimator itself."""
    extractor = make(tiny_cnn)
    assert extractor.fit(images) is extractor


@pytest.mark.covers("check_fit_score_takes_y")
def test_fit_ignores_y(tiny_cnn, images):
    """y is accepted and has no effect."""
    a = make(tiny_cnn).fit(images).transform(images)
    b = make(tiny_cnn).fit(images, np.arange(len(images))).transform(images)
    assert_array_equal(a, b)


@pytest.mark.covers(
    "check_estimators_overwrite_params", "check_dont_overwrite_parameters"
)
def test_fit_leaves_parameters_unchanged(tiny_cnn, images):
    """fit neither rewrites parameters nor modifies the user's module."""
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    tiny_cnn.train()
    extractor = make(tiny_cnn, layer=["block1", None], batch_size=2)
    params = dict(extractor.get_params())
    extractor.fit(images).transform(images)
    assert extractor.get_params() == params
    assert tiny_cnn.training  # our copy is put in eval mode, not theirs
    for key, value in tiny_cnn.state_dict().items():
        assert torch.equal(value, before[key])


def test_fitted_attributes(tiny_cnn, images):
    """fit sets the documented attributes, all ending in '_'."""
    extractor = make(tiny_cnn, layer=["block1", None], pooling="avgmax").fit(images)
    assert extractor.layers_ == ["block1", None]
    assert extractor.n_features_per_layer_ == [32, 3]  # own module: its output
    assert extractor.n_features_out_ == 35
    assert extractor.weights_ == "the module's own weights"
    assert extractor.device_ == torch.device("cpu")
    assert isinstance(extractor.preprocessing_, Preprocessing)
    assert not extractor.network_.training


@pytest.mark.covers("check_fit_check_is_fitted")
def test_transform_before_fit_raises(tiny_cnn, images):
    """transform on an unfitted extractor raises NotFittedError."""
    with pytest.raises(NotFittedError):
        make(tiny_cnn).transform(images)


def test_transform_output_contract(tiny_cnn, images):
    """Output is float32, C-contiguous, one finite row per image."""
    out = make(tiny_cnn).fit(images).transform(images)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out.shape == (len(images), 3)
    assert np.isfinite(out).all()


@pytest.mark.covers("check_fit2d_1sample")
def test_single_image(tiny_cnn, images):
    """A batch of one image works and equals its row in a larger batch."""
    extractor = make(tiny_cnn).fit(images[:1])
    assert_allclose(
        extractor.transform(images[:1]), extractor.transform(images)[:1], atol=1e-6
    )


@pytest.mark.covers("check_transformer_general")
def test_fit_transform_equals_fit_then_transform(tiny_cnn, images):
    """fit_transform gives what fit followed by transform gives."""
    a = make(tiny_cnn).fit_transform(images)
    b = make(tiny_cnn).fit(images).transform(images)
    assert_array_equal(a, b)


@pytest.mark.covers("check_pipeline_consistency", "check_fit_idempotent")
def test_transform_is_deterministic(tiny_cnn, images):
    """Transforming twice, or after refitting, gives identical rows on CPU."""
    extractor = make("resnet18", weights=None, layer=["layer1", None]).fit(images)
    first = extractor.transform(images)
    assert_array_equal(extractor.transform(images), first)
    own = make(tiny_cnn).fit(images)
    assert_array_equal(own.fit(images).transform(images), own.transform(images))


@pytest.mark.covers("check_dict_unchanged")
def test_transform_leaves_state_unchanged(tiny_cnn, images):
    """transform changes neither the estimator's dict nor the weights."""
    extractor = make(tiny_cnn).fit(images)
    before = dict(vars(extractor))
    weights = {k: v.clone() for k, v in extractor.network_.state_dict().items()}
    extractor.transform(images)
    assert vars(extractor) == before
    for key, value in extractor.network_.state_dict().items():
        assert torch.equal(value, weights[key])


@pytest.mark.parametrize("batch_size", [1, 2, 5])
@pytest.mark.covers(
    "check_methods_sample_order_invariance", "check_methods_subset_invariance"
)
def test_rows_independent_of_batch_and_order(tiny_cnn, images, batch_size):
    """An image's row depends neither on its batch nor on the row order."""
    reference = make(tiny_cnn, batch_size=64).fit(images).transform(images)
    extractor = make(tiny_cnn, batch_size=batch_size).fit(images)
    assert_allclose(extractor.transform(images), reference, rtol=1e-5, atol=1e-6)
    order = np.random.default_rng(0).permutation(len(images))
    assert_allclose(
        extractor.transform(images[order]), reference[order], rtol=1e-5, atol=1e-6
    )
    assert_allclose(extractor.transform(images[2:4]), reference[2:4], atol=1e-6)


def test_pooling_options(tiny_cnn, images):
    """Each pooling gives the documented width for a feature map."""
    widths = {"avg": 16, "max": 16, "avgmax": 32, "flatten": 16 * 16 * 16, None: 4096}
    for pooling, width in widths.items():
        out = make(tiny_cnn, layer="block1", pooling=pooling).fit_transform(images)
        assert out.shape == (len(images), width), pooling
    with pytest.raises(ValueError, match="class token"):
        make(tiny_cnn, layer="block1", pooling="cls").fit(images)


def test_multiple_layers_concatenate_in_order(tiny_cnn, images):
    """A list of layers concatenates each layer's own features, in order."""
    both = make(tiny_cnn, layer=["block2", "block1"]).fit_transform(images)
    block2 = make(tiny_cnn, layer="block2").fit_transform(images)
    block1 = make(tiny_cnn, layer="block1").fit_transform(images)
    assert_allclose(both, np.hstack([block2, block1]), rtol=1e-5, atol=1e-6)


@pytest.mark.covers("check_n_features_in_after_fitting", "check_n_features_in")
def test_feature_names_out(tiny_cnn, images):
    """Feature names say the layer; the count equals n_features_out_."""
    extractor = make(tiny_cnn, layer=["block1", None]).fit(images)
    names = extractor.get_feature_names_out()
    assert len(names) == extractor.n_features_out_ == 19
    assert names[0] == "block1_0" and names[16] == "embedding_0"
    assert names[-1] == "embedding_2"


def test_set_output_pandas(tiny_cnn, images):
    """set_output(transform='pandas') returns a DataFrame with feature names."""
    pd = pytest.importorskip("pandas")
    extractor = make(tiny_cnn).set_output(transform="pandas")
    frame = extractor.fit_transform(images)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(extractor.get_feature_names_out())
    assert frame.shape == (len(images), 3)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"batch_size": 0}, "'batch_size' parameter"),
        ({"pooling": "mean"}, "'pooling' parameter"),
        ({"model": 3}, "'model' parameter"),
        ({"layer": []}, "empty list"),
        ({"layer": ["block1", "block1"]}, "twice"),
        ({"layer": "blok1"}, "Did you mean 'block1'"),
        ({"layer": [3]}, "'layer' parameter must be None"),
        ({"device": "tpu"}, "'device' parameter"),
        ({"preprocessing": {"crop": 3}}, "unknown keys"),
        ({"preprocessing": {"crop_size": 0}}, "'crop_size' must be a positive"),
        ({"preprocessing": {"interpolation": "lanczos"}}, "interpolation"),
        ({"weights": 3}, "'weights' parameter"),
    ],
)
def test_invalid_parameters_raise_in_fit(tiny_cnn, images, params, match):
    """Bad parameters are reported by fit, naming the parameter."""
    extractor = make(tiny_cnn).set_params(**params)  # set_params never fails
    with pytest.raises((ValueError, TypeError), match=match):
        extractor.fit(images)


def test_pipeline_grid_search_over_layers(digits_images):
    """GridSearchCV over cut points and C runs in a pipeline and refits."""
    X, y = digits_images
    X, y = X[:120], y[:120]
    pipe = make_pipeline(
        make("resnet18", weights=None), LogisticRegression(max_iter=500)
    )
    search = GridSearchCV(
        pipe,
        {
            "pretrainedfeatureextractor__layer": ["layer1", "layer2", None],
            "logisticregression__C": [0.1, 1.0],
        },
        cv=3,
    )
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 6
    assert search.predict(X[:5]).shape == (5,)
    assert cross_val_score(pipe, X, y, cv=2).shape == (2,)


@pytest.mark.covers(
    "check_estimators_pickle", "check_estimators_pickle(readonly_memmap=True)"
)
def test_pickle_round_trip_in_fresh_process(tiny_cnn, images, tmp_path):
    """A pickled fitted extractor gives identical rows in a fresh process."""
    for extractor in (
        make(tiny_cnn, layer=["block1", None]),
        make("resnet18", weights=None, layer="layer2"),  # random: tensors kept
    ):
        extractor.fit(images)
        expected = extractor.transform(images)
        assert_array_equal(
            transform_in_fresh_process(extractor, images, tmp_path), expected
        )


def test_pickle_holds_cpu_tensors_and_no_network(tiny_cnn, images):
    """The pickled state has no built network; tensors are on the CPU."""
    extractor = make(tiny_cnn).fit(images)
    state = extractor.__getstate__()
    assert "network_" not in state
    assert all(t.device.type == "cpu" for t in state["_network_state"].values())
    restored = pickle.loads(pickle.dumps(extractor))
    assert "network_" not in vars(restored)
    assert_array_equal(restored.transform(images), extractor.transform(images))


def test_cuda_fitted_extractor_loads_on_cpu_with_warning(tiny_cnn, images):
    """A state recorded on CUDA unpickles on a CPU-only machine, warning."""
    extractor = make(tiny_cnn).fit(images)
    state = extractor.__getstate__()
    state["device_"] = "cuda:0"
    restored = PretrainedFeatureExtractor.__new__(PretrainedFeatureExtractor)
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: nothing to fall back from")
    with pytest.warns(UserWarning, match="fitted on CUDA"):
        restored.__setstate__(state)
    assert restored.device_ == torch.device("cpu")
    assert_array_equal(restored.transform(images), extractor.transform(images))


def test_refit_after_unpickling_uses_new_weights(tiny_cnn, images):
    """Refitting an unpickled extractor discards the pickled weights."""
    restored = pickle.loads(pickle.dumps(make(tiny_cnn).fit(images)))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten())
    restored.set_params(model=other, preprocessing={"resize_size": 4, "crop_size": 4})
    restored.fit(images)
    assert restored.transform(images).shape == (len(images), 64)
    again = pickle.loads(pickle.dumps(restored))
    assert_array_equal(again.transform(images), restored.transform(images))


def test_custom_module_weights_none_reinitialises(tiny_cnn, images):
    """weights=None re-initialises a module's parameters (a copy of them)."""
    own = make(tiny_cnn).fit_transform(images)
    fresh = make(tiny_cnn, weights=None).fit(images)
    assert not np.allclose(fresh.transform(images), own)
    assert fresh.weights_ is None


def test_progress_bar_can_be_turned_off(tiny_cnn, images, capsys, monkeypatch):
    """verbose=True draws a progress bar on stderr; verbose=False is silent."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as at a terminal
    make(tiny_cnn, verbose=False).fit(images).transform(images)
    assert capsys.readouterr().err == ""
    make(tiny_cnn, verbose=True, batch_size=2).fit(images).transform(images)
    assert "img" in capsys.readouterr().err


def test_random_state_makes_random_weights_reproducible(images):
    """An int random_state gives the same random network, without global seeding."""
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = make("resnet18", weights=None, random_state=0).fit_transform(images)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = make("resnet18", weights=None, random_state=0).fit_transform(images)
    c = make("resnet18", weights=None, random_state=1).fit_transform(images)
    assert_array_equal(a, b)
    assert not np.allclose(a, c)


class _Untraceable(torch.nn.Module):
    """A module torch.fx cannot trace (control flow on tensor values)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:  # data-dependent branch
            x = x * 2
        return x.mean((2, 3))


def test_untraceable_module_works_with_layer_none(images):
    """layer=None never traces; naming a layer gives a clear error instead."""
    out = make(_Untraceable()).fit_transform(images)
    assert out.shape == (len(images), 4)
    with pytest.raises(ValueError, match="could not trace it"):
        make(_Untraceable(), layer="conv").fit(images)
