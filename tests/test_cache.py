"""The embedding cache: one pass per image for a whole grid search."""

import threading

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktransfer import EmbeddingCache, PretrainedFeatureExtractor, default_cache

from .conftest import SMALL, assert_same_rows

GRID_LAYERS = ["stem", "block1", "block2", None]


class ImageCounter:
    """Counts the images that reach a module (a forward hook)."""

    def __init__(self, module):
        self.count = 0
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.count += inputs[0].shape[0]

    def __deepcopy__(self, memo):  # clones of the module count here too
        return self


@pytest.fixture
def counted(tiny_cnn):
    """The tiny CNN and a counter of the images its first conv sees."""
    return tiny_cnn, ImageCounter(tiny_cnn.stem[0])


def make(model, cache, **params):
    return PretrainedFeatureExtractor(
        model=model, preprocessing=SMALL, verbose=False, cache=cache, **params
    )


def test_cached_rows_equal_uncached(counted, images):
    """Rows from the cache are identical to freshly computed ones."""
    model, counter = counted
    fresh = make(model, None, layer=["block1", None]).fit(images).transform(images)
    cached = make(model, EmbeddingCache(), layer=["block1", None]).fit(images)
    before = counter.count
    first, second = cached.transform(images), cached.transform(images)
    assert_same_rows(first, fresh)
    assert_same_rows(second, fresh)
    assert counter.count - before == len(images)  # the second call is all hits


def test_cache_hits_across_clones_and_subsets(counted, images):
    """Clones share the cache; any subset or order of seen images is a hit."""
    model, counter = counted
    cache = EmbeddingCache()
    make(model, cache).fit(images).transform(images)
    expected = make(model, None).fit(images).transform(images)
    other = clone(make(model, cache)).fit(images[:1])
    before = counter.count
    order = [5, 0, 3, 3]
    assert_same_rows(other.transform(images[order]), expected[order])
    assert counter.count == before  # all hits


@pytest.mark.parametrize(
    "change",
    [
        {"pooling": "max"},
        {"preprocessing": {"resize_size": 24, "crop_size": 24}},
        {"weights": None},  # re-initialised: other weights
        {"layer": "block1"},
    ],
)
def test_changes_invalidate_entries(counted, images, change):
    """Other pooling, preprocessing, weights or layer never hit old entries."""
    model, counter = counted
    cache = EmbeddingCache()
    make(model, cache).fit(images).transform(images)
    before = counter.count
    changed = make(model, cache).set_params(**change).fit(images)
    out = changed.transform(images)
    assert counter.count - before == len(images)  # fit's probe + transform
    assert_same_rows(out, changed.set_params(cache=None).transform(images))


def test_changed_image_is_a_miss(counted, images):
    """One changed pixel makes that image, and only that image, a miss."""
    model, counter = counted
    extractor = make(model, EmbeddingCache()).fit(images)
    extractor.transform(images)
    edited = images.copy()
    edited[2, 0, 0, 0] ^= 1
    before = counter.count
    extractor.transform(edited)
    assert counter.count - before == 1
    as_float = extractor.transform(images / 255.0)  # another dtype: another key
    assert counter.count - before == 1 + len(images)
    assert as_float.shape == (len(images), 3)


def test_cache_never_exceeds_its_bound():
    """The LRU drops the oldest entries to stay within max_bytes."""
    cache = EmbeddingCache(max_bytes=10 * 400)
    for i in range(50):
        cache.put(("cfg", None, str(i)), np.full(100, i, np.float32))  # 400 bytes
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 10
    assert cache.get(("cfg", None, "0")) is None
    assert_array_equal(cache.get(("cfg", None, "49")), np.full(100, 49))
    cache.put(("cfg", None, "big"), np.zeros(10_000, np.float32))  # over the bound
    assert cache.get(("cfg", None, "big")) is None and cache.nbytes <= 4000
    with pytest.raises(ValueError, match=">= 0"):
        EmbeddingCache(max_bytes=-1)


