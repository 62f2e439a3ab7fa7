"""Dask collections: lazy transform and predict on a real LocalCluster.

The cluster is started by the tests (processes, 2 workers, 1 thread each),
once for the module.
"""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from tests.conftest import SMALL, assert_same_rows

da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe", exc_type=ImportError)  # (needs pyarrow)
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    # Starting worker processes leaves Dask's pre-spawn settings
    # (OMP_NUM_THREADS=1...) in this process's environment, where later
    # tests' subprocesses would inherit them: restored after.
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), np.uint8)


@pytest.fixture(scope="module")
def extractor(images):
    return PretrainedFeatureExtractor(
        model="resnet18",
        weights=None,
        random_state=0,
        layer=["layer3", None],
        preprocessing=SMALL,
        cache=None,
        verbose=False,
    ).fit(images)


def _count_network_builds():
    """On a worker: count the networks estimators rebuild from here on."""
    from sktransfer import _network

    if not hasattr(_network, "original_rebuild"):
        _network.original_rebuild = _network.rebuild

        def counting(*args, **kwargs):
            _network.builds += 1
            return _network.original_rebuild(*args, **kwargs)

        _network.rebuild = counting
    _network.builds = 0


def _network_builds():
    from sktransfer import _network

    return _network.builds


def test_a_dask_array_is_embedded_lazily_one_network_per_worker(
    client, images, extractor
):
    client.run(_count_network_builds)
    lazy = extractor.transform(da.from_array(images, chunks=(2, 32, 32, 3)))
    assert isinstance(lazy, da.Array)
    assert lazy.chunks == ((2,) * 8, (extractor.n_features_out_,))
    assert lazy.dtype == np.float32
    assert_same_rows(lazy.compute(), extractor.transform(images))
    builds = client.run(_network_builds)
    # 8 blocks on 2 workers: each worker built its network once, at most
    assert 1 <= sum(builds.values()) <= 2 and max(builds.values()) == 1


def _malloc_tuned():
    from sktransfer import _dask

    return list(_dask._MALLOC_TUNED)


