"""The ``sktransfer`` command: ``probe``, ``embed`` and ``demo``.

``sktransfer probe DIR``: which pretrained model, and which of its layers,
for a folder of labelled images (:func:`sktransfer.probe`).

``sktransfer embed DIR_OR_LIST -o OUT``: the embeddings of a folder or a
list of image files, to Parquet or ``.npy``.

``sktransfer demo``: the two ways of transfer on scikit-learn's bundled digits
(no download). The target task is digits 5-9 with a handful of labels per
class; the digits are placed at random in a 12x12 canvas, since real objects
are rarely centred. It compares, on the same held-out images:

- logistic regression on the raw pixels;
- a network trained from scratch on the few labels;
- *develop, then reuse*: a source model trained on digits 0-4 (plenty of
  labels), reused frozen as a feature extractor, with the cut point chosen by
  a grid search on the few labels;
- a pretrained ImageNet network, frozen, likewise, when its weights are at
  hand (a checkpoint, or the torch cache); skipped, and said so, otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from sktransfer._common import require
from sktransfer._sources import weights_at_hand
from sktransfer.exceptions import WeightsUnavailableError

DEMO_DESCRIPTION = __doc__[__doc__.index("``sktransfer demo``") :].replace("``", "'")

PRETRAINED_LAYERS = {
    "mobilenet_v2": ["features.3", "features.6", "features.10", "features.13", None],
    "resnet18": ["layer1", "layer2", "layer3", None],
    "resnet50": ["layer1", "layer2", "layer3", None],
}
SOURCE_MODEL = "resnet18"
SOURCE_LAYERS = ["layer1", "layer2", "layer3", None]
CANVAS = 12
# The digits are grayscale ink on black: one channel, centred on 0.
SOURCE_PREPROCESSING = {
    "resize_size": 32,
    "crop_size": 32,
    "mean": (0.5,),
    "std": (0.5,),
}


def shifted_digits(limit=None, seed=0):
    """scikit-learn's 8x8 digits as uint8 images, each at a random place in a
    12x12 canvas; and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:limit]
    rng = np.random.default_rng(seed)
    canvas = np.zeros((len(images), CANVAS, CANVAS), np.uint8)
    for image, place in zip(images, canvas, strict=True):
        top, left = rng.integers(0, CANVAS - 8 + 1, 2)
        place[top : top + 8, left : left + 8] = image
    return canvas, digits.target[:limit]


