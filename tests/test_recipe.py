"""The whole recipe (issue 31): keep N layers, add new layers, train them."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from sktransfer import (
    FineTunedClassifier,
    LayerError,
    PretrainedFeatureExtractor,
)

from .conftest import SMALL, TinyCNN, assert_same_rows
from .test_finetune import tiny


@pytest.fixture(scope="module")
def toy():
    """Two classes of 32x32 images: dark noise and bright noise."""
    rng = np.random.default_rng(0)
    dark = rng.normal(60, 30, (20, 32, 32, 3))
    bright = rng.normal(190, 30, (20, 32, 32, 3))
    X = np.clip(np.concatenate([dark, bright]), 0, 255).astype(np.uint8)
    y = np.array([0] * 20 + [1] * 20)
    order = rng.permutation(len(y))
    return X[order], y[order]


def frozen_features(clf, X):
    """What the kept part of a fitted classifier computes for ``X``."""
    with torch.inference_mode():
        x = clf.preprocessing_(torch.from_numpy(X).permute(0, 3, 1, 2))
        return clf.network_.backbone(x).numpy()


# -- keep N layers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "pooling"),
    [("block1", "avg"), ("block1", "max"), ("stem.1", "avgmax"), ("block2", "avg")],
)
def test_cut_classifier_features_equal_the_extractor_cut_there(toy, layer, pooling):
    """On its frozen part, a classifier cut at a layer computes the rows of
    the extractor cut at the same layer with the same pooling."""
    X, y = toy
    torch.manual_seed(0)
    module = TinyCNN()
    clf = tiny(model=module, layer=layer, pooling=pooling, max_epochs=1).fit(X, y)
    extractor = PretrainedFeatureExtractor(
        model=module,
        layer=layer,
        pooling=pooling,
        preprocessing=SMALL,
        precision="float32",
        cache=None,
        verbose=False,
    ).fit(X)
    assert_same_rows(frozen_features(clf, X), extractor.transform(X))
    assert clf.network_.head.in_features == extractor.n_features_out_
    # reused as a model, the cut classifier gives the same rows again
    reused = PretrainedFeatureExtractor(model=clf, cache=None, verbose=False).fit(X)
    assert_same_rows(reused.transform(X), extractor.transform(X))


def test_the_cut_drops_what_follows_it_and_none_keeps_everything(toy):
    X, y = toy
    cut = tiny(layer="block1").fit(X, y)
    names = {k.split(".")[1] for k in cut.network_.backbone.state_dict()}
    assert names == {"stem", "block1"}
    whole = tiny().fit(X, y)
    assert "block2.0.weight" in whole.network_.backbone.state_dict()
    assert whole.network_.head.in_features == 32
    same = tiny(layer=None, pooling="max", hidden_layer_sizes=()).fit(X, y)
    np.testing.assert_array_equal(same.predict_proba(X), whole.predict_proba(X))


def test_trainable_layers_count_kept_stages_backwards_from_the_cut(toy):
    X, y = toy
    clf = tiny(layer="block1", trainable_layers=1).fit(X, y)
    assert clf.n_trainable_layers_ == 1
    initial = tiny(layer="block1").fit(X, y).network_.backbone.state_dict()
    for name, tensor in clf.network_.backbone.state_dict().items():
        if ".block1." in name:
            assert not torch.equal(tensor, initial[name]), name
        else:
            assert torch.equal(tensor, initial[name]), name
    assert tiny(layer="block1", trainable_layers=2).fit(X, y).n_trainable_layers_ == 2
    with pytest.raises(ValueError, match="has 2 stages"):
        tiny(layer="block1", trainable_layers=3).fit(X, y)


def test_bad_layers_and_poolings_are_refused_as_by_the_extractor(toy):
    X, y = toy
    with pytest.raises(LayerError, match="Did you mean 'block1'"):
        tiny(layer="blok1").fit(X, y)
    with pytest.raises(ValueError, match="'pooling' parameter"):
        tiny(layer="block1", pooling="mean").fit(X, y)
    with pytest.raises(ValueError, match="'hidden_layer_sizes' parameter"):
        tiny(hidden_layer_sizes=(4, 0)).fit(X, y)
    with pytest.raises(ValueError, match="'activation' parameter"):
        tiny(activation="swish").fit(X, y)


def test_a_cut_classifier_pickles_and_predicts_the_same(toy):
    X, y = toy
    clf = tiny(layer="block1", hidden_layer_sizes=(8,), trainable_layers=1).fit(X, y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(
        restored.predict_proba(X), clf.predict_proba(X), rtol=1e-6
    )
    # a state read back from a file (safetensors) need not keep module order
    state = clf.__getstate__()
    state["_network_state"] = dict(reversed(state["_network_state"].items()))
    shuffled = FineTunedClassifier.__new__(FineTunedClassifier)
    shuffled.__setstate__(state)
    np.testing.assert_allclose(
        shuffled.predict_proba(X), clf.predict_proba(X), rtol=1e-6
    )


def test_a_cut_resnet_trains_its_last_kept_stage():
    """A torchvision ResNet cut at layer2: layer2 trains, layer1 does not,
    and layer3 and layer4 are gone."""
    X = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    y = [0, 1] * 4
    clf = FineTunedClassifier(
        model="resnet18",
        weights=None,
        layer="layer2",
        trainable_layers=1,
        preprocessing=SMALL,
        max_epochs=1,
        batch_size=4,
        random_state=0,
        verbose=False,
    ).fit(X, y)
    body = clf.network_.backbone.body
    assert not hasattr(body, "layer3") and not hasattr(body, "fc")
    assert clf.network_.head.in_features == 128
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2"}


# -- add new layers ----------------------------------------------------------


def test_hidden_layers_train_above_chance_and_lower_the_loss(toy):
    X, y = toy
    clf = tiny(
        layer="block2",
        hidden_layer_sizes=(16, 8),
        activation="gelu",
        dropout=0.1,
        max_epochs=15,
    ).fit(X[:30], y[:30])
    head = clf.network_.head
    shapes = [tuple(m.weight.shape) for m in head if isinstance(m, torch.nn.Linear)]
    assert shapes == [(16, 32), (8, 16), (2, 8)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head) == 2
    assert sum(isinstance(m, torch.nn.Dropout) for m in head) == 3
    assert clf.loss_curve_[-1] < 0.5 * clf.loss_curve_[0]
    assert clf.score(X[30:], y[30:]) >= 0.9  # chance: 0.5


def test_hidden_layers_are_seeded_by_random_state(toy):
    X, y = toy
    params = dict(hidden_layer_sizes=(12,), dropout=0.2, max_epochs=2)
    first, second, other = (tiny(random_state=s, **params) for s in (0, 0, 1))
    state = torch.random.get_rng_state()  # (tiny() seeds torch for TinyCNN)
    for model in (first, second, other):
        model.fit(X, y)
    a, b = first.network_.head.state_dict(), second.network_.head.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = other.network_.head.state_dict()
    assert not torch.equal(a["1.weight"], c["1.weight"])
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_hidden_layer_sizes_and_layer_clone_and_search(toy):
    from sklearn.model_selection import GridSearchCV

    X, y = toy
    search = GridSearchCV(
        tiny(max_epochs=2),
        {"layer": ["block1", None], "hidden_layer_sizes": [(), (8,)]},
        cv=2,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert clone(search.best_estimator_).get_params()["hidden_layer_sizes"] in [
        (),
        (8,),
    ]


# -- searching the recipe costs little -------------------------------------------------


def test_a_search_over_layers_and_heads_runs_each_image_once_per_layer(toy):
    """Frozen cut layers, no augmentation: a grid search over 3 layers x 2
    head sizes (2 folds, 2 learning rates) runs each image through the
    network once per layer, fit and predict included (the image that sizes
    the new layers at each cut point is the first image's cached row), and
    its scores and predictions are those of the same search without a
    cache."""
    from sklearn.model_selection import GridSearchCV

    from sktransfer import EmbeddingCache

    from .test_cache import ImageCounter

    X, y = toy
    torch.manual_seed(0)
    module = TinyCNN()
    counter = ImageCounter(module.stem[0])
    grid = {
        "layer": ["stem.1", "block1", "block2"],
        "hidden_layer_sizes": [(), (8,)],
        "learning_rate": [1e-2, 3e-2],
    }

    def search(cache):
        estimator = tiny(model=module, max_epochs=2, cache=cache)
        return GridSearchCV(estimator, grid, cv=2).fit(X, y)

    cached = search(EmbeddingCache())
    assert counter.count == 3 * len(X)  # once per image and layer
    counter.count = 0
    plain = search(None)
    assert counter.count > 10 * len(X)  # (each fit and predict runs the network)
    np.testing.assert_allclose(
        cached.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"]
    )
    assert cached.best_params_ == plain.best_params_
    np.testing.assert_allclose(
        cached.predict_proba(X), plain.predict_proba(X), rtol=1e-5, atol=1e-6
    )


def test_the_frozen_features_are_cached_only_where_they_are_frozen(toy):
    """A trainable kept stage, augmentation or cache=None store nothing; a
    frozen classifier stores its features once and a refit at another seed
    or head reads them (its result equal to an uncached fit's)."""
    from sktransfer import EmbeddingCache

    X, y = toy
    cache = EmbeddingCache()
    for params in ({"trainable_layers": 1}, {"augment": True}):
        tiny(
            layer="block1", cache=cache, preprocessing={"crop_size": 32}, **params
        ).fit(X, y)
    tiny(layer="block1", cache=None).fit(X, y)
    assert len(cache) == 0
    first = tiny(layer="block1", cache=cache).fit(X, y)
    assert len(cache) == len(X)
    misses = cache.misses
    again = tiny(layer="block1", cache=cache, random_state=3, hidden_layer_sizes=(4,))
    again.fit(X, y)
    assert cache.misses == misses  # (fit, and no probe image run)
    plain = tiny(layer="block1", cache=None, random_state=3, hidden_layer_sizes=(4,))
    plain.fit(X, y)
    np.testing.assert_allclose(
        again.predict_proba(X), plain.predict_proba(X), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(again.loss_curve_, plain.loss_curve_, rtol=1e-5)
    assert first.predict(X).shape == (len(X),)
    # another cut, pooling or weights of the kept network: other rows
    tiny(layer="block1", pooling="max", cache=cache).fit(X, y)
    assert len(cache) == 2 * len(X)
