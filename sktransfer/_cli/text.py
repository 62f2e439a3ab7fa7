"""``sktransfer probe TABLE --text-column C --label-column L``: the text
probe (:func:`sktransfer.probe_texts`) on a CSV, TSV or Parquet file."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from sktransfer._cli.common import UsageError, note, progress
from sktransfer._common import require

#: The table formats, by suffix.
TABLES = (".csv", ".tsv", ".parquet")


def wants_text(args) -> bool:
    """Whether ``sktransfer probe`` was given a table of texts."""
    return bool(args.text_column) or Path(args.dir).suffix.lower() in TABLES


def read_table(path, text_column, label_column):
    """The texts and labels of a CSV/TSV/Parquet file, every row kept in
    order; a clear error naming a missing column, an empty label or a
    non-text value (with its row)."""
    pd = require("pandas", "text", "Reading a table of texts")
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UsageError(f"{str(path)!r} is not a file.")
    if suffix == ".parquet":
        table = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        # (as strings: a label "01" stays "01"; an empty cell is NaN)
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                            na_values=[""])  # fmt: skip
    else:
        raise UsageError(
            f"{str(path)!r}: a table of texts must be {', '.join(TABLES)}."
        )
    for option, column in (("--text-column", text_column),
                           ("--label-column", label_column)):  # fmt: skip
        if column is None:
            raise UsageError(f"A table of texts needs {option} (its columns: "
                             f"{list(table.columns)}).")  # fmt: skip
        if column not in table.columns:
            raise UsageError(
                f"{str(path)!r} has no column {column!r} ({option}); its "
                f"columns: {list(table.columns)}."
            )
    if table.empty:
        raise UsageError(f"{str(path)!r} has no rows.")
    texts, labels = table[text_column], table[label_column]
    for i, value in enumerate(texts):
        if not isinstance(value, str):
            raise UsageError(
                f"Row {i} of column {text_column!r} is not a text: "
                f"{value!r:.60} ({type(value).__name__}). Fill or drop it; "
                "is --text-column the column of the texts?"
            )
    missing = np.flatnonzero(labels.isna().to_numpy())
    if len(missing):
        raise UsageError(
            f"{len(missing)} rows of column {label_column!r} have no label "
            f"(rows {missing[:10].tolist()}). Label them or drop them."
        )
    return list(texts), labels.astype(str).to_numpy()


def run_probe(args) -> int:
    """Probe the texts of a table; print the ranking."""
    from sktransfer._text_probe import DEFAULT_TEXT_MODELS, probe_texts

    say = progress(args.quiet)
    if args.report is not None:
        require("matplotlib", "report", "--report")
    image_only = [o for o, given in (("--labels", args.labels is not None),
                                     ("--finetune", args.finetune),
                                     ("--size", args.size is not None),
                                     ("--weights", args.weights != "DEFAULT"))
                  if given]  # fmt: skip
    if image_only:
        raise UsageError(f"{', '.join(image_only)}: for images only, not texts.")
    X, y = read_table(args.dir, args.text_column, args.label_column)
    say(f"{len(X)} texts in {len(set(y.tolist()))} classes, from {args.dir}")
    layers: str | list[int] = "all"
    if args.layers is not None:
        try:
            layers = [int(v) for v in args.layers]
        except ValueError:
            raise UsageError(
                f"--layers for texts are hidden-state numbers (0 = the embedding "
                f"layer's output, -1 the last). Got {args.layers}."
            ) from None
    with contextlib.redirect_stdout(sys.stderr):
        result = probe_texts(
            X,
            y,
            models=args.models or DEFAULT_TEXT_MODELS,
            word_vectors=args.word_vectors,
            layers=layers,
            poolings=args.poolings,
            cv=args.cv,
            max_length=args.max_length,
            batch_size=args.batch_size,
            precision=args.precision,
            device=args.device,
            cache=args.cache or "memory",
            n_jobs=args.n_jobs,
            random_state=args.seed,
            verbose=not args.quiet,
            log=note,
        )
    table = result.table()
    if args.json == "-":
        print(result.to_json())
        say(table)
    else:
        print(table)
        if args.json is not None:
            Path(args.json).write_text(result.to_json() + "\n")
            say(f"ranking written to {args.json}")
    data = _data_code(args)
    if args.report is not None:
        path = result.write_report(args.report, data)
        say(f"report written to {path} (plot: {path.parent / 'probe.png'})")
    if args.save is not None:
        from sktransfer._share import save

        pipeline = result.best_pipeline()
        with contextlib.redirect_stdout(sys.stderr):
            pipeline.fit(X, y)
        if args.save.endswith((".joblib", ".pkl")):
            import joblib

            joblib.dump(pipeline, args.save)
        else:
            save(pipeline, args.save, metrics=table)
        say(f"winning pipeline fitted on all {len(X)} texts and saved to {args.save}")
    return 0


def _data_code(args) -> str:
    sep = "\t" if args.dir.lower().endswith(".tsv") else ","
    read = (
        f"pd.read_parquet({args.dir!r})"
        if args.dir.lower().endswith(".parquet")
        else f"pd.read_csv({args.dir!r}, sep={sep!r}, dtype=str)"
    )
    return (
        "import pandas as pd\n\n"
        f"table = {read}\n"
        f"X, y = list(table[{args.text_column!r}]), table[{args.label_column!r}]"
    )


__all__ = ["read_table", "run_probe", "wants_text"]