def split(y, labels_per_class, seed=0):
    """Source rows (classes 0-4), and target train/test rows (classes 5-9,
    ``labels_per_class`` of each class for training)."""
    rng = np.random.default_rng(seed)
    source = np.flatnonzero(y < 5)
    target = np.flatnonzero(y >= 5)
    train = np.concatenate(
        [
            rng.choice(target[y[target] == c], labels_per_class, replace=False)
            for c in range(5, 10)
        ]
    )
    return source, np.sort(train), np.setdiff1d(target, train)


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _reuse(extractor, layers, X, y, train, test, cv):
    """Grid search of the cut point (and C) on the training labels; the
    per-layer CV scores and the test accuracy of the chosen pipeline."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    extractor.set_params(cache_layers=layers)  # one pass for the whole grid
    search = GridSearchCV(
        make_pipeline(extractor, _probe()),
        {
            "pretrainedfeatureextractor__layer": layers,
            "pipeline__logisticregression__C": [0.1, 1.0],
        },
        cv=cv,
    ).fit(X[train], y[train])
    per_layer: dict[str, float] = {}
    for params, score in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        name = str(params["pretrainedfeatureextractor__layer"])
        per_layer[name] = max(per_layer.get(name, 0.0), score)
    layer = search.best_params_["pretrainedfeatureextractor__layer"]
    return layer, per_layer, search.score(X[test], y[test])


def _pretrained(args, X):
    from sktransfer import PretrainedFeatureExtractor

    if args.weights.lower() == "none":
        print("\n(The pretrained path is skipped: --weights none.)")
        return None
    extractor = PretrainedFeatureExtractor(
        model=args.model,
        weights=args.weights,
        preprocessing={"resize_size": args.size, "crop_size": args.size},
        batch_size=args.batch_size,
        verbose=not args.quiet,
    )
    try:
        return extractor.fit(X[:1])
    except WeightsUnavailableError as exc:
        at_hand = weights_at_hand(args.model)
        if args.weights == "DEFAULT" and at_hand:
            # DEFAULT names the newest weights; an older ImageNet set in the
            # cache is still ImageNet weights: use it, and say which.
            print(
                f"\nThe DEFAULT {args.model} weights are not in the torch cache and "
                f"cannot be downloaded; using {at_hand[0]}, the ImageNet weights "
                "at hand."
            )
            return extractor.set_params(weights=at_hand[0]).fit(X[:1])
        print(
            f"\n!! The pretrained path is SKIPPED: no {args.model} weights here "
            f"({exc}).\n!! Pass --weights PATH to a checkpoint, or run once online."
        )
        return None


def _row(name, choice, accuracy):
    print(f"{name:<46}{choice:<16}{accuracy}")


def demo(args) -> int:
    from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

    start = time.perf_counter()
    X, y = shifted_digits(args.limit)
    source, train, test = split(y, args.labels)
    cv = min(args.cv, args.labels)
    print(
        "sktransfer demo: transfer learning on scikit-learn's digits, each placed "
        f"at random in a {CANVAS}x{CANVAS} canvas\n"
        f"source task: digits 0-4, {len(source)} labelled images\n"
        f"target task: digits 5-9, {args.labels} labelled images per class "
        f"({len(train)}), tested on the other {len(test)}\n"
    )
    common = dict(
        model=SOURCE_MODEL,
        weights=None,
        trainable_layers="all",
        preprocessing=SOURCE_PREPROCESSING,
        learning_rate=3e-3,
        random_state=0,
        verbose=not args.quiet,
    )
    print(f"Developing the source model ({SOURCE_MODEL} from scratch on 0-4)...")
    developed = FineTunedClassifier(
        **common, max_epochs=args.source_epochs, batch_size=64
    ).fit(X[source], y[source])
    print("Training from scratch on the target labels...")
    scratch = FineTunedClassifier(
        **common, max_epochs=args.scratch_epochs, batch_size=16
    ).fit(X[train], y[train])
    print("Grid searches over cut points...")
    raw = _probe().fit(X[train].reshape(len(train), -1), y[train])
    reused = PretrainedFeatureExtractor(model=developed, verbose=False)
    reuse = _reuse(reused, SOURCE_LAYERS, X, y, train, test, cv)
    pretrained = _pretrained(args, X)
    imagenet = None
    if pretrained is not None:
        layers = PRETRAINED_LAYERS.get(args.model, [None])
        imagenet = _reuse(pretrained, layers, X, y, train, test, cv)

    header = "method (target task: digits 5-9)"
    print(f"\n{header:<46}{'cut point (CV)':<16}test accuracy")
    print("-" * 75)
    raw_acc = raw.score(X[test].reshape(len(test), -1), y[test])
    _row("raw pixels + logistic regression", "-", f"{raw_acc:.3f}")
    _row(
        f"{SOURCE_MODEL} trained from scratch on the labels",
        "-",
        f"{scratch.score(X[test], y[test]):.3f}",
    )
    _row("source model (0-4), frozen + logistic reg.", str(reuse[0]), f"{reuse[2]:.3f}")
    name = f"ImageNet {args.model}, frozen + logistic reg."
    if imagenet is not None:
        _row(name, str(imagenet[0]), f"{imagenet[2]:.3f}")
    else:
        _row(name, "skipped", "no weights")
    print(
        f"\ncut points of the source model, {cv}-fold CV accuracy on the "
        f"{len(train)} labels: "
        + ", ".join(f"{k} {v:.2f}" for k, v in reuse[1].items())
    )
    if imagenet is not None:
        print(f"weights of the ImageNet model: {pretrained.weights_}")
        print(
            f"cut points of {args.model}, {cv}-fold CV accuracy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in imagenet[1].items())
        )
    import torch

    from sktransfer._identity import cpu_model

    print(
        f"\nwhole demo: {time.perf_counter() - start:.0f} s on {cpu_model()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        "float32.\nThe table is reproducible on this machine; another CPU can "
        "give slightly different digits (the training rounds differently)."
    )
    return 0


DESCRIPTION = """\
sktransfer: transfer learning from pretrained image models, as scikit-learn
estimators. Everything the command does can be done in Python with
PretrainedFeatureExtractor, FineTunedClassifier and sktransfer.probe.

