"""The extractor computes what plain torchvision computes."""

import numpy as np
import pytest
import torch
import torchvision
from numpy.testing import assert_allclose
from torchvision.models.feature_extraction import create_feature_extractor

from sktransfer import PretrainedFeatureExtractor

ARCHITECTURES = {
    # name: (a cut point, how its output is pooled by hand, head to drop)
    "resnet18": ("layer3", lambda t: t.mean((2, 3)), "fc"),
    "mobilenet_v3_small": ("features.6", lambda t: t.mean((2, 3)), "classifier.3"),
    "efficientnet_b0": ("features.5", lambda t: t.mean((2, 3)), "classifier.1"),
    "convnext_tiny": ("features.3", lambda t: t.mean((2, 3)), "classifier.2"),
    # tokens: the patch tokens are averaged, the class token (the first) left out
    "vit_b_16": (
        "encoder.layers.encoder_layer_6",
        lambda t: t[:, 1:].mean(1),
        "heads.head",
    ),
}


def _float_images(n=3, height=60, width=70):
    rng = np.random.default_rng(0)
    return rng.random((n, height, width, 3), dtype=np.float32)


def _reference_model(name, head):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    parent, _, leaf = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, torch.nn.Identity())
    return model


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_default_embedding_and_cut_point_match_torchvision(name):
    """Embedding = model with head replaced by identity; cut point = FX output."""
    layer, pool, head = ARCHITECTURES[name]
    X = _float_images()
    extractor = PretrainedFeatureExtractor(
        model=name,
        weights=None,
        layer=[None, layer],
        verbose=False,
        cache=None,
        precision="float32",
    ).fit(X)
    # the same random weights in the reference model
    model = _reference_model(name, head)
    model.load_state_dict(extractor.network_.backbone.state_dict())
    weights = torchvision.models.get_model_weights(name).DEFAULT
    batch = weights.transforms()(torch.from_numpy(X).permute(0, 3, 1, 2))
    with torch.inference_mode():
        embedding = model(batch)
        cut = create_feature_extractor(model, return_nodes=[layer])(batch)[layer]
        expected = torch.cat([embedding, pool(cut)], dim=1).numpy()
    assert_allclose(extractor.transform(X), expected, rtol=1e-4, atol=1e-5)


def test_preprocessing_matches_torchvision_presets():
    """Our batched preprocessing equals weights.transforms() on floats and uint8."""
    from sktransfer._preprocess import from_weights

    rng = np.random.default_rng(1)
    for weights in (
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2,  # resize 232
        torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1,
        torchvision.models.EfficientNet_B3_Weights.IMAGENET1K_V1,  # bicubic 320/300
    ):
        floats = torch.from_numpy(rng.random((2, 3, 250, 330), dtype=np.float32))
        ours, theirs = from_weights(weights)(floats), weights.transforms()(floats)
        assert ours.shape == theirs.shape
        assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)
        uint8 = (floats * 255).round().to(torch.uint8)
        ours, theirs = from_weights(weights)(uint8), weights.transforms()(uint8)
        # uint8 is resized in uint8 in both; kernels may round differently by 1
        assert (ours - theirs).abs().max().item() <= 1.01 / 255 / 0.22
