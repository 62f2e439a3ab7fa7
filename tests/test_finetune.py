"""FineTunedClassifier: what trains, what stays frozen, and reuse."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torchvision
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer._families import family_of
from sktransfer._finetune import freeze, trainable_groups

from .conftest import SMALL, TinyCNN, transform_in_fresh_process

SMALL_GRAY = {**SMALL, "mean": (0.5,), "std": (0.5,)}


@pytest.fixture(scope="module")
def toy():
    """Two classes of 32x32 images: dark noise and bright noise."""
    rng = np.random.default_rng(0)
    dark = rng.normal(60, 30, (20, 32, 32, 3))
    bright = rng.normal(190, 30, (20, 32, 32, 3))
    X = np.clip(np.concatenate([dark, bright]), 0, 255).astype(np.uint8)
    y = np.array(["dark"] * 20 + ["bright"] * 20)
    order = rng.permutation(len(y))
    return X[order], y[order]


def tiny(**params):
    torch.manual_seed(0)
    defaults = dict(
        model=TinyCNN(),
        weights="DEFAULT",
        preprocessing=SMALL,
        precision="float32",
        max_epochs=3,
        batch_size=8,
        learning_rate=1e-2,
        random_state=0,
        verbose=False,
    )
    return FineTunedClassifier(**{**defaults, **params})


def resnet(**params):
    defaults = dict(
        model="resnet18",
        weights=None,
        preprocessing=SMALL,
        precision="float32",
        max_epochs=1,
        batch_size=8,
        random_state=0,
        verbose=False,
    )
    return FineTunedClassifier(**{**defaults, **params})


# -- what trains ---------------------------------------------------------


def test_fits_predicts_and_scores_any_label_type(toy):
    X, y = toy
    clf = tiny(trainable_layers="all").fit(X, y)
    assert clf.classes_.tolist() == ["bright", "dark"]
    assert clf.predict(X).dtype == y.dtype
    proba = clf.predict_proba(X)
    assert proba.shape == (40, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(1), 1)
    assert clf.score(X, y) > 0.9
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    ints = tiny().fit(X, (y == "dark").astype(int) + 5)
    assert set(ints.predict(X)) <= {5, 6}


def test_frozen_parameters_are_bit_identical_and_trainable_ones_change(toy):
    X, y = toy
    # Same random_state, so the same initial weights (weights=None); with
    # trainable_layers=0 the whole backbone keeps them.
    initial = resnet(trainable_layers=0).fit(X, y).network_.backbone.state_dict()
    clf = resnet(trainable_layers=1).fit(X, y)
    trained = clf.network_.backbone.state_dict()
    assert trained.keys() == initial.keys()
    for name, tensor in trained.items():
        if name.startswith("layer4.") and "num_batches" not in name:
            assert not torch.equal(tensor, initial[name]), name
        elif not name.startswith("layer4."):
            assert torch.equal(tensor, initial[name]), name  # incl. BN statistics
    assert clf.n_trainable_layers_ == 1


def test_freeze_batchnorm_keeps_every_statistic(toy):
    X, y = toy
    kept = resnet(trainable_layers=1, freeze_batchnorm=True).fit(X, y)
    updated = resnet(trainable_layers=1).fit(X, y)
    kept, updated = kept.network_.backbone, updated.network_.backbone
    for name in ("layer4.1.bn2.running_mean", "layer1.0.bn1.running_mean"):
        # weights=None: batch norms start at mean 0
        assert not kept.get_buffer(name).any(), name
    assert updated.get_buffer("layer4.1.bn2.running_mean").any()
    assert not updated.get_buffer("layer1.0.bn1.running_mean").any()  # frozen stage
    assert not torch.equal(  # the scale and shift still train
        kept.get_parameter("layer4.1.bn2.weight"), torch.ones(512)
    )


STAGES = {
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "mobilenet_v3_small": [f"features.{i}" for i in range(13)],
    "efficientnet_b0": [f"features.{i}" for i in range(9)],
    "convnext_tiny": [f"features.{i}" for i in range(8)],
    "regnet_y_400mf": [f"trunk_output.block{i}" for i in range(1, 5)],
    "vit_b_16": [f"encoder.layers.encoder_layer_{i}" for i in range(12)],
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_trainable_layers_counts_per_family(name):
    """N trains exactly the parameters of the family's last N stages (plus
    the head); "all" trains everything."""
    module = torchvision.models.get_model(name, weights=None)
    family = family_of(name)
    groups = trainable_groups(module, family)
    assert [g[0] for g in groups] == STAGES[name]
    if name == "vit_b_16":
        assert groups[-1] == ["encoder.layers.encoder_layer_11", "encoder.ln"]

    def trainable(n):
        freeze(module, family, n)
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    counts = [trainable(n) for n in range(len(groups) + 1)]
    assert counts[0] == 0
    for n in range(1, len(groups) + 1):
        expected = sum(
            p.numel() for m in groups[-n] for p in module.get_submodule(m).parameters()
        )
        assert counts[n] - counts[n - 1] == expected
    assert trainable("all") == sum(p.numel() for p in module.parameters())
    with pytest.raises(ValueError, match=f"has {len(groups)} stages"):
        freeze(module, family, len(groups) + 1)


def test_head_and_backbone_learning_rates(toy):
    X, y = toy
    clf = resnet(trainable_layers=2, learning_rate=0.01, backbone_lr_scale=0.1)
    clf.fit(X, y)
    n_head = 512 * 2 + 2
    n_backbone = sum(
        p.numel()
        for name in ("layer3", "layer4")
        for p in clf.network_.backbone.get_submodule(name).parameters()
    )
    assert clf.n_trainable_params_ == n_head + n_backbone
    initial = resnet(trainable_layers=0).fit(X, y).network_.backbone
    still = resnet(trainable_layers=2, backbone_lr_scale=0.0).fit(X, y).network_
    name = "layer3.0.conv1.weight"
    assert torch.equal(still.backbone.get_parameter(name), initial.get_parameter(name))
    moved = clf.network_.backbone.get_parameter(name)
    assert not torch.equal(moved, initial.get_parameter(name))


# -- reproducibility, search, options ------------------------------------


def test_same_random_state_same_predictions(toy):
    X, y = toy
    first, second, other = (
        tiny(augment=True, random_state=seed) for seed in (0, 0, 1)
    )  # (building TinyCNN seeds torch in this test's helper)
    state = torch.random.get_rng_state()
    a = first.fit(X, y).predict_proba(X)
    b = second.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = other.fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


def test_grid_search_over_trainable_layers_and_learning_rate(toy):
    X, y = toy
    search = GridSearchCV(
        tiny(max_epochs=1),
        {"trainable_layers": [0, 1, "all"], "learning_rate": [1e-3, 1e-2]},
        cv=2,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 6
    assert search.best_estimator_.n_trainable_layers_ in (0, 1, 3)


def test_early_stopping_keeps_the_best_epoch(toy):
    X, y = toy
    clf = tiny(
        early_stopping=True,
        validation_fraction=0.25,
        n_iter_no_change=2,
        max_epochs=30,
        learning_rate=1e-2,
    ).fit(X, y)
    assert clf.n_iter_ < 30
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert tiny().fit(X, y).validation_scores_ is None


def test_class_weight_changes_the_fit(toy):
    X, y = toy
    keep = np.r_[np.flatnonzero(y == "dark")[:3], np.flatnonzero(y == "bright")]
    plain = tiny(max_epochs=1).fit(X[keep], y[keep]).predict_proba(X)
    balanced = tiny(max_epochs=1, class_weight="balanced").fit(X[keep], y[keep])
    assert not np.allclose(plain, balanced.predict_proba(X))


def test_bad_inputs_raise(toy):
    X, y = toy
    clf = tiny()
    with pytest.raises(ValueError, match="tabular data"):
        clf.fit(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="0 images"):
        clf.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="requires y"):
        clf.fit(X, None)
    with pytest.raises(ValueError, match="1 class"):
        clf.fit(X, ["a"] * len(X))
    with pytest.raises(ValueError, match="40 images but y has 39"):
        clf.fit(X, y[:-1])
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(np.full((2, 8, 8), np.nan, np.float32), [0, 1])
    with pytest.raises(ValueError, match="trainable_layers=9"):
        tiny(trainable_layers=9).fit(X, y)
    with pytest.raises(NotFittedError):
        clf.predict(X)


def test_trains_from_paths(toy, tmp_path):
    from PIL import Image

    X, y = toy
    paths = []
    for i, image in enumerate(X):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    from_paths = tiny(num_workers=2).fit(paths, y).predict_proba(paths)
    from_arrays = tiny().fit(list(X), y).predict_proba(list(X))
    np.testing.assert_allclose(from_paths, from_arrays, rtol=1e-5, atol=1e-6)


# -- persistence ---------------------------------------------------------


def test_pickle_keeps_trained_weights_in_a_fresh_process(toy, tmp_path):
    X, y = toy
    clf = resnet(trainable_layers="all").fit(X, y)
    expected = clf.predict_proba(X)
    out = transform_in_fresh_process(clf, X, tmp_path, method="predict_proba")
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    state = pickle.loads(pickle.dumps(clf)).__getstate__()
    tensors = state["_network_state"].values()
    assert all(t.device.type == "cpu" for t in tensors)


def test_a_cuda_pickle_loads_on_cpu_with_a_warning(toy, monkeypatch):
    X, y = toy
    clf = tiny(max_epochs=1).fit(X, y)
    state = clf.__getstate__()
    state["device_"] = "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored = FineTunedClassifier.__new__(FineTunedClassifier)
    with pytest.warns(UserWarning, match="fitted on CUDA"):
        restored.__setstate__(state)
    assert restored.device_.type == "cpu"
    np.testing.assert_array_equal(restored.predict(X), clf.predict(X))


# -- develop, then reuse -------------------------------------------------


def test_a_fitted_classifier_is_an_extractor_backbone(toy):
    X, y = toy
    clf = tiny(trainable_layers="all").fit(X, y)
    extractor = PretrainedFeatureExtractor(
        model=clf, layer=None, precision="float32", verbose=False, cache=None
    )
    rows = extractor.fit_transform(X)
    with torch.inference_mode():
        x = clf.preprocessing_(torch.from_numpy(X).permute(0, 3, 1, 2))
        expected = clf.network_.backbone(x).numpy()
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    assert extractor.preprocessing_ == clf.preprocessing_
    assert extractor.transform(X[:2]).shape == (2, 32)
    mid = clone(extractor).set_params(layer="block1").fit(X)
    assert mid.transform(X[:2]).shape == (2, 16)
    # Clones share the fitted classifier (sklearn would unfit it).
    assert clone(extractor).model is clf
    frozen = copy.deepcopy(clf.network_.state_dict())
    search = GridSearchCV(
        make_pipeline(extractor, LogisticRegression(max_iter=500)),
        {"pretrainedfeatureextractor__layer": ["block1", "block2", None]},
        cv=2,
    ).fit(X, y)
    assert search.best_score_ > 0.8
    for name, tensor in clf.network_.state_dict().items():
        assert torch.equal(tensor, frozen[name]), name  # never modified
    restored = pickle.loads(pickle.dumps(extractor))
    np.testing.assert_allclose(restored.transform(X[:3]), rows[:3], rtol=1e-6)


def test_an_unfitted_classifier_is_not_a_backbone(toy):
    X, _ = toy
    extractor = PretrainedFeatureExtractor(model=tiny(), verbose=False)
    with pytest.raises(NotFittedError, match="fit it on the source task"):
        extractor.fit(X)


def test_real_checkpoint_head_beats_chance_on_real_photos(shared_weights):
    """Patches of scikit-learn's two sample photos, told apart by a new head
    on the ImageNet MobileNetV2."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    X, y = [], []
    for label, photo in enumerate(photos):
        for _ in range(24):
            top = rng.integers(0, photo.shape[0] - 96)
            left = rng.integers(0, photo.shape[1] - 96)
            X.append(photo[top : top + 96, left : left + 96])
            y.append(label)
    X, y = np.stack(X), np.array(y)
    train = np.r_[0:12, 24:36]
    test = np.setdiff1d(np.arange(len(y)), train)
    clf = FineTunedClassifier(
        model="mobilenet_v2",
        weights=shared_weights,
        preprocessing={"resize_size": 96, "crop_size": 96},
        max_epochs=5,
        learning_rate=1e-2,
        random_state=0,
        verbose=False,
    ).fit(X[train], y[train])
    assert clf.score(X[test], y[test]) >= 0.9  # chance: 0.5