def test_cache_is_thread_safe():
    """Concurrent puts and gets keep the byte count exact and values intact."""
    cache = EmbeddingCache(max_bytes=200 * 40)

    def work(t):
        for i in range(500):
            key = ("cfg", t, str(i % 300))
            cache.put(key, np.full(10, i % 300, np.float32))
            value = cache.get(key)
            assert value is None or value[0] == i % 300

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.nbytes == sum(v.nbytes for v in cache._memory._entries.values())
    assert cache.nbytes <= cache.max_bytes


def test_concurrent_transforms_share_one_cache(counted, images):
    """Transforms from several threads give the right rows."""
    model, _ = counted
    extractor = make(model, EmbeddingCache(), batch_size=2).fit(images)
    expected = make(model, None).fit(images).transform(images)
    results = [None] * 4

    def run(k):
        results[k] = extractor.transform(images)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert_same_rows(result, expected)


def test_disk_cache_survives_the_memory_layer(counted, images, tmp_path):
    """A directory cache serves another (fresh) process's memory layer."""
    model, counter = counted
    extractor = make(model, str(tmp_path)).fit(images)
    expected = extractor.transform(images)
    assert len(list(tmp_path.rglob("*.emb"))) == len(images)
    fresh = EmbeddingCache(directory=tmp_path)  # what another process would build
    other = make(model, fresh).fit(images[:1])
    before = counter.count
    assert_same_rows(other.transform(images), expected)
    assert counter.count == before  # served from the files
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_objects_are_shared_not_copied():
    """clone and deepcopy keep the same cache object; pickling keeps the bound."""
    import copy
    import pickle

    cache = EmbeddingCache(max_bytes=123)
    extractor = PretrainedFeatureExtractor(cache=cache)
    assert clone(extractor).cache is cache
    assert copy.deepcopy(cache) is cache
    assert pickle.loads(pickle.dumps(cache)).max_bytes == 123
    assert default_cache().max_bytes == 1 << 30


def _grid_search(model, cache, cache_layers, X, y):
    extractor = make(model, cache, cache_layers=cache_layers)
    search = GridSearchCV(
        make_pipeline(extractor, LogisticRegression(max_iter=200)),
        {
            "pretrainedfeatureextractor__layer": GRID_LAYERS,
            "logisticregression__C": [0.1, 1.0, 10.0],
        },
        cv=5,
    )
    return search.fit(X, y)


@pytest.fixture
def labelled():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    return X, np.arange(40) % 2


def test_grid_search_runs_each_image_once_with_known_cut_points(counted, labelled):
    """4 cut points x 3 C x 5 folds: n images through the network, not 60 n."""
    model, counter = counted
    X, y = labelled
    search = _grid_search(model, EmbeddingCache(), GRID_LAYERS, X, y)
    # n images: the first fit's one-image probe is cached, later fits reuse it
    assert counter.count == len(X)
    before = counter.count
    _grid_search(model, None, None, X, y)
    passes = counter.count - before
    # without the cache: every fit re-extracts (+ one probe per cut point)
    assert 61 * len(X) <= passes <= 61 * len(X) + 4
    assert search.best_params_["pretrainedfeatureextractor__layer"] in GRID_LAYERS


def test_grid_search_one_pass_per_cut_point_otherwise(counted, labelled):
    """Without cache_layers, each distinct cut point costs one pass."""
    model, counter = counted
    X, y = labelled
    _grid_search(model, EmbeddingCache(), None, X, y)
    assert counter.count <= 4 * len(X) + 4  # + one probe per cut point


def test_cache_layers_stages(tiny_cnn, images):
    """cache_layers='stages' taps every stage boundary and the embedding."""
    extractor = make(tiny_cnn, EmbeddingCache(), layer="block1", cache_layers="stages")
    extractor.fit(images)
    assert extractor.taps_ == ["stem", "block2", "pool", "flatten", "fc", None]
    assert extractor.transform(images).shape == (len(images), 16)
    assert make(tiny_cnn, None, cache_layers="stages").fit(images).taps_ == []