commands:
  probe  which pretrained model, and which of its layers, for a folder of
         labelled images: a linear probe scored by cross-validation on every
         cut point of several models, ranked
  embed  the embeddings of a folder or list of images, to Parquet or .npy
  demo   transfer learning on scikit-learn's digits, offline: raw pixels, a
         network trained from scratch, a source model developed on digits 0-4
         and reused frozen, and a frozen ImageNet model, each with its cut
         point chosen by a grid search (about a minute on 2 CPU cores)

Results go to stdout; progress and notes to stderr. Exit status: 0 on
success, 1 on a failure (unreadable data, weights that cannot be had), 2 on
a usage error.
"""

PROBE_EPILOG = """\
examples:
  sktransfer probe photos/                      # photos/<class>/<image>
  sktransfer probe photos/ --labels labels.csv  # columns path,label
  sktransfer probe photos/ --models resnet50 mobilenet_v2:IMAGENET1K_V1 \\
      --report report/ --json ranking.json --save best/
  sktransfer probe photos/ --models resnet18 --weights ./resnet18.pth \\
      --layers layer2 layer3 None --cv 10
  sktransfer probe photos/ --models resnet50 mobilenet_v2 \\
      --layers resnet50:layer3 resnet50:None mobilenet_v2:features.13

Each image goes through each model's network once, all its cut points tapped
in that pass; with --cache DIR a second probe of the same images reuses them.
"""

EMBED_EPILOG = """\
examples:
  sktransfer embed photos/ -o photos.parquet
  sktransfer embed files.txt -o emb.npy --model resnet18 --layer layer3
  sktransfer embed photos/ -o emb.parquet --on-error nan --cache ~/.emb-cache
  sktransfer embed files.txt -o emb/ --on-error nan --scheduler tcp://head:8786

The rows are in the order of the list (a folder: its files sorted, subfolders
included). An interrupted job resumes from its cache: OUT.partial/ beside the
output (removed once the output is written) unless --cache names one.
An output without a suffix (or an existing folder) is a Parquet dataset, one file
per --partition-size rows, each written whole or not at all; a re-run writes
only the missing ones. With --scheduler, the partitions are computed on that
Dask cluster (needs sktransfer[dask]); the folder must be on storage every
worker can write.
"""


class UsageError(ValueError):
    """A command line that cannot be run as given (exit status 2)."""


class _Help(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """Descriptions as written, and each option's default (when it has one
    worth showing)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _stderr(quiet):
    def say(message):
        if not quiet:
            print(message, file=sys.stderr)

    return say


def _note(message):
    print(f"note: {message}", file=sys.stderr)


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _none_or(text: str):
    """None for the word 'none' (any case), else the text."""
    return None if text.lower() == "none" else text


def _preprocessing(args):
    if args.size is None:
        return "auto"
    return {"resize_size": args.size, "crop_size": args.size}


