"""Weights: names, checkpoints, the offline error, the real ImageNet file."""

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from numpy.testing import assert_allclose, assert_array_equal
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights

from sktransfer import PretrainedFeatureExtractor
from sktransfer._sources import resolve_weights
from sktransfer.exceptions import WeightsUnavailableError

from .conftest import transform_in_fresh_process


def test_weights_names_resolve_in_all_spellings():
    """DEFAULT, short names, full names and enum members all resolve."""
    assert resolve_weights("resnet18", "DEFAULT") is ResNet18_Weights.DEFAULT
    assert (
        resolve_weights("resnet18", "IMAGENET1K_V1") is ResNet18_Weights.IMAGENET1K_V1
    )
    full = "ResNet18_Weights.IMAGENET1K_V1"
    assert resolve_weights("resnet18", full) is ResNet18_Weights.IMAGENET1K_V1
    assert (
        resolve_weights("resnet18", ResNet18_Weights.DEFAULT)
        is ResNet18_Weights.DEFAULT
    )
    assert resolve_weights("resnet18", None) is None
    assert str(resolve_weights("resnet18", "ckpt/model.pth")) == "ckpt/model.pth"


def test_unknown_weights_and_models_suggest_names():
    """Typos get the nearest valid names and where to look."""
    with pytest.raises(ValueError, match="Did you mean 'IMAGENET1K_V1'"):
        resolve_weights("resnet18", "IMAGENET1K_V")
    with pytest.raises(ValueError, match="belongs to another model"):
        resolve_weights("resnet18", MobileNet_V2_Weights.DEFAULT)
    X = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"Did you mean 'resnet50'.*list_models"):
        PretrainedFeatureExtractor(model="resnet5O").fit(X)


def test_offline_grid_search_stops_at_once(offline):
    """Offline without the weights, a grid search stops after its first
    failed fit, with the clear error and one download attempt; a clone does
    no network I/O."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    from sktransfer import FineTunedClassifier

    X = np.zeros((10, 32, 32, 3), np.uint8)
    y = [0, 1] * 5
    pipe = make_pipeline(
        PretrainedFeatureExtractor(model="mobilenet_v2", verbose=False),
        LogisticRegression(),
    )
    grid = {"pretrainedfeatureextractor__layer": ["features.6", None]}
    from sklearn.base import clone

    clone(pipe)
    assert not offline  # cloning is cheap: it downloads nothing
    with pytest.raises(WeightsUnavailableError, match="mobilenet_v2"):
        GridSearchCV(pipe, grid, cv=2).fit(X, y)
    assert len(offline) == 1
    with pytest.raises(WeightsUnavailableError, match="resnet18"):
        GridSearchCV(
            FineTunedClassifier(model="resnet18"), {"max_epochs": [1, 2]}, cv=2
        ).fit(X, y)
    assert len(offline) == 2


def test_offline_without_cache_raises_clear_error(tmp_path, monkeypatch):
    """No network and no cached file: an error naming the cache path and the fix."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    X = np.zeros((1, 32, 32, 3), np.uint8)
    extractor = PretrainedFeatureExtractor(model="resnet18", verbose=False)
    with pytest.raises(WeightsUnavailableError) as info:
        extractor.fit(X)
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights='/path/to/checkpoint.pth'" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert isinstance(info.value, OSError)


def test_checkpoint_file_round_trip(tmp_path):
    """A saved state_dict loads (weights_only) and reproduces the embedding."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)  # a fine-tuned head size
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    X = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    prep = {"resize_size": 64, "crop_size": 64}
    from_file = PretrainedFeatureExtractor(
        model="resnet18",
        weights=str(path),
        preprocessing=prep,
        precision="float32",
        verbose=False,
    ).fit(X)
    assert from_file.weights_ == str(path)
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = model.eval()(
            from_file.preprocessing_(torch.from_numpy(X).permute(0, 3, 1, 2))
        )
    # batch composition moves fp32 CPU results by ~1e-6 (row 0 comes from fit)
    assert_allclose(from_file.transform(X), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_checkpoint_problems_are_reported(tmp_path):
    """Missing files, non-state-dicts and mismatched keys get clear errors."""
    X = np.zeros((1, 32, 32, 3), np.uint8)

    def fit(weights):
        PretrainedFeatureExtractor(model="resnet18", weights=weights).fit(X)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(str(tmp_path / "missing.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state_dict"):
        fit(tmp_path / "list.pth")
    state = torchvision.models.resnet34().state_dict()
    torch.save(state, tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match=r"96 unexpected keys \(layer1.2"):
        fit(tmp_path / "resnet34.pth")
    torch.save(
        {"state_dict": torchvision.models.resnet18().state_dict()},
        tmp_path / "wrapped.pth",
    )
    fit(tmp_path / "wrapped.pth")  # a {"state_dict": ...} wrapper is unwrapped


def test_checkpoint_never_unpickles_arbitrary_objects(tmp_path):
    """Checkpoints load with weights_only=True: pickled code is refused."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"fc.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        PretrainedFeatureExtractor(model="resnet18", weights=tmp_path / "evil.pth").fit(
            np.zeros((1, 32, 32, 3), np.uint8)
        )


