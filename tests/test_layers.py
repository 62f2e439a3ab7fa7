"""Cut points: listing, validation, pooling."""

import pytest
import torch
import torchvision
from numpy.testing import assert_allclose

from sktransfer import list_layers, list_models
from sktransfer._runtime.layers import pool


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


def test_batch_norms_are_folded_with_the_same_result():
    """What runs has no batch norm left after convolutions; rows are unchanged
    and the saved backbone keeps its own layers."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from sktransfer._runtime.layers import FeatureNet

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    for module in model.modules():  # statistics far from 0 and 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.rand(3, 3, 64, 64)
    for layers in ([None], ["layer2", None]):
        net = FeatureNet(model, layers, "avg")
        called = {n.target for n in net.body.graph.nodes if n.op == "call_module"}
        kinds = {type(net.body.get_submodule(t)) for t in called}
        assert torch.nn.BatchNorm2d not in kinds and torch.nn.Conv2d in kinds
        assert not net.body.training
        reference = create_feature_extractor(
            model, {"layer2": "layer2", "flatten": "flatten"}
        )
        with torch.inference_mode():
            ours = net(x)
            theirs = reference(x)
        expected = (
            [theirs["flatten"]]
            if layers == [None]
            else [theirs["layer2"].mean((2, 3)), theirs["flatten"]]
        )
        for a, b in zip(ours, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.backbone.modules())
