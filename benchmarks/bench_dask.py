"""Embedding 2,000 files in-process and on a Dask LocalCluster of 1 and 2
workers: the overhead of Dask, and the scaling from 1 to 2 workers.

Data: ``--n`` JPEG files of 256x256 (smooth random colours, written to a
temporary folder once; content does not change the time). Model:
``--model`` (default ResNet-18) with random weights (``weights=None``,
seeded), its default preprocessing (224x224), float32, no cache.

- ``in-process``: ``PretrainedFeatureExtractor.transform(paths)``, torch on
  all the machine's threads.
- ``1 worker``: a ``LocalCluster`` of one worker process (one Dask thread)
  whose torch uses as many threads as in-process.
- ``2 workers``: two worker processes, one Dask thread and one torch thread
  each: the machine's cores shared out, not oversubscribed.
- ``processes=False``: one worker as a thread of this process, which tells
  Dask's own machinery (scheduler, tasks, transfers) from the worker
  process.

The torch threads of each worker are set with ``torch.set_num_threads``
(``client.run``) before anything runs there.

On a cluster the input is a ``dask.bag`` of the paths in ``--partitions``
partitions, and ``transform`` returns a lazy array that is computed. Each
cluster first computes a small bag to start its workers and build their
networks (a one-off cost, reported apart), then the timed run. Each timing
is the best of ``--repeats``.

Run: ``.venv/bin/python benchmarks/bench_dask.py [--n 2000]``; needs
``sktransfer[dask]``.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_files(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((256, 256), Image.BILINEAR)
        paths.append(str(folder / f"{i:05d}.jpg"))
        image.save(paths[-1], quality=90)
    return paths


def make_extractor(model):
    from sktransfer import PretrainedFeatureExtractor

    return PretrainedFeatureExtractor(
        model=model,
        weights=None,
        random_state=0,
        precision="float32",
        cache=None,
        verbose=False,
    )


def best_of(repeats, run):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def on_cluster(
    n_workers, torch_threads, paths, extractor, partitions, repeats, processes=True
):
    import dask.bag as db
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=processes,
        dashboard_address=None,
    )
    with cluster, Client(cluster) as client:
        client.run(torch.set_num_threads, torch_threads)
        start = time.perf_counter()
        warm = db.from_sequence(paths[: 4 * n_workers], npartitions=n_workers)
        extractor.transform(warm).compute()
        startup = time.perf_counter() - start
        seen = sorted(client.run(torch.get_num_threads).values())
        bag = db.from_sequence(paths, npartitions=partitions)
        seconds = best_of(repeats, lambda: extractor.transform(bag).compute())
    return len(paths) / seconds, startup, seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import dask

    from sktransfer._identity import cpu_model

    threads = torch.get_num_threads()
    print(
        f"# {time.strftime('%Y-%m-%d')} | CPU {cpu_model()} | {threads} threads "
        f"| torch {torch.__version__} | dask {dask.__version__} | python "
        f"{sys.version.split()[0]} | {args.n} JPEG files 256x256 | {args.model}, "
        "float32, 224x224"
    )
    with tempfile.TemporaryDirectory() as folder:
        paths = write_files(Path(folder), args.n)
        extractor = make_extractor(args.model).fit(paths[:1])
        extractor.transform(paths[:16])  # warm up
        local = args.n / best_of(args.repeats, lambda: extractor.transform(paths))
        one, start_one, threads_one = on_cluster(
            1, threads, paths, extractor, args.partitions, args.repeats
        )
        two, start_two, threads_two = on_cluster(
            2, 1, paths, extractor, args.partitions, args.repeats
        )
        inproc, start_inproc, _ = on_cluster(
            1, threads, paths, extractor, args.partitions, args.repeats, False
        )
    print("| run | torch threads per worker | img/s | vs in-process | startup, s |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| in-process | {threads} | {local:.1f} | 1.00x | |")
    print(
        f"| LocalCluster, 1 worker | {threads_one} | {one:.1f} | "
        f"{one / local:.2f}x | {start_one:.1f} |"
    )
    print(
        f"| LocalCluster, 2 workers | {threads_two} | {two:.1f} | "
        f"{two / local:.2f}x | {start_two:.1f} |"
    )
    print(
        f"| LocalCluster(processes=False), 1 worker thread | {threads} | "
        f"{inproc:.1f} | {inproc / local:.2f}x | {start_inproc:.1f} |"
    )
    print(f"Dask's overhead on one worker: {1 - one / local:.1%}")
    print(f"... on one worker thread in this process: {1 - inproc / local:.1%}")
    print(f"scaling from 1 to 2 workers: {two / one:.2f}x")


if __name__ == "__main__":
    main()
