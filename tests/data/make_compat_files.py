"""Write the files that tests/test_compat.py loads: pickles and a saved model
made by an earlier release, with the outputs they gave there.

Run once from a checkout of that release (the files were written by commit
8a5d2df, version 0.1.0.dev0), never again by later code: the point is that
later code still reads what earlier code wrote.

    TORCH_HOME=<a folder whose hub/checkpoints/ holds mobilenet_v2-b0353104.pth> \
    PYTHONPATH=<that checkout> python tests/data/make_compat_files.py OUT_DIR
"""

import pickle
import sys
from pathlib import Path

import numpy as np
import torch

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from tests.conftest import TinyCNN


def images():
    return np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    X = images()
    y = np.array([0, 1, 2, 0, 1, 2])
    torch.manual_seed(0)
    small = {"resize_size": 40, "crop_size": 32}
    extractor = PretrainedFeatureExtractor(
        model=TinyCNN(), layer=["block1", None], preprocessing=small, verbose=False
    ).fit(X)
    (out / "extractor_module.pkl").write_bytes(pickle.dumps(extractor))
    np.save(out / "extractor_module.npy", extractor.transform(X))

    classifier = FineTunedClassifier(
        model=TinyCNN(),
        trainable_layers=1,
        max_epochs=2,
        preprocessing=small,
        random_state=0,
        verbose=False,
    ).fit(X, y)
    (out / "classifier_module.pkl").write_bytes(pickle.dumps(classifier))
    np.save(out / "classifier_module.npy", classifier.predict_proba(X))

    published = PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights="IMAGENET1K_V1",
        layer="features.13",
        preprocessing=small,
        verbose=False,
    ).fit(X)
    (out / "extractor_published.pkl").write_bytes(pickle.dumps(published))
    sktransfer.save(published, out / "extractor_published.skops")
    np.save(out / "extractor_published.npy", published.transform(X))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