# -- sklearn's checks ----------------------------------------------------

_TABULAR = "feeds 2-D tabular data, which is rejected; replaced by {}"
_FIT = "test_fits_predicts_and_scores_any_label_type"
_GRID = "test_grid_search_over_trainable_layers_and_learning_rate"
_PATHS = "test_trains_from_paths"
_BAD = "test_bad_inputs_raise"
_SEED = "test_same_random_state_same_predictions"
_PICKLE = "test_pickle_keeps_trained_weights_in_a_fresh_process"
EXPECTED_FAILED_CHECKS = {
    "check_fit_score_takes_y": _FIT,
    "check_estimators_overwrite_params": _GRID,
    "check_dont_overwrite_parameters": _GRID,
    "check_estimators_fit_returns_self": _FIT,
    "check_readonly_memmap_input": _PATHS,
    "check_f_contiguous_array_estimator": _PATHS,
    "check_n_features_in_after_fitting": _FIT,
    "check_n_features_in": _FIT,
    "check_positive_only_tag_during_fit": _BAD,
    "check_estimators_dtypes": _PATHS,
    "check_dtype_object": _BAD,
    "check_estimators_empty_data_messages": _BAD,
    "check_estimators_nan_inf": _BAD,
    "check_pipeline_consistency": _SEED,
    "check_estimators_pickle": _PICKLE,
    "check_estimators_pickle(readonly_memmap=True)": _PICKLE,
    "check_classifier_data_not_an_array": _PATHS,
    "check_classifiers_classes": _FIT,
    "check_classifiers_train": _FIT,
    "check_classifiers_train(readonly_memmap=True)": _PATHS,
    "check_classifiers_train(readonly_memmap=True,X_dtype=float32)": _PATHS,
    "check_supervised_y_2d": _FIT,
    "check_class_weight_classifiers": "test_class_weight_changes_the_fit",
    "check_methods_sample_order_invariance": _PATHS,
    "check_methods_subset_invariance": _PATHS,
    "check_fit2d_1feature": _BAD,
    "check_fit2d_predict1d": _BAD,
    "check_dict_unchanged": _SEED,
    "check_fit_idempotent": _SEED,
    "check_fit_check_is_fitted": _BAD,
}


@parametrize_with_checks(
    [resnet()],
    expected_failed_checks=lambda estimator: {
        name: _TABULAR.format(f"test_finetune.py::{test}")
        for name, test in EXPECTED_FAILED_CHECKS.items()
    },
)
def test_sklearn_estimator_checks(estimator, check):
    """Each applicable sklearn check passes; the others fail as listed."""
    check(estimator)


def test_every_expected_failure_names_an_existing_test():
    from pathlib import Path

    source = Path(__file__).read_text()
    for name in EXPECTED_FAILED_CHECKS.values():
        assert f"def {name}(" in source, name
