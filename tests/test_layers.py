"""Cut points: listing, validation, pooling."""

import pytest
import torch
from numpy.testing import assert_allclose

from sktransfer import list_layers, list_models
from sktransfer._layers import pool


def test_list_layers_stages_with_shapes():
    """Stages come in execution order with per-image output shapes."""
    assert list_layers("resnet18") == {
        "layer1": (64, 56, 56),
        "layer2": (128, 28, 28),
        "layer3": (256, 14, 14),
        "layer4": (512, 7, 7),
    }
    assert list_layers("resnet18", input_size=64)["layer4"] == (512, 2, 2)
    vit = list_layers("vit_b_16")
    assert len(vit) == 13 and vit["encoder.layers.encoder_layer_6"] == (197, 768)


def test_list_layers_all_and_custom_module(tiny_cnn):
    """which='all' lists graph nodes; the head is excluded; modules work."""
    nodes = list_layers("resnet18", which="all")
    assert "layer3.1.relu_1" in nodes and "fc" not in nodes
    assert list(nodes)[-1] == "flatten"
    assert list_layers(tiny_cnn, input_size=32) == {
        "stem": (8, 32, 32),
        "block1": (16, 16, 16),
        "block2": (32, 8, 8),
        "pool": (32, 1, 1),
        "flatten": (32,),
        "fc": (3,),
    }
    with pytest.raises(ValueError, match="'stages' or 'all'"):
        list_layers("resnet18", which="some")


def test_list_models_filters_with_globs():
    """list_models returns sorted torchvision names filtered by a glob."""
    names = list_models("efficientnet_b*")
    assert names == sorted(names) and "efficientnet_b0" in names
    assert "resnet50" in list_models()


def test_pooling_of_feature_maps_and_tokens():
    """avg/max/avgmax/cls/flatten reduce maps, tokens and NHWC maps correctly."""
    fmap = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert_allclose(pool(fmap, "avg"), fmap.mean((2, 3)))
    assert_allclose(pool(fmap, "max"), fmap.amax((2, 3)))
    assert pool(fmap, "avgmax").shape == (2, 6)
    assert pool(fmap, "flatten").shape == (2, 60)
    assert_allclose(pool(fmap.permute(0, 2, 3, 1), "avg", nhwc=True), fmap.mean((2, 3)))
    tokens = torch.randn(2, 7, 4)
    assert_allclose(pool(tokens, "avg"), tokens.mean(1))
    assert_allclose(pool(tokens, "cls"), tokens[:, 0])
    vectors = torch.randn(2, 9)
    assert pool(vectors, "avgmax") is vectors


def test_swin_feature_maps_are_pooled_channels_first():
    """Swin's (n, H, W, C) stage outputs pool to C values per image."""
    import numpy as np

    from sktransfer import PretrainedFeatureExtractor

    X = np.zeros((1, 64, 64, 3), np.uint8)
    extractor = PretrainedFeatureExtractor(
        model="swin_t",
        weights=None,
        layer="features.1",
        preprocessing={"resize_size": 64, "crop_size": 64},
        verbose=False,
    ).fit(X)
    assert extractor.n_features_out_ == 96
