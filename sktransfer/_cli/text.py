"""``sktransfer probe TABLE --text-column C --label-column L``: the text
probe (:func:`sktransfer.probe_texts`) on a CSV, TSV or Parquet file."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from sktransfer._cli.common import UsageError, note, print_ranking, progress
from sktransfer._common import require

#: The table formats, by suffix.
TABLES = (".csv", ".tsv", ".parquet")


def wants_text(args) -> bool:
    """Whether ``sktransfer probe`` was given a table of texts."""
    return bool(args.text_column) or Path(args.dir).suffix.lower() in TABLES


def read_table(path, text_column, label_column=None, labels=True):
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
    wanted = [("--text-column", text_column)]
    if labels:
        wanted.append(("--label-column", label_column))
    for option, column in wanted:
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
    texts = table[text_column]
    for i, value in enumerate(texts):
        if not isinstance(value, str):
            raise UsageError(
                f"Row {i} of column {text_column!r} is not a text: "
                f"{value!r:.60} ({type(value).__name__}). Fill or drop it; "
                "is --text-column the column of the texts?"
            )
    if not labels:
        return list(texts), None
    y = table[label_column]
    missing = np.flatnonzero(y.isna().to_numpy())
    if len(missing):
        raise UsageError(
            f"{len(missing)} rows of column {label_column!r} have no label "
            f"(rows {missing[:10].tolist()}). Label them or drop them."
        )
    return list(texts), y.astype(str).to_numpy()


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
    print_ranking(args, result, say)
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
            save(pipeline, args.save, metrics=result.table())
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


def read_lines(path) -> list[str]:
    """The texts of a text file, one per line, verbatim but for the line
    terminator (``\\n``, or ``\\r\\n`` when every line ends so); an empty
    line is an empty text. A line that is not UTF-8 is an error naming it."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the last line's terminator
        lines.pop()
    if not lines:
        raise UsageError(f"{str(path)!r} has no lines: no texts to embed.")
    ended = len(lines) if data.endswith(b"\n") else len(lines) - 1
    if ended and all(line.endswith(b"\r") for line in lines[:ended]):
        lines[:ended] = [line[:-1] for line in lines[:ended]]
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            texts.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"Line {number} of {str(path)!r} is not UTF-8 ({exc.reason} at "
                f"byte {exc.start}): convert the file to UTF-8."
            ) from None
    return texts


def run_embed(args) -> int:
    """Embed the texts of a text file (``--texts``) or of a table's column
    (``--text-column``) into ``args.output``, one row per text in order."""
    from sktransfer._embed import embed_texts
    from sktransfer._text_extractor import PretrainedTextExtractor
    from sktransfer._text_probe import DEFAULT_TEXT_MODELS

    say = progress(args.quiet)
    if args.texts and args.text_column:
        raise UsageError("Give --texts (a text file) or --text-column (a table), "
                         "not both.")  # fmt: skip
    image_only = [o for o, given in (("--scheduler", args.scheduler),
                                     ("--size", args.size is not None),
                                     ("--weights", args.weights != "DEFAULT"),
                                     ("--on-error nan", args.on_error == "nan"))
                  if given]  # fmt: skip
    if image_only:
        raise UsageError(f"{', '.join(image_only)}: for images only, not texts.")
    pooling = args.pooling or "mean"
    if pooling not in ("mean", "cls", "max"):
        raise UsageError(f"--pooling for texts: mean, cls or max. Got {pooling!r}.")
    if Path(args.output).suffix not in (".parquet", ".npy"):
        raise UsageError("Texts are embedded to OUT.parquet or OUT.npy.")
    if args.texts:
        texts = read_lines(args.source)
    else:
        texts, _ = read_table(args.source, args.text_column, labels=False)
    layer = None
    if args.layer:
        try:
            layer = [None if v.lower() == "none" else int(v) for v in args.layer]
        except ValueError:
            raise UsageError(
                f"--layer for texts: hidden-state numbers or 'none'. Got {args.layer}."
            ) from None
    extractor = PretrainedTextExtractor(
        model=args.model or DEFAULT_TEXT_MODELS[0],
        layer=layer,
        pooling=pooling,
        max_length=args.max_length,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        cache=None if args.cache in (None, "none") else args.cache,
    )
    with contextlib.redirect_stdout(sys.stderr):
        embed_texts(texts, args.output, extractor, chunk_size=args.chunk_size,
                    verbose=not args.quiet)  # fmt: skip
    say(
        f"{len(texts)} rows of {extractor.n_features_out_} features written to "
        f"{args.output}"
    )
    return 0


__all__ = ["read_lines", "read_table", "run_embed", "run_probe", "wants_text"]
