"""The model-source registry: one place decides where a ``model`` comes from."""

from __future__ import annotations

import pickle

import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, _sources
from sktransfer._families import family_of
from sktransfer._preprocess import default_preprocessing
from sktransfer._sources import base
from tests.conftest import TinyCNN


@pytest.mark.parametrize(
    "model, expected",
    [
        ("resnet18", "torchvision"),
        ("not_a_model", "torchvision"),  # (its check says what is wrong)
        ("timm/resnet18.a1_in1k", "timm"),
        ("hf-hub:org/repo", "timm"),
    ],
)
def test_names_go_to_their_source(model, expected):
    assert _sources.source_of(model).name == expected


def test_a_module_and_a_fitted_classifier_go_to_theirs(tiny_cnn):
    assert _sources.source_of(tiny_cnn).name == "module"
    assert _sources.source_of(FineTunedClassifier(model=tiny_cnn)).name == "finetuned"


def test_anything_else_is_refused_naming_what_is_taken():
    with pytest.raises(TypeError, match="torchvision model name .* Got int"):
        _sources.source_of(3)
    assert _sources.weights_identity(3, "DEFAULT", None) is None  # fit says why


def test_a_source_registered_later_is_asked_first(monkeypatch, images):
    """A new kind of model is one registry entry: names with its prefix
    reach it (not torchvision's, which takes any other string), and the
    estimators, their clones and their pickles work with it unchanged."""

    class ToySource(base.Source):
        name = "toy"
        loads = 0

        def matches(self, model):
            return isinstance(model, str) and model.startswith("toy:")

        def identity(self, model, weights, seed):
            return f"{model}|{weights}"

        def load(self, model, weights):
            ToySource.loads += 1
            torch.manual_seed(0)  # (the same network at every load)
            module = TinyCNN()
            module.fc = nn.Identity()
            return base.Backbone(
                module.eval(), default_preprocessing(), weights,
                family_of(None), "fc",
            )  # fmt: skip

    monkeypatch.setattr(base, "_SOURCES", list(base._SOURCES))
    _sources.register_source(ToySource())
    with pytest.raises(ValueError, match="registered already"):
        _sources.register_source(ToySource())
    assert _sources.source_of("toy:tiny").name == "toy"
    assert _sources.source_of("resnet18").name == "torchvision"
    # (an image source is never asked for a text model)
    assert _sources.source_of("toy:tiny", kind="text").name == "transformers"
    with pytest.raises(TypeError, match="No model source of text models"):
        _sources.source_of(3.5, kind="text")

    extractor = PretrainedFeatureExtractor(
        model="toy:tiny", weights="DEFAULT", device="cpu"
    )
    rows = extractor.fit(images).transform(images)
    assert rows.shape == (len(images), extractor.n_features_out_)
    assert extractor.weights_ == "DEFAULT"
    again = pickle.loads(pickle.dumps(extractor))
    assert_allclose(again.transform(images), rows, rtol=1e-6, atol=1e-6)
    assert ToySource.loads >= 1