def test_redefined_module_class_is_another_network(images):
    """A module whose forward changed (same weights) never hits old entries."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    first = Net()
    cache = EmbeddingCache()
    a = make(first, cache).fit(images).transform(images)

    class Net(nn.Module):  # noqa: F811 - as when a notebook cell is re-run
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).amax((2, 3))

    second = Net()
    second.load_state_dict(first.state_dict())
    b = make(second, cache).fit(images).transform(images)
    assert not np.allclose(a, b)
    assert_same_rows(b, make(second, None).fit(images).transform(images))


def test_parallel_grid_search_shares_the_disk_cache(labelled, tmp_path):
    """GridSearchCV(n_jobs=2) works; worker processes share a directory cache."""
    X, y = labelled
    extractor = PretrainedFeatureExtractor(
        model="resnet18",
        weights=None,
        random_state=0,
        preprocessing=SMALL,
        cache=str(tmp_path),
        cache_layers=["layer1", None],
        verbose=False,
    )
    search = GridSearchCV(
        make_pipeline(extractor, LogisticRegression(max_iter=200)),
        {"pretrainedfeatureextractor__layer": ["layer1", None]},
        cv=2,
        n_jobs=2,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    # one file per image and computed layer, whichever process wrote it
    assert len(list(tmp_path.rglob("*.emb"))) == 2 * len(X)


def test_clear_caches_forgets_shared_state_but_not_fitted_estimators(counted, images):
    """clear_caches empties the embedding memory and the network memo; a
    fitted extractor still transforms, with the same rows, recomputed."""
    import sktransfer
    from sktransfer import _network

    model, counter = counted
    extractor = make(model, "memory").fit(images)
    expected = extractor.transform(images)
    assert len(default_cache()) > 0 and len(_network._NETWORKS) > 0
    sktransfer.clear_caches()
    assert len(default_cache()) == 0 and len(_network._NETWORKS) == 0
    before = counter.count
    assert_same_rows(extractor.transform(images), expected)
    assert counter.count - before == len(images)  # recomputed, not remembered


def test_networks_on_a_device_live_only_as_long_as_their_estimators(tiny_cnn):
    """The memo keeps the CPU network; a copy on another device is held
    weakly, shared while an estimator uses it and gone (its device memory
    freed) with the last one. ("meta" stands in for a GPU here.)"""
    import gc

    import torch

    from sktransfer import _network

    def build(device):
        return _network.build(
            tiny_cnn, "DEFAULT", None, torch.device(device), None, None, "avg", "m"
        )

    first, second = build("meta"), build("meta")
    assert first.net is second.net
    assert next(first.net.body.parameters()).device.type == "meta"  # (what runs)
    cpu = build("cpu").net
    assert next(cpu.parameters()).device.type == "cpu" and cpu is not first.net
    assert len(_network._ON_DEVICE) == 1
    del first, second
    gc.collect()
    assert len(_network._ON_DEVICE) == 0
    assert build("cpu").net is cpu  # the CPU network stays in the bounded memo


def test_memory_rows_are_looked_up_together_as_one_by_one():
    """A batch lookup of rows answers as per-key lookups would: a row is
    found only if every layer is held at its width, and only found rows
    count as hits; what it finds becomes the most recently used."""
    from sktransfer._memo import Memo

    cache = EmbeddingCache()
    a, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    cache.put(("c", "x", "1"), a)
    cache.put(("c", "y", "1"), b)
    cache.put(("c", "x", "2"), a)
    cache.put(("c", "y", "3"), np.zeros(5, np.float32))  # (another width)
    keys = [[("c", layer, image) for layer in "xy"] for image in "1234"]
    rows = cache.get_memory_rows(keys, [3, 3])
    assert [r is not None for r in rows] == [True, False, False, False]
    assert_array_equal(rows[0][0], a)
    assert_array_equal(rows[0][1], b)
    assert (cache.hits, cache.misses) == (2, 0)

    memo = Memo(size=2)
    memo.put("old", 1)
    memo.put("new", 2)
    assert memo.get_many(["old", "absent"]) == [1, None]
    memo.put("newest", 3)  # (evicts the least recently used: "new")
    assert memo.get_many(["old", "new", "newest"]) == [1, None, 3]
