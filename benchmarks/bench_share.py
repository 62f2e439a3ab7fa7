"""Sharing without pickle: sizes and times of ``sktransfer.save`` / ``load``
against pickle, for the models of the sharing issue.

Models (fitted on 32 of scikit-learn's digits at 64x64, no download):

- ``published``: MobileNetV2 with the ImageNet weights from
  ``../shared/weights`` (copied into a temporary torch hub cache, as the
  published ``IMAGENET1K_V1``) + ``StandardScaler`` + ``LogisticRegression``;
- ``finetuned``: ``FineTunedClassifier(resnet18, trainable_layers=1)``,
  one epoch (its 11.2 M parameters are what is stored);
- ``checkpoint``: an extractor with a local ResNet-18 checkpoint.

Printed for each: the size of ``model.skops``, of the network's float32
weights (what a tensor format holds), of a pickle; the seconds of save, of
load (which includes checking the published weights' file digest) and of a
pickle round trip; and whether the loaded model's outputs are identical.

Run: ``.venv/bin/python benchmarks/bench_share.py``
"""

import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE.parent.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
SIZE = {"resize_size": 64, "crop_size": 64}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    os.environ["TORCH_HOME"] = str(tmp / "torch")
    (tmp / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(CHECKPOINT, tmp / "torch/hub/checkpoints/mobilenet_v2-b0353104.pth")

    import sktransfer
    from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
    from sktransfer._identity import cpu_model

    digits = load_digits()
    X = np.round(digits.images[:32] * (255 / 16)).astype(np.uint8)
    y = digits.target[:32] % 2
    resnet = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    common = {"preprocessing": SIZE, "verbose": False, "cache": None}
    models = {
        "published": make_pipeline(
            PretrainedFeatureExtractor(
                model="mobilenet_v2", weights="IMAGENET1K_V1", **common
            ),
            StandardScaler(),
            LogisticRegression(max_iter=1000),
        ).fit(X, y),
        "finetuned": FineTunedClassifier(
            model="resnet18",
            weights=None,
            trainable_layers=1,
            max_epochs=1,
            random_state=0,
            preprocessing=SIZE,
            verbose=False,
        ).fit(X, y),  # fmt: skip
        "checkpoint": PretrainedFeatureExtractor(
            model="resnet18", weights=resnet, layer="layer3", **common
        ).fit(X),
    }
    print(f"{cpu_model()}, torch {torch.__version__}")
    print(
        f"{'model':<11}{'skops file':>12}{'tensors':>12}{'pickle':>12}"
        f"{'save s':>8}{'load s':>8}{'pickle s':>9}  identical"
    )
    for name, model in models.items():
        # The weights a tensor format would hold: the backbone's (the
        # extractor's network also holds fused copies), or the classifier's.
        net = (model[0] if name == "published" else model)._network()
        weights = net.backbone.state_dict() if name != "finetuned" else net.state_dict()
        tensors = sum(t.numel() * t.element_size() for t in weights.values())
        out = getattr(model, "predict_proba", getattr(model, "transform", None))(X)
        path, save_s = _timed(lambda m=model, n=name: sktransfer.save(m, tmp / n))
        again, load_s = _timed(lambda n=name: sktransfer.load(tmp / n))
        pickled, pickle_s = _timed(lambda m=model: pickle.loads(pickle.dumps(m)))
        loaded = getattr(again, "predict_proba", getattr(again, "transform", None))(X)
        print(
            f"{name:<11}{path.stat().st_size / 1e6:>10.3f}MB"
            f"{tensors / 1e6:>10.3f}MB{len(pickle.dumps(model)) / 1e6:>10.3f}MB"
            f"{save_s:>8.2f}{load_s:>8.2f}{pickle_s:>9.2f}  "
            f"{np.array_equal(loaded, out)}"
        )
        del pickled
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