def _china():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[0][None]  # (1, 427, 640, 3) uint8


def test_real_checkpoint_file_and_hub_cache_agree(
    shared_weights, hub_with_real_weights
):
    """The real file as a path and through a TORCH_HOME cache give equal rows."""
    X = _china()
    via_cache = PretrainedFeatureExtractor(
        model="mobilenet_v2", weights="IMAGENET1K_V1", verbose=False
    ).fit(X)
    via_file = PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights=str(shared_weights),
        preprocessing="IMAGENET1K_V1",
        verbose=False,
    ).fit(X)
    assert via_cache.weights_ == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert via_cache.preprocessing_ == via_file.preprocessing_
    assert_array_equal(via_cache.transform(X), via_file.transform(X))


def test_real_weights_classify_the_palace(shared_weights):
    """The embedding of china.jpg, through the checkpoint's head, says 'palace'."""
    extractor = PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights=str(shared_weights),
        preprocessing="IMAGENET1K_V1",
        verbose=False,
    ).fit(_china())
    state = torch.load(shared_weights, weights_only=True)
    logits = (
        torch.from_numpy(extractor.transform(_china())) @ state["classifier.1.weight"].T
        + state["classifier.1.bias"]
    )
    probs = logits.softmax(1)[0]
    classes = (shared_weights.parent / "imagenet_classes.txt").read_text().splitlines()
    assert classes[int(probs.argmax())] == "palace"
    assert probs.max() > 0.5


def test_real_weights_linear_probe_far_above_chance(shared_weights, digits_images):
    """Logistic regression on real ImageNet features of digits: far above chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = digits_images
    X, y = X[:400], y[:400]
    extractor = PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights=str(shared_weights),
        layer="features.13",
        preprocessing={"resize_size": 64, "crop_size": 64},
        verbose=False,
    )
    features = extractor.fit_transform(X)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(probe, features, y, cv=4)
    assert scores.mean() > 0.85  # chance is 0.1


def test_pickle_of_published_weights_is_a_small_reference(
    hub_with_real_weights, tmp_path
):
    """Published weights pickle as their name (KB) and reload identically."""
    import os
    import pickle

    X = _china()
    extractor = PretrainedFeatureExtractor(
        model="mobilenet_v2", weights="IMAGENET1K_V1", verbose=False
    ).fit(X)
    expected = extractor.transform(X)
    assert len(pickle.dumps(extractor)) < 20_000  # the checkpoint itself is 14 MB
    env = dict(os.environ, TORCH_HOME=str(hub_with_real_weights))
    assert_array_equal(
        transform_in_fresh_process(extractor, X, tmp_path, env), expected
    )


def test_the_family_registry_refuses_a_second_family_of_the_same_name():
    """Registering a family name twice is an error, not a silent overwrite."""
    from sktransfer._families import _FAMILIES, register_family

    before = dict(_FAMILIES)
    with pytest.raises(ValueError, match="'resnet' is registered already"):
        register_family("resnet", "myresnet*")(lambda module: [])
    assert before == _FAMILIES


def test_did_you_mean_names_the_closest_choices():
    """One helper ends every 'unknown name' message."""
    from sktransfer._common import did_you_mean

    assert did_you_mean("resnet5O", ["resnet50", "resnet18", "vgg11"], n=1) == (
        " Did you mean 'resnet50'?"
    )
    assert did_you_mean("zzz", ["resnet50"]) == ""
