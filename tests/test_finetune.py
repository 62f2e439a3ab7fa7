"""FineTunedClassifier: what trains, what stays frozen, and reuse."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer._families import family_of
from sktransfer._finetune import freeze, trainable_groups

from .conftest import SMALL, TinyCNN, assert_checks_backed, transform_in_fresh_process

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


@pytest.mark.covers(
    "check_fit_score_takes_y",
    "check_estimators_fit_returns_self",
    "check_classifiers_classes",
    "check_classifiers_train",
)
def test_fits_predicts_and_scores_any_label_type(toy):
    X, y = toy
    clf = tiny(trainable_layers="all")
    assert clf.fit(X, y) is clf
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


@pytest.mark.covers("check_fit_idempotent")
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
    np.testing.assert_array_equal(first.fit(X, y).predict_proba(X), a)  # refit


def test_fitting_leaves_the_global_random_state_alone(toy, tmp_path):
    """Fitting (seeded or not), predicting and rebuilding an unpickled
    network draw nothing from numpy's or torch's global generators, and a
    seeded fit gives the same model whatever ran before it."""
    X, y = toy
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()  # noqa: NPY002
    for params in ({"random_state": None}, {"augment": True}, {"weights": None}):
        clf = resnet(trainable_layers=1, **params).fit(X, y)
        restored = pickle.loads(pickle.dumps(clf))
        restored.predict(X)  # rebuilds the network from its tensors
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    first = resnet(trainable_layers=1, augment=True).fit(X, y).predict_proba(X)
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    second = resnet(trainable_layers=1, augment=True).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)


@pytest.mark.covers("check_pipeline_consistency")
def test_a_pipeline_predicts_as_the_classifier_alone(toy):
    X, y = toy
    alone = tiny().fit(X, y)
    pipeline = make_pipeline(tiny()).fit(X, y)
    np.testing.assert_array_equal(pipeline.predict_proba(X), alone.predict_proba(X))
    assert pipeline.score(X, y) == alone.score(X, y)


@pytest.mark.covers(
    "check_estimators_overwrite_params", "check_dont_overwrite_parameters"
)
def test_fit_leaves_parameters_unchanged_and_adds_only_fitted_attributes(toy):
    X, y = toy
    module = TinyCNN()
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    clf = tiny(model=module, preprocessing=dict(SMALL), class_weight={"dark": 2})
    params = copy.deepcopy(clf.get_params())
    public_before = {k for k in vars(clf) if not k.startswith("_")}
    clf.fit(X, y)
    after = clf.get_params()
    assert after.keys() == params.keys()
    for name, value in after.items():
        if name != "model":
            assert value == params[name], name
    assert after["model"] is module
    assert all(torch.equal(v, weights[k]) for k, v in module.state_dict().items())
    added = {k for k in vars(clf) if not k.startswith("_")} - public_before
    assert added and all(name.endswith("_") for name in added), added


@pytest.mark.covers("check_dict_unchanged")
def test_predict_leaves_state_unchanged(toy):
    """predict, predict_proba and score change neither the classifier's
    __dict__ (the same objects) nor its weights."""
    X, y = toy
    clf = tiny(trainable_layers=1).fit(X, y)
    before = dict(vars(clf))
    weights = {k: v.clone() for k, v in clf.network_.state_dict().items()}
    clf.predict(X)
    clf.predict_proba(X[:3])
    clf.score(X, y)
    assert vars(clf).keys() == before.keys()
    assert all(vars(clf)[k] is before[k] for k in before)
    for key, value in clf.network_.state_dict().items():
        assert torch.equal(value, weights[key]), key


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


@pytest.mark.covers("check_class_weight_classifiers")
def test_class_weight_changes_the_fit(toy):
    X, y = toy
    keep = np.r_[np.flatnonzero(y == "dark")[:3], np.flatnonzero(y == "bright")]
    plain = tiny(max_epochs=1).fit(X[keep], y[keep]).predict_proba(X)
    balanced = tiny(max_epochs=1, class_weight="balanced").fit(X[keep], y[keep])
    assert not np.allclose(plain, balanced.predict_proba(X))


@pytest.mark.covers(
    "check_positive_only_tag_during_fit",
    "check_dtype_object",
    "check_estimators_empty_data_messages",
    "check_estimators_nan_inf",
    "check_fit2d_1feature",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
)
def test_bad_inputs_raise(toy):
    X, y = toy
    clf = tiny()
    with pytest.raises(NotFittedError):
        clf.predict(X)
    with pytest.raises(ValueError, match="tabular data"):
        clf.fit(np.zeros((4, 1)), [0, 1, 0, 1])  # one feature
    with pytest.raises(TypeError, match="uint8"):
        clf.fit(X.astype(object), y)
    with pytest.raises(TypeError, match="uint8"):
        clf.fit(X.astype(np.complex128), y)
    with pytest.raises(ValueError, match="It looks like 0..255"):
        clf.fit(X.astype(np.float32), y)  # floats must be in [0, 1]
    two = [int(np.argmax(y == "dark")), int(np.argmax(y == "bright"))]
    with pytest.raises(ValueError, match="image 1"):
        clf.fit(np.r_[X[two[:1]] / 255, -(X[two[1:]] / 255)], y[two])  # negative
    infinite = X[two] / 255.0
    infinite[1, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="Image 1 contains NaN or infinity"):
        clf.fit(infinite, y[two])
    fitted = tiny(max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="tabular data|batch of images"):
        fitted.predict(X[0, 0, :, 0])  # 1-D
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


@pytest.mark.covers(
    "check_readonly_memmap_input",
    "check_f_contiguous_array_estimator",
    "check_classifier_data_not_an_array",
    "check_classifiers_train(readonly_memmap=True)",
)
def test_memmap_readonly_fortran_and_list_inputs_fit_and_predict_alike(toy, tmp_path):
    """Read-only, memory-mapped, Fortran-ordered, strided arrays and lists of
    arrays train the same model and get the same predictions, untouched."""
    X, y = toy
    expected = tiny().fit(X, y).predict_proba(X)
    np.save(tmp_path / "X.npy", X)
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    readonly = X.copy()
    readonly.setflags(write=False)
    wide = np.zeros((2 * len(X), *X.shape[1:]), np.uint8)
    wide[::2] = X
    for inputs in (memmap, readonly, np.asfortranarray(X), wide[::2], list(X)):
        before = np.array(inputs, copy=True)
        clf = tiny().fit(inputs, list(y))
        np.testing.assert_allclose(clf.predict_proba(inputs), expected, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(inputs), before)


@pytest.mark.covers(
    "check_estimators_dtypes",
    "check_classifiers_train(readonly_memmap=True,X_dtype=float32)",
)
def test_image_dtypes_train_alike(toy, tmp_path):
    """uint8, uint16 and float images in [0, 1] (float32 memory-mapped too)
    of the same pictures train the same model."""
    X, y = toy
    expected = tiny().fit(X, y).predict_proba(X)
    np.save(tmp_path / "X.npy", (X / 255).astype(np.float32))
    float32 = np.load(tmp_path / "X.npy", mmap_mode="r")
    for inputs in (X.astype(np.uint16) * 257, X / 255.0, float32):
        clf = tiny().fit(inputs, y)
        np.testing.assert_allclose(clf.predict_proba(inputs), expected, atol=1e-4)


@pytest.mark.covers(
    "check_methods_sample_order_invariance", "check_methods_subset_invariance"
)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_predictions_independent_of_order_subset_and_batch(toy, batch_size):
    X, y = toy
    clf = tiny(trainable_layers=1).fit(X, y)
    expected = clf.predict_proba(X)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(clf.predict_proba(X[order]), expected[order], atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(X[5:9]), expected[5:9], atol=1e-6)
    clf.set_params(batch_size=batch_size)  # prediction batches only
    np.testing.assert_allclose(clf.predict_proba(X), expected, atol=1e-6)


@pytest.mark.covers("check_supervised_y_2d")
def test_column_y_warns_and_fits_as_1d(toy):
    from sklearn.exceptions import DataConversionWarning

    X, y = toy
    expected = tiny().fit(X, y).predict_proba(X)
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        clf = tiny().fit(X, y.reshape(-1, 1))
    np.testing.assert_array_equal(clf.predict_proba(X), expected)
    assert clf.predict(X).ndim == 1


@pytest.mark.covers("check_n_features_in", "check_n_features_in_after_fitting")
def test_images_of_another_size_are_resized_and_wrong_channels_refused(toy):
    """Images have no n_features_in_: any size is resized and cropped to the
    network's input; what cannot be an image of the fitted kind (two
    channels, tabular rows) is refused with an error that says so."""
    X, y = toy
    clf = tiny(max_epochs=1).fit(X, y)
    assert not hasattr(clf, "n_features_in_")
    bigger = np.repeat(np.repeat(X[:4], 2, axis=1), 2, axis=2)  # 64x64
    assert clf.predict_proba(bigger).shape == (4, 2)
    with pytest.raises(ValueError, match="channel"):
        clf.predict(X[:4, :, :, :2])
    with pytest.raises(ValueError, match="tabular data"):
        clf.predict(np.zeros((4, 10)))


# -- the training loop ---------------------------------------------------


@given(n=st.integers(1, 200), batch_size=st.integers(1, 64))
def test_batches_cover_every_image_and_none_is_alone(n, batch_size):
    from sktransfer._training import plan_batches

    sizes = plan_batches(n, batch_size)
    assert sum(sizes) == n
    assert all(1 <= s <= batch_size + 1 for s in sizes)
    if batch_size > 1 and n > 1:
        assert 1 not in sizes
    assert sizes[:-1] == [batch_size] * (len(sizes) - 1)


@pytest.mark.parametrize("n", [9, 17])
def test_a_last_batch_of_one_image_trains_with_the_batch_before(toy, n):
    """With 9 images in batches of 8, every image is trained on in every
    epoch (the ninth joins the first batch), none skipped, losses > 0."""
    X, y = toy
    seen = []
    clf = resnet(trainable_layers=1, max_epochs=2)
    from sktransfer import _training

    real = _training.TrainStep.__call__

    def counting(self, x, targets):
        seen.append(len(x))
        return real(self, x, targets)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_training.TrainStep, "__call__", counting)
        clf.fit(X[:n], y[:n])
    assert sum(seen) == 2 * n and 1 not in seen
    assert all(loss > 0 for loss in clf.loss_curve_)


def test_a_batch_norm_on_one_value_per_channel_fails_clearly(toy):
    """batch_size=1 where a batch norm sees one value per channel (ResNet's
    last stage on 32x32 images is 1x1): a clear error, never a skipped batch
    and a loss of 0; freeze_batchnorm=True trains."""
    X, y = toy
    with pytest.raises(ValueError, match="batch_size >= 2, or freeze_batchnorm"):
        resnet(trainable_layers=1, batch_size=1).fit(X[:4], y[:4])
    clf = resnet(trainable_layers=1, batch_size=1, freeze_batchnorm=True)
    assert all(loss > 0 for loss in clf.fit(X[:4], y[:4]).loss_curve_)


def test_images_of_mixed_sizes_without_a_crop_fail_clearly(toy):
    X, y = toy
    images = [X[0], X[1], np.repeat(X[2], 2, axis=0), X[3]]
    no_crop = {"resize_size": None, "crop_size": None}
    with pytest.raises(ValueError, match="do not all have one size"):
        tiny(trainable_layers=1, preprocessing=no_crop).fit(images, y[:4])
    # the frozen path pools each image alone: it trains
    assert tiny(preprocessing=no_crop).fit(images, y[:4]).n_iter_ == 3


def test_training_batches_come_through_the_engine(toy, monkeypatch):
    """Training, validation and prediction read images through one path:
    the engine's batches (nvJPEG on CUDA) and device_input."""
    from sktransfer import _engine

    X, y = toy
    calls = []
    real = _engine.device_input
    monkeypatch.setattr(
        _engine, "device_input", lambda *a: calls.append(len(a[1])) or real(*a)
    )
    clf = tiny(trainable_layers=1, max_epochs=1, early_stopping=True)
    clf.fit(X, y)
    n_train = len(X) - round(0.1 * len(X))
    n_valid = len(X) - n_train
    # the image that sizes the new layers (it runs as fit's rows do), one
    # epoch, then validation
    assert calls[0] == 1
    assert sum(calls[1:]) == n_train + n_valid
    calls.clear()
    clf.predict(X)
    assert sum(calls) == len(X)


