"""Models from timm and the Hugging Face hub: ``model="timm/<name>"``.

Everything goes through timm's own API: ``timm.create_model`` builds the
network (``num_classes=0`` removes its classifier, so its output is the
model's standard embedding), its ``pretrained_cfg`` gives the preprocessing
the weights expect, its ``feature_info`` names the stages that ``layer``
cuts at and ``trainable_layers`` counts, and its pretrained-weights loader
reads the Hugging Face hub cache (or a local file handed to it as a state
dict). timm is an optional dependency (``pip install -e '.[timm]'``);
nothing here imports it until a timm model is named.

Names: ``"timm/<architecture>[.<tag>]"`` (``"timm/convnext_tiny.fb_in22k"``;
without a tag, timm's default weights of the architecture), or
``"hf-hub:<org>/<repo>"`` for a timm model published on the hub outside the
``timm`` organisation.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

from torch import nn

from sktransfer import _preprocess
from sktransfer._common import did_you_mean, require
from sktransfer._families import family_of, register_family
from sktransfer._identity import file_digest
from sktransfer._sources import checkpoints
from sktransfer._sources.base import (
    Backbone,
    Source,
    not_a_weights_name,
    random_or_file_identity,
)
from sktransfer.exceptions import (
    PreprocessingWarning,
    WeightsUnavailableError,
    warn,
)

__all__ = [
    "HUB_PREFIX",
    "PREFIX",
    "TimmSource",
    "cache_folder",
    "cached_weights_file",
    "check_name",
    "is_timm",
    "list_names",
    "preprocessing_of",
    "pretrained_cfg",
    "resolve_weights",
    "weights_at_hand",
    "weights_location",
]

PREFIX = "timm/"
HUB_PREFIX = "hf-hub:"
#: Published timm weights (or hub configs) that could not be had in this
#: process (name -> the error), so that the next clone fails at once.
UNAVAILABLE: dict[str, Exception] = {}


def is_timm(model) -> bool:
    """Whether ``model`` is a timm or Hugging Face hub model name."""
    return isinstance(model, str) and model.startswith((PREFIX, HUB_PREFIX))


def _timm():
    return require("timm", "timm", "A timm or Hugging Face hub model")


def _timm_name(model: str) -> str:
    """The name ``timm.create_model`` takes."""
    return model[len(PREFIX) :] if model.startswith(PREFIX) else model


def list_names(pattern: str = "*") -> list[str]:
    """``timm/<architecture>.<tag>`` of every published timm weights whose
    name matches the glob ``pattern`` (given without ``timm/``)."""
    return [PREFIX + name for name in _timm().list_models(pattern, pretrained=True)]


def check_name(model: str) -> None:
    """Raise ValueError unless ``model`` names a timm architecture (and a
    published tag of it, if it names one)."""
    if model.startswith(HUB_PREFIX):
        if "/" not in model[len(HUB_PREFIX) :]:
            raise ValueError(
                "A Hugging Face hub model is named 'hf-hub:<organisation>/<repo>'. "
                f"Got {model!r}."
            )
        return
    timm = _timm()
    name = _timm_name(model)
    architecture, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(architecture):
        hint = did_you_mean(architecture, timm.list_models())
        raise ValueError(
            f"The 'model' parameter names the timm architecture {architecture!r}, "
            f"which timm {timm.__version__} does not have.{hint} See "
            "sktransfer.list_models('timm/<glob>') for the published ones."
        )
    if tag and name not in _tags(architecture, full=True):
        raise ValueError(
            f"timm has no weights tagged {tag!r} for {architecture!r}. Its tags: "
            f"{_tags(architecture)}."
        )


def _tags(architecture: str, full: bool = False) -> list[str]:
    from timm.models import get_arch_pretrained_cfgs

    names = list(get_arch_pretrained_cfgs(architecture))
    return names if full else [n.split(".", 1)[1] for n in names if "." in n]


def pretrained_cfg(name: str) -> dict:
    """The pretrained config of a timm name (its default tag if untagged):
    where the weights are and the preprocessing they expect."""
    timm = _timm()
    if name.startswith(HUB_PREFIX):
        return dict(_hub_config(name))
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(
            f"timm publishes no weights for {name!r}: use weights=None (random) "
            "or a local file."
        )
    return cfg.to_dict()


@functools.lru_cache(maxsize=64)
def _hub_config(name: str) -> dict:
    """The pretrained config in a hub repo's ``config.json`` (read once)."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models._hub import load_model_config_from_hf

    repo = name[len(HUB_PREFIX) :]
    known = UNAVAILABLE.get(name)
    if known is not None and try_to_load_from_cache(repo, "config.json") is None:
        raise type(known)(str(known))  # (still not there: at once, no retries)
    try:
        cfg = load_model_config_from_hf(repo)[0]
    except OSError as exc:  # offline and not cached, or no such repo
        error = _unavailable(name, exc, "the config.json")
        UNAVAILABLE[name] = error
        raise error from exc
    return {**cfg, "hf_hub_id": cfg.get("hf_hub_id") or repo}


