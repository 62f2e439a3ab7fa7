"""Files written by an earlier release load and give the same outputs.

``tests/data/v0.1.0.dev0`` holds pickles and a saved model written by
version 0.1.0.dev0 (commit 8a5d2df, with ``tests/data/make_compat_files.py``),
with the outputs they gave there. Moving a class or a module must keep them
loading: pickles record class paths, saved files record type names.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest

import sktransfer
from tests.conftest import assert_same_rows

DATA = Path(__file__).parent / "data" / "v0.1.0.dev0"


def _images():
    return np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)


def test_compat_extractor_pickle_of_a_module_transforms_as_before():
    """An extractor of a user's module, pickled by the earlier release."""
    extractor = pickle.loads((DATA / "extractor_module.pkl").read_bytes())
    assert isinstance(extractor, sktransfer.PretrainedFeatureExtractor)
    assert extractor.layers_ == ["block1", None]
    assert_same_rows(
        extractor.transform(_images()), np.load(DATA / "extractor_module.npy")
    )


def test_compat_classifier_pickle_predicts_as_before():
    """A fine-tuned classifier, pickled by the earlier release."""
    classifier = pickle.loads((DATA / "classifier_module.pkl").read_bytes())
    assert isinstance(classifier, sktransfer.FineTunedClassifier)
    np.testing.assert_allclose(
        classifier.predict_proba(_images()),
        np.load(DATA / "classifier_module.npy"),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("kind", ["pkl", "skops"])
def test_compat_published_weights_extractor_loads_as_before(
    hub_with_real_weights, kind
):
    """A pickle and an ``sktransfer.save`` file of an extractor of published
    weights (stored by name) give the earlier release's rows."""
    path = DATA / f"extractor_published.{kind}"
    if kind == "pkl":
        extractor = pickle.loads(path.read_bytes())
    else:
        pytest.importorskip("skops")
        extractor = sktransfer.load(path)
    assert extractor.weights_ == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert_same_rows(
        extractor.transform(_images()), np.load(DATA / "extractor_published.npy")
    )