def test_out_of_memory_splits_the_step_and_gives_the_same_step(toy):
    """Out of memory, a step runs in micro-batches whose gradients add up
    to the whole batch's: the same update (no batch norm in the way)."""
    from sktransfer._training import TrainStep

    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    x, targets = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    weight = torch.tensor([1.0, 2.0, 0.5])

    def step_of(fail_above):
        net = copy.deepcopy(head)

        def forward(batch):
            if len(batch) > fail_above:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return net(batch)

        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        step = TrainStep(forward, opt, weight, torch.device("cpu"), torch.float32)
        loss = float(step(x, targets))  # (a 0-d tensor on the device)
        return loss, net.weight.detach(), step.micro

    whole, split = step_of(99), step_of(3)
    assert split[2] == 2 and whole[2] is None
    assert split[0] == pytest.approx(whole[0], rel=1e-6)
    torch.testing.assert_close(split[1], whole[1])
    expected = torch.nn.functional.cross_entropy(head(x), targets, weight=weight)
    assert whole[0] == pytest.approx(float(expected), rel=1e-6)


def test_early_stopping_object():
    from sktransfer._training import EarlyStopping

    net = torch.nn.Linear(2, 2)
    stopper = EarlyStopping(patience=2, tol=0.05)
    decisions = []
    for score in (0.5, 0.8, 0.82, 0.84, 0.81):
        with torch.no_grad():
            net.bias.fill_(score)
        decisions.append(stopper(score, net))
    # 0.82 and 0.84 improve by less than tol: the second of them stops
    assert decisions == [False, False, False, True, True]
    assert stopper.best_score == 0.84
    assert float(stopper.best_state["bias"][0]) == pytest.approx(0.84)


