"""The ``sktransfer`` command: ``probe``, ``embed`` and ``demo``.

``sktransfer probe DIR``: which pretrained model, and which of its layers,
for a folder of labelled images (:func:`sktransfer.probe`).

``sktransfer embed DIR_OR_LIST -o OUT``: the embeddings of a folder or a
list of image files, to Parquet or ``.npy``.

This module is the parser and :func:`main`; the work of each command is in
``sktransfer._cli.<command>``, imported when that command runs.

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
import importlib
import os
import sys

from sktransfer._cli.common import UsageError

DEMO_DESCRIPTION = __doc__[__doc__.index("``sktransfer demo``") :].replace("``", "'")

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
  sktransfer probe photos/ --weights-dir ~/weights  # offline: checkpoints there
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


class _Help(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """Descriptions as written, and each option's default (when it has one
    worth showing)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


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
        help="also rank the recipe on the best model: FineTunedClassifier cut at "
        "each cut point (kept layers frozen) under a linear head and one hidden "
        "layer, then the best of these with its last 1 and 2 kept stages "
        "trainable",
    )
    p.add_argument(
        "--finetune-epochs",
        type=_positive_int,
        default=5,
        help="epochs of each fine-tuning",
    )
    p.add_argument(
        "--weights-dir",
        metavar="DIR",
        nargs="+",
        help="folder(s) of checkpoints at hand, named after their model "
        "(mobilenet_v2_imagenet.pth): a model with DEFAULT weights uses its own, "
        "offline (default: the folders in $SKTRANSFER_WEIGHTS)",
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="a persistent embedding cache ('none': no cache; default: in memory)",
    )
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
    t = p.add_argument_group(
        "texts",
        "DIR a CSV, TSV or Parquet file: rank language models x layers x "
        "poolings, word vectors and a tf-idf + logistic regression baseline "
        "(--models: hub ids or model folders; --layers: hidden states)",
    )
    t.add_argument("--text-column", metavar="COLUMN", help="the column of texts")
    t.add_argument("--label-column", metavar="COLUMN", help="the column of labels")
    t.add_argument(
        "--word-vectors",
        nargs="+",
        metavar="FILE",
        help="word-vectors files (GloVe, word2vec, fastText), one row each",
    )
    t.add_argument(
        "--poolings",
        nargs="+",
        default=["mean", "cls", "max"],
        choices=["mean", "cls", "max"],
        help="poolings of every hidden state",
    )
    t.add_argument(
        "--max-length", type=_positive_int, default=None, help="tokens per text"
    )

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
        "paths, one per line, each line verbatim (no comments; an empty line is "
        "an error)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="OUT.parquet (columns row, path, embedding, error; needs pyarrow), "
        "OUT.npy (with OUT.paths.txt beside it; read both back with "
        "sktransfer.read_embeddings), or a folder OUT (no suffix): "
        "a Parquet dataset, one file per partition",
    )
    p.add_argument(
        "--model",
        default=None,
        help="a torchvision model, or a timm one ('timm/<arch>.<tag>') "
        "(default: resnet50); for texts, a hub id or model folder (default: "
        "sentence-transformers/all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--layer",
        nargs="+",
        metavar="LAYER",
        help="cut point(s), concatenated (default: the final embedding)",
    )
    p.add_argument(
        "--pooling",
        default=None,
        choices=["avg", "max", "avgmax", "cls", "clsavg", "flatten", "mean"],
        help="how a layer's output becomes a vector (default: avg; for texts: "
        "mean, cls or max, default mean)",
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
    t = p.add_argument_group(
        "texts", "embed texts with a language model (--layer: hidden states)"
    )
    t.add_argument(
        "--texts",
        action="store_true",
        help="SOURCE is a text file of texts, one per line (an empty line is "
        "an empty text)",
    )
    t.add_argument(
        "--text-column",
        metavar="COLUMN",
        help="SOURCE is a CSV, TSV or Parquet file: embed this column",
    )
    t.add_argument(
        "--max-length", type=_positive_int, default=None, help="tokens per text"
    )

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
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return its
    exit status."""
    args = _parser().parse_args(argv)
    # (imported once the command line is parsed: the help needs none of them)
    from sklearn.utils._param_validation import InvalidParameterError

    from sktransfer.exceptions import LayerError, ProbeUsageError

    try:
        command = importlib.import_module(f"sktransfer._cli.{args.command}")
        return command.run(args)
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
