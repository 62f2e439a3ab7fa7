"""timm and Hugging Face hub models: model="timm/<name>" (issue 13).

Offline throughout: random weights, files the tests write, and a Hugging
Face hub cache the tests fill (the layout huggingface_hub reads, so that
timm's own loader finds "published" weights there without a download).
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktransfer import (
    EmbeddingCache,
    FineTunedClassifier,
    PretrainedFeatureExtractor,
    WeightsUnavailableError,
    list_layers,
    list_models,
)
from tests.conftest import assert_same_rows, transform_in_fresh_process

timm = pytest.importorskip("timm")
st = pytest.importorskip("safetensors.torch")
constants = pytest.importorskip("huggingface_hub.constants")

SIZE = {"resize_size": 64, "crop_size": 64}


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 48, 56, 3), dtype=np.uint8)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face hub cache; ``publish(repo, state)``
    puts weights in it as a download would."""
    from sktransfer._sources import timm as _timm

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(_timm, "UNAVAILABLE", {})

    def publish(repo, state=None, files=None):
        """A snapshot of ``repo``: ``state`` as its model.safetensors, or
        the files of the folder ``files``."""
        folder = cache / f"models--{repo.replace('/', '--')}"
        revision = "0123456789abcdef0123456789abcdef01234567"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(revision)
        snapshot = folder / "snapshots" / revision
        if files is not None:
            shutil.copytree(files, snapshot)
        else:
            snapshot.mkdir(parents=True)
            st.save_file(state, snapshot / "model.safetensors")
        return snapshot

    publish.cache = cache
    return publish


def timm_model(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def timm_embedding(model, batch):
    """timm's own default embedding: features, then the head's pooling."""
    with torch.inference_mode():
        return model.forward_head(model.forward_features(batch), pre_logits=True)


def network_input(extractor, X):
    return extractor.preprocessing_(torch.from_numpy(X).permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "vit_tiny_patch16_224"])
def test_default_embedding_equals_timm_with_random_weights(name, images):
    extractor = PretrainedFeatureExtractor(
        model=f"timm/{name}", weights=None, random_state=0, verbose=False, cache=None
    )
    if not name.startswith("vit"):  # (a ViT takes its own input size only)
        extractor.set_params(preprocessing=SIZE)
    out = extractor.fit_transform(images)
    model = timm_model(name, num_classes=0)
    model.load_state_dict(extractor.network_.backbone.state_dict())
    expected = timm_embedding(model, network_input(extractor, images))
    assert_same_rows(out, expected.numpy())
    assert extractor.weights_ is None


def test_local_safetensors_file_loads_through_timm(images, tmp_path):
    """A file of a whole timm model (head included): the head is dropped,
    every other tensor is the file's, the rows are timm's."""
    model = timm_model("resnet18", seed=3)  # 1000 classes
    path = tmp_path / "resnet18.safetensors"
    st.save_file(model.state_dict(), path)
    extractor = PretrainedFeatureExtractor(
        model="timm/resnet18", weights=path, preprocessing=SIZE, verbose=False
    ).fit(images)
    assert extractor.weights_ == str(path)
    loaded = extractor.network_.backbone.state_dict()
    assert "fc.weight" not in loaded
    for key, value in loaded.items():
        torch.testing.assert_close(value, model.state_dict()[key], rtol=0, atol=0)
    model.reset_classifier(0)
    expected = timm_embedding(model, network_input(extractor, images))
    assert_same_rows(extractor.transform(images), expected.numpy())
    # the file's content, not its name, is the network's identity
    other = tmp_path / "other.safetensors"
    st.save_file(timm_model("resnet18", seed=4).state_dict(), other)
    again = extractor.set_params(weights=other).fit(images)
    assert (
        again.cache_key_
        != PretrainedFeatureExtractor(
            model="timm/resnet18", weights=path, preprocessing=SIZE, verbose=False
        )
        .fit(images)
        .cache_key_
    )


def test_a_file_of_another_architecture_is_an_error(images, tmp_path):
    path = tmp_path / "resnet18.safetensors"
    st.save_file(timm_model("resnet18").state_dict(), path)
    extractor = PretrainedFeatureExtractor(model="timm/resnet34", weights=path)
    with pytest.raises(ValueError, match=r"does not match .*missing keys"):
        extractor.fit(images)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        extractor.set_params(model="timm/resnet18", weights=broken).fit(images)


