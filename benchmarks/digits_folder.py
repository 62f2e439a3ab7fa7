"""Write scikit-learn's digits as PNG files in one folder per class.

A real, labelled image folder for ``sktransfer probe`` without a download::

    python benchmarks/digits_folder.py digits/ --limit 1200
    sktransfer probe digits/

Each digit is placed at random in a 12x12 canvas (as in ``sktransfer demo``)
and written at 4x its size (48x48 pixels), grayscale.
"""

import argparse
from pathlib import Path

from PIL import Image

from sktransfer._cli.demo import shifted_digits


def write_digits_folder(folder, limit=None, scale=4, seed=0) -> int:
    """Write the digits to ``folder/<digit>/<i>.png``; return how many."""
    X, y = shifted_digits(limit, seed=seed)
    folder = Path(folder)
    for i, (image, label) in enumerate(zip(X, y, strict=True)):
        place = folder / str(label)
        place.mkdir(parents=True, exist_ok=True)
        side = image.shape[0] * scale
        Image.fromarray(image).resize((side, side), Image.NEAREST).save(
            place / f"{i:05d}.png"
        )
    return len(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--limit", type=int, default=None, help="the first N digits")
    args = parser.parse_args()
    n = write_digits_folder(args.folder, args.limit)
    print(f"{n} digits written to {args.folder}")


if __name__ == "__main__":
    main()