def resolve_weights(model: str, weights) -> str | Path | None:
    """The ``weights`` parameter for a timm model: the timm name of
    published weights (``"convnext_tiny.fb_in22k"``, ``"hf-hub:org/repo"``),
    a local file, or None (random)."""
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        return Path(weights)
    if not isinstance(weights, str):
        raise TypeError(
            "For a timm model, the 'weights' parameter must be 'DEFAULT', a "
            "pretrained tag of the architecture, a path to a .safetensors or "
            f".pth file, or None. Got {weights!r} of type {type(weights).__name__}."
        )
    name = _timm_name(model)
    if name.startswith(HUB_PREFIX):
        if weights in ("DEFAULT", name):
            return name
        return _file_or_error(model, weights, [])
    timm = _timm()
    architecture, tag = timm.models.split_model_name_tag(name)
    if weights == "DEFAULT":
        return _default_weights(name)
    if weights.startswith(PREFIX):
        weights = weights[len(PREFIX) :]
    tags = _tags(architecture)
    wanted = (
        weights.split(".", 1)[1] if weights.startswith(architecture + ".") else weights
    )
    if wanted in tags:
        if tag and wanted != tag:
            raise ValueError(
                f"The 'model' {model!r} names the weights {tag!r} and the "
                f"'weights' parameter names {wanted!r}. Name them once: "
                f"model='timm/{architecture}', weights={wanted!r}."
            )
        return f"{architecture}.{wanted}"
    return _file_or_error(model, weights, ["DEFAULT", *tags])


def _default_weights(name: str) -> str:
    """``<architecture>.<tag>`` of the weights a timm name stands for: its
    own tag, or timm's default one."""
    architecture, tag = _timm().models.split_model_name_tag(name)
    full = f"{architecture}.{tag or pretrained_cfg(name)['tag']}"
    cfg = pretrained_cfg(full)
    if not any(cfg.get(key) for key in ("hf_hub_id", "url", "file")):
        raise ValueError(
            f"timm publishes no weights for {architecture!r} (its config is "
            f"{cfg.get('tag')!r}): use weights=None (random) or a local file."
        )
    return full


def _file_or_error(model: str, weights: str, valid: list[str]) -> Path:
    if os.sep in weights or weights.endswith(checkpoints.SUFFIXES):
        return Path(weights)
    hint = did_you_mean(weights, valid, n=2)
    raise ValueError(
        f"The 'weights' parameter for {model!r} must be one of {valid}, a path to "
        f"a .safetensors or .pth file, or None. Got {weights!r}.{hint}"
    )


def _hub_files(cfg: dict) -> tuple[str, str | None, list[str]]:
    """The hub repo, revision and candidate file names of a config's
    weights, in the order timm tries them."""
    from timm.models._hub import hf_split

    repo, revision = hf_split(cfg["hf_hub_id"])
    if cfg.get("hf_hub_filename"):
        return repo, revision, [cfg["hf_hub_filename"]]
    return repo, revision, ["model.safetensors", "pytorch_model.bin"]


def cached_weights_file(name: str) -> Path | None:
    """The file of the published weights ``name`` in the local cache (the
    Hugging Face hub cache, or torch's for weights published by URL), or
    None when they are not there."""
    cfg = pretrained_cfg(name)
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo, revision, filenames = _hub_files(cfg)
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.get("url"):
        from timm.models._hub import get_cache_dir

        path = Path(get_cache_dir()) / os.path.basename(cfg["url"])
        return path if path.is_file() else None
    return None


def _config_or_repo(name: str) -> dict:
    """Where the weights of ``name`` come from: its pretrained config, or
    for a hub model its repo (named by the name: no download needed)."""
    if name.startswith(HUB_PREFIX):
        return {"hf_hub_id": name[len(HUB_PREFIX) :]}
    return pretrained_cfg(name)


def cache_folder(name: str) -> Path:
    """Where the published weights ``name`` are cached, or would be: the
    repo's folder in the Hugging Face hub cache, or the file in torch's."""
    cfg = _config_or_repo(name)
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        repo = cfg["hf_hub_id"].split("@")[0]
        return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    from timm.models._hub import get_cache_dir

    return Path(get_cache_dir()) / os.path.basename(cfg.get("url") or name)