def test_layers_give_the_shapes_list_layers_reports(images):
    layers = list_layers("timm/resnet18", input_size=64)
    assert list(layers) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert layers["layer4"] == (512, 2, 2)
    extractor = PretrainedFeatureExtractor(
        model="timm/resnet18",
        weights=None,
        layer=list(layers),
        pooling="flatten",
        preprocessing=SIZE,
        verbose=False,
    ).fit(images)
    assert extractor.n_features_per_layer_ == [
        int(np.prod(shape)) for shape in layers.values()
    ]
    tokens = list_layers("timm/vit_tiny_patch16_224")
    assert list(tokens)[-1] == "blocks.11" and tokens["blocks.11"] == (197, 192)
    # a ViT takes the input size the preprocessing gives (timm's
    # dynamic_img_size): 64x64 is 4x4 patches and the class token
    assert list_layers("timm/vit_tiny_patch16_224", input_size=64)["blocks.3"] == (
        17,
        192,
    )
    vit = PretrainedFeatureExtractor(
        model="timm/vit_tiny_patch16_224",
        weights=None,
        layer="blocks.3",
        pooling="flatten",
        preprocessing=SIZE,
        verbose=False,
    )
    assert vit.fit_transform(images[:2]).shape == (2, 17 * 192)


def test_token_poolings_leave_prefix_tokens_out(images):
    """avg: the patch tokens; cls: the class token; clsavg: both, as the
    DINOv2 linear probe reads them."""
    extractor = PretrainedFeatureExtractor(
        model="timm/vit_tiny_patch16_224",
        weights=None,
        random_state=0,
        layer="blocks.5",
        preprocessing=SIZE,
        verbose=False,
        cache=None,
    )
    rows = {
        pooling: extractor.set_params(pooling=pooling).fit_transform(images[:2])
        for pooling in ("avg", "cls", "clsavg")
    }
    model = extractor.network_.backbone
    tokens = {}
    handle = model.blocks[5].register_forward_hook(
        lambda module, args, out: tokens.setdefault("out", out)
    )
    with torch.inference_mode():
        model(network_input(extractor, images[:2]))
    handle.remove()
    out = tokens["out"]
    assert model.num_prefix_tokens == 1
    assert_same_rows(rows["avg"], out[:, 1:].mean(1).numpy())
    assert_same_rows(rows["cls"], out[:, 0].numpy())
    assert_same_rows(rows["clsavg"], np.hstack([rows["cls"], rows["avg"]]))


def test_pooling_skips_register_tokens():
    from sktransfer._runtime.layers import pool

    t = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    torch.testing.assert_close(pool(t, "avg", prefix=5), t[:, 5:].mean(1))
    torch.testing.assert_close(pool(t, "max", prefix=5), t[:, 5:].amax(1))
    torch.testing.assert_close(
        pool(t, "clsavg", prefix=5), torch.cat([t[:, 0], t[:, 5:].mean(1)], 1)
    )
    with pytest.raises(ValueError, match="has none"):
        pool(t, "cls", prefix=0)