def test_workers_get_glibc_thresholds_back_from_the_nanny(client, images, extractor):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap
    threshold: torch ran 25% slower in a worker. The first task resets the
    thresholds in each worker (where glibc is), never in this process."""
    from sktransfer import _dask

    extractor.transform(da.from_array(images, chunks=(4, 32, 32, 3))).compute()
    done = client.run(_malloc_tuned)
    if sys.platform.startswith("linux"):
        # (each worker that ran a task; a worker without one has [])
        assert [True] in done.values() and [False] not in done.values(), done
    assert _dask.worker_memory() is False  # not a worker


def test_chunks_across_an_image_are_joined(client, images, extractor):
    split = da.from_array(images, chunks=(5, 16, 32, 3))
    assert_same_rows(extractor.transform(split).compute(), extractor.transform(images))


@pytest.fixture(scope="module")
def paths(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    out = []
    for i, image in enumerate(images):
        out.append(str(folder / f"{i:02d}.png"))
        Image.fromarray(image).save(out[-1])
    return out


def test_a_series_or_bag_of_paths_is_embedded_in_order(client, paths, extractor):
    import pandas as pd

    expected = extractor.transform(paths)
    series = dd.from_pandas(pd.Series(paths), npartitions=3)
    lazy = extractor.transform(series)
    assert lazy.chunks[0] == (6, 5, 5) or sum(lazy.chunks[0]) == len(paths)
    assert_same_rows(lazy.compute(), expected)
    bag = db.from_sequence(paths, npartitions=4)
    assert_same_rows(extractor.transform(bag).compute(), expected)


def test_unreadable_paths_give_nan_rows_in_place(client, paths, extractor):
    import pandas as pd

    tolerant = PretrainedFeatureExtractor(**extractor.get_params())
    tolerant.set_params(on_error="nan").fit(paths[:1])
    with_missing = [*paths[:5], "/no/such/file.png", *paths[5:]]
    series = dd.from_pandas(pd.Series(with_missing), npartitions=3)
    rows = tolerant.transform(series).compute()
    assert np.isnan(rows[5]).all() and not np.isnan(np.delete(rows, 5, 0)).any()
    assert_same_rows(np.delete(rows, 5, 0), extractor.transform(paths))


def test_fit_on_a_dask_collection_runs_its_first_image(images):
    """fit computes one image (its probe); fit_transform stays lazy."""
    lazy_input = da.from_array(images, chunks=(4, 32, 32, 3))
    extractor = PretrainedFeatureExtractor(
        model="resnet18",
        weights=None,
        random_state=0,
        preprocessing=SMALL,
        cache=None,
        verbose=False,
    )
    out = extractor.fit_transform(lazy_input)  # the local threaded scheduler
    assert isinstance(out, da.Array)
    assert_same_rows(out.compute(), extractor.transform(images))


def test_a_bag_is_fitted_without_starting_processes(paths, monkeypatch):
    """With no scheduler chosen, what fit computes itself (the first path,
    the partitions' lengths) runs on threads, not on dask.bag's default
    process pool (which, under spawn, re-runs an unguarded script)."""
    import dask.bag as db

    def no_processes(*args, **kwargs):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(db.Bag, "__dask_scheduler__", staticmethod(no_processes))
    extractor = PretrainedFeatureExtractor(
        model="resnet18", weights=None, random_state=0, preprocessing=SMALL,
        cache=None, verbose=False,
    )  # fmt: skip
    lazy = extractor.fit_transform(db.from_sequence(paths, npartitions=3))
    assert lazy.shape == (len(paths), 512)


def test_an_int8_extractor_runs_its_quantized_model_on_the_workers(client, images):
    """precision="int8": fit calibrates on the first calibration_size images
    of the collection; the workers run the model the extractor carries."""
    pytest.importorskip("onnxruntime")
    from sktransfer._runtime import int8 as _int8

    if _int8.int8_kernels() is None:
        pytest.skip("this CPU has no int8 dot-product instructions")
    lazy_input = da.from_array(images, chunks=(4, 32, 32, 3))
    extractor = PretrainedFeatureExtractor(
        model="resnet18",
        weights=None,
        random_state=0,
        preprocessing=SMALL,
        precision="int8",
        calibration_size=8,
        cache=None,
        verbose=False,
    ).fit(lazy_input)
    assert extractor.quantization_["calibration_images"] == 8
    expected = extractor.transform(images)
    np.testing.assert_array_equal(extractor.transform(lazy_input).compute(), expected)
    again = extractor.set_params(precision="int8").fit(images[:8])
    assert again.quantization_["digest"] == extractor.quantization_["digest"]


def test_predict_and_predict_proba_are_lazy_too(client, images):
    y = np.arange(len(images)) % 2
    clf = FineTunedClassifier(
        model="resnet18",
        weights=None,
        max_epochs=1,
        preprocessing=SMALL,
        random_state=0,
        verbose=False,
    ).fit(images, y)
    lazy = da.from_array(images, chunks=(4, 32, 32, 3))
    proba = clf.predict_proba(lazy)
    assert isinstance(proba, da.Array) and proba.chunks == ((4,) * 4, (2,))
    np.testing.assert_allclose(proba.compute(), clf.predict_proba(images), atol=1e-6)
    np.testing.assert_array_equal(clf.predict(lazy).compute(), clf.predict(images))
    with pytest.raises(TypeError, match="compute the training set first"):
        clf.fit(lazy, y)


def test_a_dask_dataframe_is_refused_with_what_to_pass(extractor, paths):
    import pandas as pd

    frame = dd.from_pandas(pd.DataFrame({"path": paths}), npartitions=2)
    with pytest.raises(TypeError, match="pass its column of paths"):
        extractor.transform(frame)


def test_the_core_imports_without_dask():
    code = (
        "import sys; sys.modules['dask'] = None\n"
        "import numpy as np, sktransfer\n"
        "e = sktransfer.PretrainedFeatureExtractor(model='resnet18', weights=None,"
        " preprocessing={'resize_size': 32, 'crop_size': 32}, verbose=False)\n"
        "print(e.fit_transform(np.zeros((2, 32, 32, 3), np.uint8)).shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "(2, 512)"


def _count_images():
    """On a worker: count the extractor fits, and the images entering any
    extractor network, from here on."""
    import torch

    from sktransfer import _network
    from sktransfer._runtime import layers as _layers

    _layers.images_seen = _network.fits = 0
    if not hasattr(_layers, "counting_hook"):

        def hook(module, args):
            if isinstance(module, _layers.FeatureNet):
                _layers.images_seen += len(args[0])

        register = torch.nn.modules.module.register_module_forward_pre_hook
        _layers.counting_hook = register(hook)
        original = _network.build

        def build(*args, **kwargs):  # (once per extractor fit)
            _network.fits += 1
            return original(*args, **kwargs)

        _network.build = build


def _counts():
    from sktransfer import _network
    from sktransfer._runtime import layers as _layers

    return _network.fits, _layers.images_seen


def test_grid_search_on_the_dask_backend_shares_a_directory_cache(
    client, images, tmp_path
):
    """Fits run on both workers; with a shared directory cache and the grid's
    cut points as cache_layers, the whole search sends each image through a
    network at most once per cut point (twice where both workers embed the
    same image at once, before either has stored it), not once per fit."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    X, y = images, np.arange(len(images)) % 2
    grid = ["layer2", "layer3", None]

    def search(cache):
        extractor = PretrainedFeatureExtractor(
            model="resnet18",
            weights=None,
            random_state=0,
            preprocessing=SMALL,
            cache=cache,
            cache_layers=grid if cache else None,
            verbose=False,
        )
        searcher = GridSearchCV(
            make_pipeline(extractor, LogisticRegression(max_iter=200)),
            {"pretrainedfeatureextractor__layer": grid},
            cv=4,
            n_jobs=-1,
        )
        client.run(_count_images)
        with joblib.parallel_backend("dask"):
            searcher.fit(X, y)
        counts = client.run(_counts).values()
        fits, seen = [c[0] for c in counts], [c[1] for c in counts]
        assert sum(fits) == len(grid) * 4  # every fit ran on the cluster (the
        # refit on the whole set runs here)
        return searcher, fits, sum(seen)

    # Dask places the fits: now and then one worker takes them all (it then
    # shares the cache with itself only); a fresh search, until both have
    for attempt in range(4):
        shared, fits, seen = search(str(tmp_path / f"cache{attempt}"))
        if all(fits):
            break
    assert all(fits), fits  # both workers fitted
    assert seen <= len(grid) * len(X) + len(grid)  # (+ a probe per cut point)
    _, _, without = search(None)  # every fit embeds its images again
    assert without >= len(grid) * 4 * len(X) * 3 / 4
    assert shared.best_params_["pretrainedfeatureextractor__layer"] in grid


def _dataset(folder):
    import pyarrow.parquet as pq

    table = pq.read_table(folder).sort_by("row")
    return table.to_pydict()


def _job_extractor(**params):
    return PretrainedFeatureExtractor(
        model="resnet18",
        weights=None,
        random_state=0,
        preprocessing=SMALL,
        on_error="nan",
        cache=None,
        **params,
    )


def test_a_dataset_job_resumes_with_the_missing_partitions_only(
    paths, tmp_path, monkeypatch
):
    """Locally (no client): one file per partition; a re-run after a lost
    partition embeds that partition's images only, and writes it the same."""
    import torch

    from sktransfer import _embed, embed_dataset
    from sktransfer._runtime import layers as _layers

    # (the module's cluster may be running: this job runs here)
    monkeypatch.setattr(_embed, "active_client", lambda: None)

    job = [*paths[:7], "/no/such/file.png", *paths[7:]]
    folder = tmp_path / "out"
    summary = embed_dataset(job, folder, _job_extractor(), partition_size=5)
    assert summary == {"partitions": 4, "written": 4, "skipped": 0, "unreadable": 1}
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["_sktransfer_job.json"] + [
        f"part-0000{i}.parquet" for i in range(4)
    ]
    first = _dataset(folder)
    assert first["row"] == list(range(17)) and first["path"] == job
    assert first["embedding"][7] is None and "no such file" in first["error"][7]
    expected = _job_extractor().fit(paths).transform(paths)
    rows = [r for r in first["embedding"] if r is not None]
    assert_same_rows(np.array(rows, dtype=np.float32), expected)
    before = (folder / "part-00002.parquet").read_bytes()
    (folder / "part-00002.parquet").unlink()
    seen = []

    def count(module, args):
        if isinstance(module, _layers.FeatureNet):
            seen.append(len(args[0]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        summary = embed_dataset(job, folder, _job_extractor(), partition_size=5)
    finally:
        hook.remove()
    assert summary["written"] == 1 and summary["skipped"] == 3
    # that partition's images (and fit's one-image probe, unless remembered)
    assert sum(seen) in (5, 6)
    assert (folder / "part-00002.parquet").read_bytes() == before
    with pytest.raises(ValueError, match="partition_size differ"):
        embed_dataset(job, folder, _job_extractor(), partition_size=4)


def test_a_worker_killed_mid_job_leaves_a_complete_identical_dataset(
    client, paths, tmp_path
):
    """Dask re-runs the lost tasks: every partition once, whole, the same as
    an uninterrupted local run's; no temporary file is left."""
    import signal
    import threading
    import time

    from sktransfer import embed_dataset

    job = paths * 6  # 96 images, 24 partitions
    reference = tmp_path / "reference"
    embed_dataset(job, reference, _job_extractor(), partition_size=4, verbose=False)
    folder = tmp_path / "cluster"
    outcome = {}

    def run():
        outcome["summary"] = embed_dataset(
            job, folder, _job_extractor(), partition_size=4, verbose=False
        )

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not list(folder.glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    assert thread.is_alive()  # mid-job
    os.kill(victim, signal.SIGKILL)  # its nanny starts a new worker
    thread.join(timeout=120)
    assert outcome["summary"]["partitions"] == 24
    written = sorted(p.name for p in folder.iterdir())
    assert written == sorted(p.name for p in reference.iterdir())  # no .tmp
    for name in written:
        if name.endswith(".parquet"):
            ours, theirs = _dataset(folder / name), _dataset(reference / name)
            assert ours["row"] == theirs["row"] and ours["path"] == theirs["path"]
            assert_same_rows(
                np.array(ours["embedding"], np.float32),
                np.array(theirs["embedding"], np.float32),
            )
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()


def test_the_embed_command_writes_a_dataset_on_a_scheduler(client, paths, tmp_path):
    from sktransfer.cli import main

    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = tmp_path / "emb"
    argv = ["embed", str(listing), "-o", str(out), "--model", "resnet18"]
    argv += ["--weights", "none", "--size", "32", "--partition-size", "5"]
    client.run(_count_network_builds)
    assert main([*argv, "--scheduler", client.scheduler.address, "--quiet"]) == 0
    assert max(client.run(_network_builds).values()) == 1  # 4 tasks, 1 network
    table = _dataset(out)
    assert table["path"] == paths and table["row"] == list(range(len(paths)))
    assert len(list(out.glob("part-*.parquet"))) == 4
    # a file output takes no scheduler: a usage error, before any work
    assert main([*argv[:3], str(tmp_path / "x.parquet"), "--scheduler", "x"]) == 2


def test_a_cuda_fitted_extractor_runs_on_cpu_only_workers(client, images, extractor):
    """What can be tested of GPU workers without a GPU: an estimator fitted
    on CUDA (its device_ is cuda:0, each GPU worker's own GPU) still runs on
    workers without CUDA, on their CPU (with a warning there)."""
    import copy

    import torch

    from_gpu = copy.copy(extractor)  # (a pickled copy: no network_, tensors)
    from_gpu.device_ = torch.device("cuda", 0)
    lazy = from_gpu.transform(da.from_array(images, chunks=(8, 32, 32, 3)))
    assert_same_rows(lazy.compute(), extractor.transform(images))