def weights_location(name: str) -> str:
    """Where the published weights ``name`` are cached, for messages."""
    cfg, folder = _config_or_repo(name), str(cache_folder(name))
    if cfg.get("hf_hub_id"):
        return (
            f"the Hugging Face hub cache, {folder!r} (set HF_HOME or HF_HUB_CACHE "
            f"to move it; copy a snapshot of the hub repo {cfg['hf_hub_id']!r} "
            "there, or run once online)"
        )
    return f"the torch hub cache, {folder!r} (copy {cfg.get('url')} there)"


def weights_at_hand(model: str) -> list[str]:
    """The published weights of the model whose files are in the cache
    (usable offline): a name with a tag has those weights only; an
    architecture alone any of its tags, timm's default first."""
    name = _timm_name(model)
    if name.startswith(HUB_PREFIX):
        return [name] if cached_weights_file(name) else []
    architecture, tag = _timm().models.split_model_name_tag(name)
    first = _default_weights(name)
    names = [first] if tag else _tags(architecture, full=True)
    names = sorted(names, key=lambda n: n != first)
    return [PREFIX + n for n in names if cached_weights_file(n) is not None]


def _unavailable(name: str, exc, what: str = "the weights"):
    from huggingface_hub import constants

    offline = (
        ""
        if constants.HF_HUB_OFFLINE
        else " Set HF_HUB_OFFLINE=1 to fail at once, without retries, when offline."
    )
    return WeightsUnavailableError(
        f"Could not download {what} of the timm model {_described(name)!r} "
        f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}). timm "
        f"looks for them in {weights_location(name)}. Or pass a local file as "
        f"weights='/path/to/model.safetensors' (or a .pth state_dict).{offline}"
    )