def test_augmentation_draws_from_its_own_generator():
    from sktransfer._training import Augmentation

    x = torch.rand(4, 3, 20, 24)
    state = torch.random.get_rng_state()
    first = Augmentation(16, torch.Generator().manual_seed(1))(x)
    again = Augmentation(16, torch.Generator().manual_seed(1))(x)
    other = Augmentation(16, torch.Generator().manual_seed(2))(x)
    assert first.shape == (4, 3, 16, 16)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.random.get_rng_state(), state)
    box = Augmentation(16, torch.Generator().manual_seed(0)).crop_box(20, 24)
    top, left, h, w = box
    assert 0 <= top <= 20 - h and 0 <= left <= 24 - w
    assert 0.7 * 480 * 0.9 <= h * w <= 480 and 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1


# -- persistence ---------------------------------------------------------


@pytest.mark.covers(
    "check_estimators_pickle", "check_estimators_pickle(readonly_memmap=True)"
)
def test_pickle_keeps_trained_weights_in_a_fresh_process(toy, tmp_path):
    X, y = toy
    clf = resnet(trainable_layers="all").fit(X, y)
    expected = clf.predict_proba(X)
    out = transform_in_fresh_process(clf, X, tmp_path, method="predict_proba")
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.save(tmp_path / "X.npy", X)
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(memmap), expected, rtol=1e-6)
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
    # chance: 0.5; 20 of 24 right by chance has probability 0.0008 (seeds
    # 0-4 score 0.875-1.0)
    assert clf.score(X[test], y[test]) >= 0.8