def read_labels(folder, labels_csv):
    """Paths and labels: from a ``path,label`` CSV (paths relative to
    ``folder``), or from ``folder``'s class folders."""
    import csv

    from sktransfer import load_image_folder

    if labels_csv is None:
        return load_image_folder(folder)
    with open(labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise UsageError(
                f"The labels file {labels_csv!r} lacks the column(s) "
                f"{', '.join(sorted(missing))}: it needs a header with 'path' and "
                f"'label'. It has: {reader.fieldnames}."
            )
        rows = [(r["path"], r["label"]) for r in reader]
    if not rows:
        raise UsageError(f"The labels file {labels_csv!r} has no rows.")
    # (joined as the report's code joins them)
    X = np.asarray([os.path.join(folder, path) for path, _ in rows], dtype=object)
    return X, np.asarray([label for _, label in rows])


def probe_command(args) -> int:
    from sktransfer._probe import DEFAULT_MODELS

    say = _stderr(args.quiet)
    if args.save is not None and not args.save.endswith((".joblib", ".pkl")):
        require("skops.io", "share", "--save in the safe format")  # before the work
    if args.report is not None:
        require("matplotlib", "report", "--report")
    X, y = read_labels(args.dir, args.labels)
    say(f"{len(X)} images in {len(set(y.tolist()))} classes, from {args.dir}")
    models = args.models or DEFAULT_MODELS
    layers = _layers_argument(args.layers, models)
    # stdout is for results: what libraries print there (torch.hub's
    # "Downloading: ...") goes to stderr with the progress.
    with contextlib.redirect_stdout(sys.stderr):
        result = _probe_run(args, X, y, models, layers)
    table = result.table()
    if args.json == "-":
        print(result.to_json())
        say(table)
    else:
        print(table)
        if args.json is not None:
            with open(args.json, "w") as f:
                f.write(result.to_json() + "\n")
            say(f"ranking written to {args.json}")
    networks = sum(run["seconds"] for run in result.runs)
    say(
        f"time: networks {networks:.1f} s (each image once per model: "
        + ", ".join(f"{r['model']} {r['network_images']}" for r in result.runs)
        + f" images), linear probes {result.classifier_seconds:.1f} s"
    )
    if args.report is not None:
        path = result.write_report(args.report, _data_code(args, X, result))
        say(f"report written to {path} (plot: {path.parent / 'probe.png'})")
    if args.save is not None:
        _save_winner(args, result, X, y, say)
    return 0


def _save_winner(args, result, X, y, say) -> None:
    """Fit the winner on all readable images; save it in the safe format
    (a folder or ``.skops`` file, with a card holding the ranking), or with
    joblib for a ``.joblib`` / ``.pkl`` path."""
    pipeline = result.best_pipeline().set_params(**_quiet_params(result))
    keep = np.setdiff1d(np.arange(len(y)), result.unreadable)
    with contextlib.redirect_stdout(sys.stderr):
        pipeline.fit(X[keep], y[keep])
    done = f"winning pipeline fitted on all {len(keep)} images and saved to"
    if args.save.endswith((".joblib", ".pkl")):
        import joblib

        joblib.dump(pipeline, args.save)
        say(
            f"{done} {args.save} with joblib: a pickle, which runs code when "
            "loaded; load it only from a source you trust (without the .joblib "
            "suffix it is saved with sktransfer.save, which needs no pickle)."
        )
        return
    from sktransfer import save

    best = result.best
    metrics = (
        f"sktransfer probe: {result.cv}-fold CV accuracy "
        f"{best['cv_accuracy']:.3f} +- {best['cv_std']:.3f}\n\n{result.table()}"
    )
    path = save(pipeline, args.save, metrics=metrics)
    say(f"{done} {path} (load it with sktransfer.load({args.save!r}))")


def _layers_argument(values, models):
    """``--layers``: LAYER for every model, MODEL:LAYER for one."""
    if values is None:
        return "stages"
    every = [_none_or(v) for v in values if ":" not in v]
    own: dict = {}
    for value in values:
        if ":" in value:
            model, _, layer = value.rpartition(":")  # (layers have no ':')
            own.setdefault(model, []).append(_none_or(layer))
    if not own:
        return every
    from sktransfer._probe import parse_model

    names = [parse_model(m)[0] for m in models]
    return {**{name: every or "stages" for name in names}, **own}


def _data_code(args, X, result) -> str:
    """Python that loads the probe's images and labels, less those that
    could not be read."""
    if args.labels is None:
        code = (
            "from sktransfer import load_image_folder\n\n"
            f"X, y = load_image_folder({args.dir!r})"
        )
    else:
        code = (
            "import csv\nimport os\n\n"
            f"with open({args.labels!r}, newline='') as f:\n"
            "    rows = list(csv.DictReader(f))\n"
            f"X = [os.path.join({args.dir!r}, row['path']) for row in rows]\n"
            "y = [row['label'] for row in rows]"
        )
    if result.unreadable:
        left_out = sorted(str(X[i]) for i in result.unreadable)
        code += (
            f"\nleft_out = {left_out!r}  # could not be read\n"
            "X, y = map(list, zip(*[(x, t) for x, t in zip(X, y) "
            "if x not in left_out]))"
        )
    return code


def _probe_run(args, X, y, models, layers):
    from sktransfer._probe import probe

    return probe(
        X,
        y,
        models=models,
        weights=args.weights,
        layers=layers,
        cv=args.cv,
        finetune=args.finetune,
        finetune_epochs=args.finetune_epochs,
        preprocessing=_preprocessing(args),
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        cache=args.cache or "memory",
        n_jobs=args.n_jobs,
        random_state=args.seed,
        verbose=not args.quiet,
        log=_note,
    )


def _quiet_params(result) -> dict:
    fine_tuned = result.best["method"] == "fine-tuned"
    return {"verbose" if fine_tuned else "pretrainedfeatureextractor__verbose": False}


def embed_command(args) -> int:
    import shutil
    from pathlib import Path

    from sktransfer import PretrainedFeatureExtractor, list_images
    from sktransfer._embed import embed_dataset, embed_files, paths_file
    from sktransfer._probe import parse_model

    say = _stderr(args.quiet)
    source = Path(args.source)
    if source.is_dir():
        paths = list(list_images(source))
    elif source.is_file():
        lines = source.read_text().splitlines()
        paths = [p for p in (line.strip() for line in lines) if p and p[0] != "#"]
    else:
        raise FileNotFoundError(f"{args.source!r} is neither a folder nor a file.")
    model, _ = parse_model(args.model)  # usage errors before any work
    layer = [_none_or(v) for v in args.layer] if args.layer else None
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
        weights=_none_or(args.weights),
        layer=layer,
        pooling=args.pooling,
        preprocessing=_preprocessing(args),
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        on_error=args.on_error,
        cache=cache,
        random_state=args.seed,
    )
    if dataset:
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