class _LoadReport(logging.Handler):
    """Collects what timm's weight loader logs about keys it did not load."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.problems: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        for label in ("Missing keys", "Unexpected keys"):
            if message.startswith(label + " ("):
                keys = message[len(label) + 2 :].split(")")[0].split(", ")
                shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
                self.problems.append(f"{len(keys)} {label.lower()} ({shown})")


@contextlib.contextmanager
def _load_report():
    logger = logging.getLogger("timm.models._builder")
    report, level = _LoadReport(), logger.level
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    try:
        yield report
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)


def create(model: str, resolved) -> tuple[Any, str | None]:
    """Build ``model`` with the resolved weights: published (through timm's
    loader and the hub cache), a local file (read by
    :func:`~sktransfer._sources.checkpoints.read_checkpoint`, then handed
    to timm's loader, which adapts its format and drops a classifier), or
    random. Returns the module and the weights' description.
    Keys of a local file that do not fit the model are an error, never a
    partly random network."""
    name = _timm_name(model)
    if isinstance(resolved, str):
        try:
            module = _create_model(resolved, pretrained=True)
        except OSError as exc:  # hub errors, URL errors: offline, not cached
            if cached_weights_file(resolved) is not None:
                raise
            error = _unavailable(resolved, exc)
            UNAVAILABLE[resolved] = error
            raise error from exc
        return module, _described(resolved)
    if resolved is None:
        return _create_model(name, pretrained=False), None
    state = checkpoints.read_checkpoint(resolved)
    with _load_report() as report:
        try:
            module = _create_model(
                name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}
            )
        except (RuntimeError, KeyError) as exc:
            raise _mismatch(resolved, model, str(exc).splitlines()[0]) from exc
    # timm keeps its config (here, with the state dict in it) on the module
    for cfg in {id(c): c for c in (module.pretrained_cfg, module.default_cfg)}.values():
        cfg.pop("state_dict", None)
    if report.problems:
        raise _mismatch(resolved, model, "; ".join(report.problems))
    return module, str(resolved)


def _create_model(name: str, **kwargs):
    """``timm.create_model`` without the classifier. A model whose weights
    fix its input size (a ViT's position embeddings) is built with
    ``dynamic_img_size=True`` where it takes it: the same network at that
    size, and other sizes work too (the embeddings are interpolated), so
    the ``preprocessing`` parameter can choose the input size."""
    timm = _timm()
    try:
        fixed = pretrained_cfg(name).get("fixed_input_size")
    except ValueError:  # an architecture without published weights
        fixed = False
    if fixed:
        try:
            return timm.create_model(
                name, num_classes=0, dynamic_img_size=True, **kwargs
            )
        except TypeError:  # an architecture without the option
            pass
    return timm.create_model(name, num_classes=0, **kwargs)


def _described(name: str) -> str:
    """How ``weights_`` names published weights: ``timm/<arch>.<tag>`` or
    ``hf-hub:<org>/<repo>``, which ``weights`` accepts back."""
    return name if name.startswith(HUB_PREFIX) else PREFIX + name


def _mismatch(path: Path, model: str, detail: str) -> ValueError:
    return ValueError(
        f"The checkpoint {str(path)!r} does not match the architecture of "
        f"{model!r}: {detail}. Check that 'model' names the architecture the "
        "checkpoint was saved from."
    )


def head_name(module: Any) -> str | None:
    """Qualified name of the module's classifier (an ``nn.Identity`` once
    ``num_classes=0`` removed it)."""
    classifier = module.get_classifier()
    if isinstance(classifier, tuple):  # distilled models: (head, head_dist)
        classifier = classifier[0]
    for qualname, sub in module.named_modules():
        if sub is classifier:
            return qualname
    return None


def preprocessing_of(cfg: dict, model: str) -> _preprocess.Preprocessing:
    """The eval preprocessing of a pretrained config, as timm's
    ``transforms_imagenet_eval`` applies it: resize to
    ``floor(input_size / crop_pct)`` (the shorter side, or both sides for
    ``crop_mode="squash"``), centre crop to ``input_size``, normalise."""
    data = _timm().data.resolve_data_config(pretrained_cfg=cfg)
    _, height, width = data["input_size"]
    mode = data.get("crop_mode") or "center"
    if height != width or mode not in ("center", "squash"):
        warn(
            f"{model} expects {'a non-square input' if height != width else ''}"
            f"{' and ' if height != width and mode != 'center' else ''}"
            f"{'' if mode == 'center' else f'crop_mode={mode!r}'}, which "
            f"sktransfer's batched preprocessing does not do; it resizes the "
            f"shorter side and takes a centre crop of {height}x{height}. Pass "
            "preprocessing=dict(...) to choose yourself.",
            PreprocessingWarning,
        )
        mode = "center"
    crop_pct = data.get("crop_pct") or 0.875
    return _preprocess.Preprocessing(
        resize_size=math.floor(height / crop_pct),
        crop_size=height,
        mean=tuple(float(m) for m in data["mean"]),
        std=tuple(float(s) for s in data["std"]),
        interpolation=data.get("interpolation") or "bilinear",
        squash=mode == "squash",
    )


def stages(module: nn.Module) -> list[str]:
    """The modules timm's ``feature_info`` names, in execution order."""
    info = getattr(module, "feature_info", None)
    if not info:
        return [name for name, _ in module.named_children()]
    return [entry["module"] for entry in info]


def tail(module: nn.Module, stage_names: list[str]) -> list[str]:
    """The top-level modules after the last stage (a final norm, the pooling
    head...): trained together with the last stage."""
    if not stage_names:
        return []
    last = stage_names[-1].split(".")[0]
    children = [name for name, _ in module.named_children()]
    if last not in children:
        return []
    return children[children.index(last) + 1 :]


register_family("timm", PREFIX + "*", HUB_PREFIX + "*", tail=tail)(stages)


class TimmSource(Source):
    """timm and Hugging Face hub names (``"timm/..."``, ``"hf-hub:..."``)."""

    name = "timm"

    def matches(self, model) -> bool:
        return is_timm(model)

    def check(self, model) -> None:
        check_name(model)

    def resolve_weights(self, model, weights) -> str | Path | None:
        return resolve_weights(model, weights)

    def identity(self, model, weights, seed) -> str | None:
        check_name(model)
        if isinstance(weights, os.PathLike) or weights is None:
            return random_or_file_identity(model, weights, seed)
        resolved = resolve_weights(model, weights)
        if not isinstance(resolved, str):
            return random_or_file_identity(model, resolved, seed)
        try:
            cached = cached_weights_file(resolved)
        except OSError:  # a hub config that cannot be had: load says so
            return None
        content = "absent" if cached is None else file_digest(cached)
        return f"{model}|{resolved}|{content}"

    def load(self, model, weights) -> Backbone:
        """A timm model, its classifier removed by timm (``num_classes=0``)."""
        check_name(model)
        module, description = create(model, resolve_weights(model, weights))
        return Backbone(
            module.eval(),
            preprocessing_of(module.pretrained_cfg, model),
            description,
            family_of(model, module),
            head_name(module),
        )

    def cached_file(self, model, weights) -> Path | None:
        resolved = resolve_weights(model, weights)
        if not isinstance(resolved, str):
            return None
        return cached_weights_file(resolved) or cache_folder(resolved)

    def weights_at_hand(self, model) -> list[str]:
        return weights_at_hand(model)

    def named_preprocessing(self, model, name: str) -> _preprocess.Preprocessing:
        resolved = resolve_weights(model, name)
        if not isinstance(resolved, str):
            raise not_a_weights_name(name)
        return preprocessing_of(pretrained_cfg(resolved), model)

    def unavailable(self) -> dict:
        return UNAVAILABLE

    def still_unavailable(self, resolved) -> Exception | None:
        if not isinstance(resolved, str):
            return None
        known = UNAVAILABLE.get(resolved)
        return None if known is None or cached_weights_file(resolved) else known