# -- sklearn's checks ----------------------------------------------------

_FIT = "test_fits_predicts_and_scores_any_label_type"
_INPUTS = "test_memmap_readonly_fortran_and_list_inputs_fit_and_predict_alike"
_DTYPES = "test_image_dtypes_train_alike"
_ORDER = "test_predictions_independent_of_order_subset_and_batch"
_PARAMS = "test_fit_leaves_parameters_unchanged_and_adds_only_fitted_attributes"
_SIZES = "test_images_of_another_size_are_resized_and_wrong_channels_refused"
_BAD = "test_bad_inputs_raise"
_PICKLE = "test_pickle_keeps_trained_weights_in_a_fresh_process"
#: Checks that feed 2-D tabular data (which an image classifier must refuse),
#: each with the test of this module that checks the same property on images.
EXPECTED_FAILED_CHECKS = {
    "check_fit_score_takes_y": _FIT,
    "check_estimators_fit_returns_self": _FIT,
    "check_classifiers_classes": _FIT,
    "check_classifiers_train": _FIT,
    "check_estimators_overwrite_params": _PARAMS,
    "check_dont_overwrite_parameters": _PARAMS,
    "check_readonly_memmap_input": _INPUTS,
    "check_f_contiguous_array_estimator": _INPUTS,
    "check_classifier_data_not_an_array": _INPUTS,
    "check_classifiers_train(readonly_memmap=True)": _INPUTS,
    "check_classifiers_train(readonly_memmap=True,X_dtype=float32)": _DTYPES,
    "check_estimators_dtypes": _DTYPES,
    "check_n_features_in_after_fitting": _SIZES,
    "check_n_features_in": _SIZES,
    "check_positive_only_tag_during_fit": _BAD,
    "check_dtype_object": _BAD,
    "check_estimators_empty_data_messages": _BAD,
    "check_estimators_nan_inf": _BAD,
    "check_fit2d_1feature": _BAD,
    "check_fit2d_predict1d": _BAD,
    "check_fit_check_is_fitted": _BAD,
    "check_pipeline_consistency": "test_a_pipeline_predicts_as_the_classifier_alone",
    "check_estimators_pickle": _PICKLE,
    "check_estimators_pickle(readonly_memmap=True)": _PICKLE,
    "check_supervised_y_2d": "test_column_y_warns_and_fits_as_1d",
    "check_class_weight_classifiers": "test_class_weight_changes_the_fit",
    "check_methods_sample_order_invariance": _ORDER,
    "check_methods_subset_invariance": _ORDER,
    "check_dict_unchanged": "test_predict_leaves_state_unchanged",
    "check_fit_idempotent": "test_same_random_state_same_predictions",
}


@parametrize_with_checks(
    [resnet()],
    expected_failed_checks=lambda estimator: {
        name: f"feeds 2-D tabular data, which is refused; see test_finetune.py::{test}"
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
            check: f"test_finetune.py::{test}"
            for check, test in EXPECTED_FAILED_CHECKS.items()
        },
        estimator=("tiny(", "resnet("),
    )