def _counter():
    from sktransfer._runtime.layers import FeatureNet

    count = [0]

    def hook(module, args):
        if isinstance(module, FeatureNet):
            count[0] += len(args[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    return count, handle


def test_grid_search_over_timm_cut_points_runs_each_image_once():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)
    y = np.arange(20) % 2
    grid = ["layer2", "layer3", None]
    extractor = PretrainedFeatureExtractor(
        model="timm/resnet18",
        weights=None,
        random_state=0,
        preprocessing=SIZE,
        cache=EmbeddingCache(),
        cache_layers=grid,
        verbose=False,
    )
    search = GridSearchCV(
        make_pipeline(extractor, LogisticRegression(max_iter=100)),
        {"pretrainedfeatureextractor__layer": grid},
        cv=3,
    )
    count, handle = _counter()
    try:
        search.fit(X, y)
    finally:
        handle.remove()
    assert count[0] == len(X)  # 3 cut points x 3 folds + refit: one pass
    assert search.best_params_["pretrainedfeatureextractor__layer"] in grid


def test_finetuning_trains_only_the_last_stage_and_the_head(tmp_path):
    """trainable_layers=1: layer4 and the new head move; every other tensor
    (batch-norm statistics included) is the file's, bit for bit."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    start = timm_model("resnet18", seed=2, num_classes=0).state_dict()
    path = tmp_path / "resnet18.safetensors"
    st.save_file(start, path)
    clf = FineTunedClassifier(
        model="timm/resnet18",
        weights=path,
        trainable_layers=1,
        max_epochs=2,
        preprocessing={"resize_size": 32, "crop_size": 32},
        random_state=0,
        verbose=False,
    ).fit(X, y)
    trained = {n for n, p in clf.network_.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("backbone.layer4.", "head.")) for n in trained)
    after = clf.network_.backbone.state_dict()
    moved = {k for k, v in after.items() if not torch.equal(v, start[k])}
    assert moved and all(k.startswith("layer4.") for k in moved)
    assert "layer4.1.conv2.weight" in moved
    assert clf.n_trainable_layers_ == 1
    layer4 = sum(
        v.numel()
        for k, v in start.items()
        if k.startswith("layer4.") and ("running" not in k and "num_batches" not in k)
    )
    assert clf.n_trainable_params_ == layer4 + (512 + 1) * 3
    predicted = clf.predict(X)
    assert predicted.shape == (12,)
    fresh = transform_in_fresh_process(clf, X, tmp_path, method="predict")
    np.testing.assert_array_equal(fresh, predicted)
    # a ViT: its last block with the final norm after it
    vit = FineTunedClassifier(model="timm/vit_tiny_patch16_224", weights=None)
    vit.set_params(trainable_layers=1, max_epochs=1, random_state=0, verbose=False)
    vit.set_params(preprocessing={"resize_size": 32, "crop_size": 32})
    vit.fit(X[:6], y[:6])
    trained = {n for n, p in vit.network_.named_parameters() if p.requires_grad}
    assert {n.split(".")[1] for n in trained if n.startswith("backbone.")} == {
        "blocks",
        "norm",
    }
    assert all("blocks.11." in n for n in trained if ".blocks." in f".{n}")


def test_published_weights_from_the_hub_cache(images, hub_cache, tmp_path):
    """DEFAULT reads the hub cache through timm; a pickle names the weights
    and a fresh process reloads them from the same cache."""
    model = timm_model("resnet18", seed=5)
    hub_cache("timm/resnet18.a1_in1k", model.state_dict())
    extractor = PretrainedFeatureExtractor(
        model="timm/resnet18.a1_in1k", preprocessing=SIZE, verbose=False
    ).fit(images)
    assert extractor.weights_ == "timm/resnet18.a1_in1k"
    assert extractor.preprocessing_.interpolation == "bicubic"  # the tag's config
    model.reset_classifier(0)
    expected = timm_embedding(model, network_input(extractor, images))
    rows = extractor.transform(images)
    assert_same_rows(rows, expected.numpy())
    # the tag can be given as weights, too: the same network and cache key
    same = PretrainedFeatureExtractor(
        model="timm/resnet18", weights="a1_in1k", preprocessing=SIZE, verbose=False
    ).fit(images)
    assert same.cache_key_ == extractor.cache_key_
    import pickle

    assert len(pickle.dumps(extractor)) < 10_000  # the name, not the tensors
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(hub_cache.cache),
        "HF_HUB_OFFLINE": "1",
    }
    fresh = transform_in_fresh_process(extractor, images, tmp_path, env=env)
    assert_same_rows(fresh, rows)


def test_a_timm_model_on_the_hub_by_its_repo(images, hub_cache, tmp_path):
    """hf-hub:<org>/<repo>: the repo's config.json names the architecture,
    its weights are the repo's."""
    from timm.models._hub import save_for_hf

    model = timm_model("resnet18", seed=6)
    save_for_hf(model, str(tmp_path / "export"))
    hub_cache("someone/tiny-resnet", files=tmp_path / "export")
    extractor = PretrainedFeatureExtractor(
        model="hf-hub:someone/tiny-resnet", preprocessing=SIZE, verbose=False
    ).fit(images)
    assert extractor.weights_ == "hf-hub:someone/tiny-resnet"
    model.reset_classifier(0)
    expected = timm_embedding(model, network_input(extractor, images))
    assert_same_rows(extractor.transform(images), expected.numpy())
    with pytest.raises(WeightsUnavailableError, match="someone--absent"):
        PretrainedFeatureExtractor(model="hf-hub:someone/absent").fit(images)


def test_offline_without_the_weights_is_a_clear_error(images, hub_cache):
    extractor = PretrainedFeatureExtractor(model="timm/resnet18.a1_in1k")
    with pytest.raises(WeightsUnavailableError) as error:
        extractor.fit(images)
    message = str(error.value)
    assert str(hub_cache.cache / "models--timm--resnet18.a1_in1k") in message
    assert "weights='/path/to/model.safetensors'" in message
    # a clone fails at once, in the parent of a search, with the same message
    from sklearn.base import clone

    with pytest.raises(WeightsUnavailableError, match="hub cache"):
        clone(extractor)


def test_fitted_extractor_with_file_weights_pickles_to_a_fresh_process(
    images, tmp_path
):
    path = tmp_path / "vit.safetensors"
    st.save_file(timm_model("vit_tiny_patch16_224", seed=1).state_dict(), path)
    extractor = PretrainedFeatureExtractor(
        model="timm/vit_tiny_patch16_224",
        weights=path,
        layer=["blocks.6", None],
        pooling="clsavg",
        preprocessing=SIZE,
        verbose=False,
    ).fit(images[:2])
    rows = extractor.transform(images[:2])
    path.unlink()  # the pickle holds the tensors
    assert_same_rows(transform_in_fresh_process(extractor, images[:2], tmp_path), rows)


def test_sharing_a_timm_extractor(images, tmp_path, hub_cache):
    import sktransfer

    hub_cache("timm/resnet18.a1_in1k", timm_model("resnet18").state_dict())
    extractor = PretrainedFeatureExtractor(
        model="timm/resnet18.a1_in1k", preprocessing=SIZE, verbose=False
    ).fit(images)
    path = sktransfer.save(extractor, tmp_path / "model.skops")
    loaded = sktransfer.load(path)
    assert_same_rows(loaded.transform(images), extractor.transform(images))


def test_preprocessing_follows_the_pretrained_config():
    """The numbers come from the tag's pretrained_cfg, and a batch
    preprocessed here equals timm's own eval transform of the image."""
    from PIL import Image

    from sktransfer._sources import load_backbone

    for name, crop, resize in [
        ("convnext_tiny.fb_in22k", 224, 256),  # crop_pct 0.875, center
        ("dm_nfnet_f1.dm_in1k", 224, 246),  # crop_pct 0.91, squash
    ]:
        backbone = load_backbone(f"timm/{name}", None)
        prep = backbone.preprocessing
        assert (prep.crop_size, prep.resize_size) == (crop, resize)
        config = timm.data.resolve_data_config(
            pretrained_cfg=backbone.module.pretrained_cfg
        )
        assert prep.squash == (config["crop_mode"] == "squash")
        pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
        theirs = timm.data.create_transform(**config)(Image.fromarray(pixels))
        ours = prep(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)[0]
        assert ours.shape == theirs.shape
        # PIL's and torch's resize kernels differ by a few levels at most
        assert (ours - theirs).abs().mean() < 0.03


def test_names_tags_and_listing():
    names = list_models("timm/convnext_tiny.*")
    assert "timm/convnext_tiny.fb_in22k" in names
    assert all(n.startswith("timm/convnext_tiny.") for n in names)
    with pytest.raises(ValueError, match="Did you mean 'convnext_tiny'"):
        PretrainedFeatureExtractor(model="timm/convnext_tiny_x").fit(
            np.zeros((1, 8, 8))
        )
    with pytest.raises(ValueError, match="no weights tagged 'nope'"):
        PretrainedFeatureExtractor(model="timm/resnet18.nope").fit(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="publishes no weights for 'botnet50ts_256'"):
        PretrainedFeatureExtractor(model="timm/botnet50ts_256").fit(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="Name them once"):
        PretrainedFeatureExtractor(
            model="timm/resnet18.a1_in1k", weights="a2_in1k"
        ).fit(np.zeros((1, 8, 8)))


def test_core_imports_without_timm_and_says_how_to_install_it():
    code = (
        "import sys; sys.modules['timm'] = None\n"
        "import numpy as np, sktransfer\n"
        "try:\n"
        "    sktransfer.PretrainedFeatureExtractor(model='timm/resnet18')"
        ".fit(np.zeros((1, 8, 8)))\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install -e '.[timm]'" in out and "'timm>=" in out


def test_probe_ranks_timm_cut_points_in_one_pass():
    from sktransfer import probe
    from sktransfer._probe import parse_model

    assert parse_model("hf-hub:someone/repo:none") == ("hf-hub:someone/repo", "none")
    assert parse_model("timm/resnet18.a1_in1k") == ("timm/resnet18.a1_in1k", None)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    y = np.repeat(["a", "b"], 6)
    result = probe(
        X,
        y,
        models=["timm/resnet18:none"],
        cv=2,
        preprocessing={"resize_size": 32, "crop_size": 32},
        verbose=False,
    )
    assert [r["network_images"] for r in result.runs] == [12]
    assert {row["layer"] for row in result.rows} == {
        "act1",
        "layer1",
        "layer2",
        "layer3",
        None,  # layer4, pooled, is the final embedding: one row
    }
