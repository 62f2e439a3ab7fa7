"""``sktransfer probe DIR``: :func:`sktransfer.probe` on a folder of labelled
images, its ranking to stdout (or JSON), a report, and the winner fitted and
saved."""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections import Counter

import numpy as np

from sktransfer._cli.common import (
    UsageError,
    none_or,
    note,
    preprocessing,
    print_ranking,
    progress,
)
from sktransfer._common import require
from sktransfer._images.folders import load_image_folder
from sktransfer._probe import DEFAULT_MODELS, parse_model, probe
from sktransfer._share import save


def run(args) -> int:
    """Probe the images of ``args.dir`` (or the texts of a table); print the
    ranking."""
    from sktransfer._cli.text import run_probe, wants_text

    if wants_text(args):
        return run_probe(args)
    say = progress(args.quiet)
    if args.save is not None and not args.save.endswith((".joblib", ".pkl")):
        require("skops.io", "share", "--save in the safe format")  # before the work
    if args.report is not None:
        require("matplotlib", "report", "--report")
    X, y = read_labels(args.dir, args.labels)
    say(f"{len(X)} images in {len(set(y.tolist()))} classes, from {args.dir}:")
    say(_class_counts(y))
    models = args.models or DEFAULT_MODELS
    layers = _layers_argument(args.layers, models)
    # stdout is for results: what libraries print there (torch.hub's
    # "Downloading: ...") goes to stderr with the progress.
    with contextlib.redirect_stdout(sys.stderr):
        result = _probe_result(args, X, y, models, layers)
    _print_ranking(args, result, say)
    if args.report is not None:
        path = result.write_report(args.report, _data_code(args, X, result))
        say(f"report written to {path} (plot: {path.parent / 'probe.png'})")
    if args.save is not None:
        _save_winner(args, result, X, y, say)
    return 0


def read_labels(folder, labels_csv):
    """Paths and labels: from a ``path,label`` CSV (paths relative to
    ``folder``), or from ``folder``'s class folders."""
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
    # (a short row gives None; an empty cell "")
    blank = [i for i, (path, label) in enumerate(rows) if not path or not label]
    if blank:
        lines = ", ".join(str(i + 2) for i in blank[:10])  # (+1: header, from 1)
        raise UsageError(
            f"The labels file {labels_csv!r} has {len(blank)} row(s) without a "
            f"path or a label (line(s) {lines}{', ...' if len(blank) > 10 else ''}"
            "). Give every row both, or remove the rows."
        )
    # (joined as the report's code joins them)
    X = np.asarray([os.path.join(folder, path) for path, _ in rows], dtype=object)
    return X, np.asarray([label for _, label in rows])


def _class_counts(y, shown=20) -> str:
    """The classes and their images, most first (the first ``shown``)."""
    counts = sorted(Counter(y.tolist()).items(), key=lambda kv: (-kv[1], str(kv[0])))
    text = ", ".join(f"{label} {count}" for label, count in counts[:shown])
    more = f", ... ({len(counts) - shown} more classes)" if len(counts) > shown else ""
    return f"  {text}{more}"


def _layers_argument(values, models):
    """``--layers``: LAYER for every model, MODEL:LAYER for one."""
    if values is None:
        return "stages"
    every = [none_or(v) for v in values if ":" not in v]
    own: dict = {}
    for value in values:
        if ":" in value:
            model, _, layer = value.rpartition(":")  # (layers have no ':')
            own.setdefault(model, []).append(none_or(layer))
    if not own:
        return every
    names = [parse_model(m)[0] for m in models]
    return {**{name: every or "stages" for name in names}, **own}


def _probe_result(args, X, y, models, layers):
    return probe(
        X,
        y,
        models=models,
        weights=args.weights,
        weights_dir=args.weights_dir,
        layers=layers,
        cv=args.cv,
        finetune=args.finetune,
        finetune_epochs=args.finetune_epochs,
        preprocessing=preprocessing(args),
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        cache=_cache_argument(args.cache),
        n_jobs=args.n_jobs,
        random_state=args.seed,
        verbose=not args.quiet,
        log=note,
    )


def _cache_argument(value):
    """``--cache``: a folder, 'none' (no cache: each model's pass is kept in
    memory only for its own cut points), or the default, in memory."""
    if value is None:
        return "memory"
    return None if value.lower() == "none" else value


def _print_ranking(args, result, say) -> None:
    """The table to stdout (or the JSON, with ``--json -``), and where the
    time went."""
    print_ranking(args, result, say)
    networks = sum(run["seconds"] for run in result.runs)
    say(
        f"time: networks {networks:.1f} s (each image once per model: "
        + ", ".join(f"{r['model']} {r['network_images']}" for r in result.runs)
        + f" images), linear probes {result.classifier_seconds:.1f} s"
    )


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
    best = result.best
    metrics = (
        f"sktransfer probe: {result.cv}-fold CV accuracy "
        f"{best['cv_accuracy']:.3f} +- {best['cv_std']:.3f}\n\n{result.table()}"
    )
    path = save(pipeline, args.save, metrics=metrics)
    say(f"{done} {path} (load it with sktransfer.load({args.save!r}))")


def _quiet_params(result) -> dict:
    """The parameter that silences the winning pipeline's progress bars."""
    fine_tuned = result.best["method"] == "fine-tuned"
    return {"verbose" if fine_tuned else "pretrainedfeatureextractor__verbose": False}
