"""``sktransfer embed DIR_OR_LIST -o OUT``: the embeddings of a folder or a
list of image files, to Parquet or ``.npy``, or a Parquet dataset (on a Dask
cluster with ``--scheduler``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from sktransfer._cli.common import UsageError, none_or, preprocessing, progress
from sktransfer._common import require
from sktransfer._embed import embed_dataset, embed_files, paths_file
from sktransfer._extractor import PretrainedFeatureExtractor
from sktransfer._images.folders import list_images, read_list_file
from sktransfer._probe import parse_model


def run(args) -> int:
    """Embed the images of ``args.source`` (or texts) into ``args.output``."""
    if args.texts or args.text_column:
        from sktransfer._cli.text import run_embed

        return run_embed(args)
    if args.max_length is not None or args.pooling == "mean":
        raise UsageError("--max-length and --pooling mean are for texts (--texts "
                         "or --text-column).")  # fmt: skip
    args.model = args.model or "resnet50"
    args.pooling = args.pooling or "avg"
    say = progress(args.quiet)
    paths = _paths(args.source)
    model, _ = parse_model(args.model)  # usage errors before any work
    layer = [none_or(v) for v in args.layer] if args.layer else None
    output = Path(args.output)
    # a folder: no suffix, a trailing separator, or one that exists
    dataset = output.suffix == "" or args.output.endswith(os.sep) or output.is_dir()
    if args.scheduler and not dataset:
        raise UsageError(
            "--scheduler computes a dataset output (a folder: an output without a "
            "suffix), one file per partition."
        )
    # (absolute: "out.npy.partial" alone would be refused as a bare word)
    partial = output.absolute().with_name(output.name + ".partial")
    cache = None if args.cache == "none" else args.cache or str(partial)
    if dataset:  # (its partition files make it resumable)
        cache = None if args.cache in (None, "none") else args.cache
    if cache == str(partial) and partial.exists():
        say(f"resuming from {partial}/")
    extractor = PretrainedFeatureExtractor(
        model=model,
        weights=none_or(args.weights),
        layer=layer,
        pooling=args.pooling,
        preprocessing=preprocessing(args),
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        on_error=args.on_error,
        cache=cache,
        random_state=args.seed,
    )
    if dataset:
        _write_dataset(args, paths, output, extractor, say)
        return 0
    with contextlib.redirect_stdout(sys.stderr):  # (torch.hub prints)
        errors = embed_files(
            paths, output, extractor, chunk_size=args.chunk_size, verbose=not args.quiet
        )
    if cache == str(partial):
        shutil.rmtree(partial, ignore_errors=True)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    extra = f" and its paths to {paths_file(output)}" if output.suffix == ".npy" else ""
    say(
        f"{len(paths)} rows of {extractor.n_features_out_} features written to "
        f"{output}{extra} ({len(errors)} unreadable images)"
    )
    return 0


def _paths(source) -> list[str]:
    """The images of a folder (sorted, subfolders included), or the paths
    listed in a text file, one per line, verbatim (``read_list_file``)."""
    path = Path(source)
    if path.is_dir():
        return list(list_images(path))
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        raise UsageError(
            f"{source!r} is a {path.suffix[1:].upper()} file; embed takes a folder, "
            "or a text file of image paths, one per line, each line verbatim (no "
            "header, no other columns). Write the path column to a text file and "
            "give that (its rows come out in its order)."
        )
    if path.is_file():
        return read_list_file(path)
    raise FileNotFoundError(f"{source!r} is neither a folder nor a file.")


def _write_dataset(args, paths, output, extractor, say) -> None:
    """A Parquet dataset, one file per partition (on ``--scheduler``'s
    cluster when given)."""
    with contextlib.redirect_stdout(sys.stderr), _dask_client(args.scheduler):
        done = embed_dataset(
            paths,
            output,
            extractor,
            partition_size=args.partition_size,
            verbose=not args.quiet,
        )
    say(
        f"{len(paths)} rows of {extractor.n_features_out_} features in "
        f"{done['partitions']} files in {output}/: {done['written']} written, "
        f"{done['skipped']} there already ({done['unreadable']} unreadable "
        "images in those written)"
    )


@contextlib.contextmanager
def _dask_client(address):
    """A Dask client of the scheduler at ``address`` while the job runs
    (nothing without an address)."""
    if not address:
        yield None
        return
    distributed = require("distributed", "dask", "--scheduler")
    with distributed.Client(address) as client:
        yield client
