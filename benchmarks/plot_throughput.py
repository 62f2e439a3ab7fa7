"""Plot the throughput tables that ``benchmarks/bench_throughput.py`` prints.

Run the benchmark with its output saved, then plot it::

    .venv/bin/python benchmarks/bench_throughput.py | tee throughput.md
    .venv/bin/python benchmarks/plot_throughput.py throughput.md

Several files may be given (their rows are joined, e.g. one run per model).
Writes ``docs/images/throughput.png`` (or ``--out``): images per second of
each contender, one group of bars per model, on a log scale. sktransfer's
bars are labelled by precision (the run's "(default)" row by the header's
"auto precision", since the default has changed between runs), and
``--cpu`` names the machine in the title (the header does not know it).
"""

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent


def read_rows(paths):
    """``{model: {contender: img/s}}`` from the markdown tables, and the
    header line of the first file (machine and versions)."""
    rates: dict = {}
    header = ""
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.startswith("# ") and not header:
                header = line[2:]
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 3 or cells[0] in ("model", "---"):
                continue
            try:
                rate = float(cells[2].replace(",", ""))
            except ValueError:
                continue  # "not installed", fractions of the limit
            rates.setdefault(cells[0], {})[cells[1]] = rate
    return rates, header


def label(contender: str, header: str) -> str:
    """The legend of a contender: sktransfer's by precision."""
    if contender == "sktransfer fp32":
        return "sktransfer float32"
    if contender == "sktransfer (default)":
        found = re.search(r"auto precision: (\w+)", header)
        return f"sktransfer {found.group(1)}" if found else contender
    return contender


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tables", nargs="+")
    parser.add_argument("--cpu", default="", help='e.g. "Intel Xeon (AMX)"')
    parser.add_argument(
        "--out", default=str(HERE.parent / "docs/images/throughput.png")
    )
    args = parser.parse_args()
    rates, header = read_rows(args.tables)
    if not rates:
        raise SystemExit("no benchmark rows found in " + ", ".join(args.tables))
    contenders = list(dict.fromkeys(c for row in rates.values() for c in row))
    models = list(rates)
    width = 0.8 / len(contenders)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for k, contender in enumerate(contenders):
        values = [rates[m].get(contender, np.nan) for m in models]
        x = np.arange(len(models)) + (k - (len(contenders) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=label(contender, header))
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_yscale("log")
    ax.set_ylabel("images per second (log scale)")
    on = f" on {args.cpu}, 2 cores" if args.cpu else ""
    ax.set_title(f"Embedding throughput from uint8 arrays{on}", fontsize=11)
    if header:
        fig.text(0.01, 0.01, header, fontsize=6, color="grey")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