def _add_engine_options(p, batch_size=64, int8=False):
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="weights: 'DEFAULT' (published, from the torch cache or downloaded), "
        "a weights name, a checkpoint file, or 'none' (random, seeded by --seed)",
    )
    p.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="resize and crop the images to this side (default: the weights' own "
        "preprocessing, e.g. 224)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=batch_size,
        help="images per forward pass",
    )
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1'...")
    precisions, note = ["auto", "float32", "bfloat16", "float16"], ""
    if int8:
        precisions.append("int8")
        note = "; 'int8': on the CPU, calibrated on the images, sktransfer[int8]"
    p.add_argument(
        "--precision",
        default="auto",
        choices=precisions,
        help=f"compute precision ('auto': float32 on CPUs, bfloat16 on GPUs{note})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds random weights (and folds)"
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or progress messages (notes on skipped models "
        "or images still go to stderr)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sktransfer",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser(
        "probe",
        help="which model and which layer, for a folder of labelled images",
        description="Rank pretrained models and their cut points for your images\n"
        "by the cross-validated accuracy of a linear probe (StandardScaler +\n"
        "LogisticRegression), on the same stratified folds for every row.",
        epilog=PROBE_EPILOG,
        formatter_class=_Help,
    )
    p.add_argument("dir", help="a folder with one subfolder of images per class")
    p.add_argument(
        "--labels",
        metavar="FILE.csv",
        help="a CSV with 'path' and 'label' columns instead of class folders "
        "(paths relative to DIR)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL[:WEIGHTS]",
        help="torchvision or timm ('timm/<arch>.<tag>') models, each optionally "
        "with its weights (default: "
        "convnext_tiny resnet50 efficientnet_b0 mobilenet_v2, those whose "
        "weights can be had)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="cut points: LAYER for every model, MODEL:LAYER for one ('None': the "
        "final embedding; default: each model's stage boundaries and its final "
        "embedding)",
    )
    p.add_argument("--cv", type=int, default=5, help="cross-validation folds (>= 2)")
    p.add_argument(
        "--finetune",
        action="store_true",
        help="also score FineTunedClassifier (trainable_layers 0, 1, 2) on the "
        "best model",
    )
    p.add_argument(
        "--finetune-epochs",
        type=_positive_int,
        default=5,
        help="epochs of each fine-tuning",
    )
    p.add_argument("--cache", metavar="DIR", help="a persistent embedding cache")
    p.add_argument("--n-jobs", type=int, default=None, help="jobs of the probes")
    p.add_argument("--json", metavar="FILE", help="write the ranking ('-': stdout)")
    p.add_argument("--report", metavar="DIR", help="write a plot and a Markdown report")
    p.add_argument(
        "--save",
        metavar="PATH",
        help="fit the winner on all images and save it: a folder or .skops file "
        "(sktransfer.save, with a model card; needs sktransfer[share]), or a "
        ".joblib file (a pickle)",
    )
    _add_engine_options(p)
    p.set_defaults(run=probe_command)

    p = sub.add_parser(
        "embed",
        help="embeddings of a folder or list of images, to Parquet or .npy",
        description="Embed images with a frozen pretrained model and write one\n"
        "row per image, with its path.",
        epilog=EMBED_EPILOG,
        formatter_class=_Help,
    )
    p.add_argument(
        "source",
        metavar="DIR_OR_LIST",
        help="a folder (its images, subfolders included) or a text file of "
        "paths, one per line",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="OUT.parquet (columns row, path, embedding, error; needs pyarrow), "
        "OUT.npy (with OUT.paths.txt beside it), or a folder OUT (no suffix): "
        "a Parquet dataset, one file per partition",
    )
    p.add_argument(
        "--model",
        default="resnet50",
        help="a torchvision model, or a timm one ('timm/<arch>.<tag>')",
    )
    p.add_argument(
        "--layer",
        nargs="+",
        metavar="LAYER",
        help="cut point(s), concatenated (default: the final embedding)",
    )
    p.add_argument(
        "--pooling",
        default="avg",
        choices=["avg", "max", "avgmax", "cls", "clsavg", "flatten"],
        help="how a layer's output becomes a vector",
    )
    p.add_argument(
        "--on-error",
        default="raise",
        choices=["raise", "nan"],
        help="an unreadable image stops the job, or gives an empty row",
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="embedding cache ('none' for no cache; default: OUT.partial/, "
        "removed when done)",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=1024,
        help="images per step: the most an interruption loses",
    )
    p.add_argument(
        "--partition-size",
        type=_positive_int,
        default=1000,
        help="a dataset output's rows per file (and per task)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a Dask scheduler's address (tcp://host:8786): compute a dataset "
        "output's partitions on its cluster",
    )
    _add_engine_options(p, int8=True)
    p.set_defaults(run=embed_command)

    p = sub.add_parser(
        "demo",
        help="transfer learning on scikit-learn's digits (offline)",
        description=DEMO_DESCRIPTION,
        formatter_class=_Help,
    )
    p.add_argument(
        "--model",
        default="mobilenet_v2",
        help="the pretrained torchvision model of the ImageNet row",
    )
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="its weights: 'DEFAULT' (else any ImageNet weights in the torch "
        "cache), a weights name, a checkpoint path, or 'none' to skip the row",
    )
    p.add_argument(
        "--size", type=int, default=64, help="input side of the pretrained model"
    )
    p.add_argument(
        "--labels", type=int, default=10, help="labelled target images per class"
    )
    p.add_argument(
        "--cv", type=int, default=5, help="cross-validation folds of the searches"
    )
    p.add_argument(
        "--source-epochs",
        type=int,
        default=10,
        help="epochs of the source model (digits 0-4)",
    )
    p.add_argument(
        "--scratch-epochs",
        type=int,
        default=30,
        help="epochs of the network trained from scratch on the target labels",
    )
    p.add_argument(
        "--batch-size", type=int, default=128, help="images per forward pass"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="use only the first N digits"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=demo)
    return parser


def main(argv=None) -> int:
    from sklearn.utils._param_validation import InvalidParameterError

    from sktransfer._probe import ProbeUsageError
    from sktransfer._runtime.layers import LayerError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # stdout closed early (| head): not a failure
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (UsageError, ProbeUsageError, LayerError, InvalidParameterError) as exc:
        print(f"sktransfer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        # ImageReadError and WeightsUnavailableError are OSErrors
        print(f"sktransfer {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sktransfer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
