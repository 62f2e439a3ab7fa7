"""Batched image preprocessing: resize, centre crop, scale, normalise.

The numbers come from the weights (``weights.transforms()``), never from
constants of ours; the operations run on whole ``(n, C, H, W)`` batches on the
model's device, in the order torchvision's ``ImageClassification`` preset uses,
so that a batch preprocessed here equals one preprocessed by torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from numbers import Integral

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = ["Preprocessing", "default_preprocessing", "from_weights", "resolve"]

_INTERPOLATIONS = {"nearest", "bilinear", "bicubic"}

#: The most pixels a resize may produce (before the crop), unless the image
#: already has more: an image of 20000x1 pixels passes any pixel limit, but
#: resizing its short side to 256 would ask for 1.3 G pixels (several GB).
#: 2**24 pixels allow aspect ratios up to about 250:1 at a 256-pixel side.
MAX_RESIZED_PIXELS = 1 << 24


@dataclass(frozen=True, repr=False)
class Preprocessing:
    """How a batch of images becomes the network's input.

    Parameters
    ----------
    resize_size : int or None
        Length the shorter image side is resized to (aspect ratio kept);
        ``None`` keeps the size.
    crop_size : int or None
        Side of the square centre crop taken after resizing; ``None`` keeps
        the whole image.
    mean, std : tuple of float or None
        Per-channel normalisation of images scaled to [0, 1]: 3 finite
        numbers (one per RGB channel) or 1 for all three, ``std`` positive;
        ``None`` skips normalisation.
    interpolation : {"bilinear", "bicubic", "nearest"}
        Resampling filter of the resize.
    antialias : bool
        Whether downsizing is antialiased (as PIL does).
    squash : bool
        Resize both sides to ``resize_size``, aspect ratio not kept (timm's
        ``crop_mode="squash"``, e.g. for CLIP and SigLIP image towers),
        instead of the shorter one.
    """

    resize_size: int | None
    crop_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: str = "bilinear"
    antialias: bool = True
    squash: bool = False

    def __repr__(self) -> str:
        # Part of cache keys: a new field shows only where it is set, so
        # the keys of existing preprocessings stay what they were.
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if not (f.name == "squash" and not self.squash)
        ]
        return f"Preprocessing({', '.join(shown)})"

    def __post_init__(self):
        for name in ("resize_size", "crop_size"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, Integral) or value < 1
            ):
                raise ValueError(
                    f"The preprocessing '{name}' must be a positive int (a side "
                    f"in pixels, e.g. 224) or None (no {name.split('_')[0]}). "
                    f"Got {value!r}."
                )
            if value is not None:
                object.__setattr__(self, name, int(value))  # (numpy ints)
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                "The preprocessing 'interpolation' must be one of "
                f"{sorted(_INTERPOLATIONS)}. Got {self.interpolation!r}."
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError(
                "The preprocessing 'mean' and 'std' must both be given or both be "
                f"None. Got mean={self.mean!r}, std={self.std!r}."
            )
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _channel_values(self, name))

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of an image of this size after the resize (before the crop)."""
        if self.resize_size is None:
            return height, width
        if self.squash:
            return self.resize_size, self.resize_size
        short, long = sorted((height, width))
        new_long = int(self.resize_size * long / short)
        if height <= width:
            return self.resize_size, new_long
        return new_long, self.resize_size

    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError if resizing an image of this size would produce
        more than :data:`MAX_RESIZED_PIXELS` pixels (and more than it has)."""
        new_height, new_width = self.resized_size(height, width)
        pixels = new_height * new_width
        if pixels > max(MAX_RESIZED_PIXELS, height * width):
            ratio = max(height, width) / max(1, min(height, width))
            raise ValueError(
                f"the image is {width}x{height} pixels (aspect ratio "
                f"{ratio:.0f}:1); resizing its shorter side to {self.resize_size} "
                f"would make it {new_width}x{new_height} = {pixels:,} pixels, more "
                f"than the {MAX_RESIZED_PIXELS:,} allowed. Crop or pad it to a "
                "less extreme shape first"
            )

    @property
    def fixed_size(self) -> bool:
        """Whether images of any size become network inputs of one size (a
        crop, or a squash to a square)."""
        return self.crop_size is not None or (
            self.squash and self.resize_size is not None
        )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the network input for an image of this size."""
        height, width = self.resized_size(height, width)
        if self.crop_size is not None:
            height = width = self.crop_size
        return height, width

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Turn a ``(n, C, H, W)`` uint8/uint16/float batch into float32 input.

        uint8 is scaled from 0..255, uint16 from 0..65535, floats are taken to
        be in [0, 1] already. One channel is repeated to three. The result
        never shares memory with ``batch``, which may be the caller's data.
        Equal to ``finish(geometry(batch))``.
        """
        return self.finish(self.geometry(batch), source=batch)

    def geometry(self, batch: torch.Tensor) -> torch.Tensor:
        """The resize and centre crop (per image, so any batch of one works).

        uint16 becomes float in [0, 1]; uint8 stays uint8 unless resized
        with a filter other than bilinear. May return a view of ``batch``.
        """
        self.check_size(*batch.shape[-2:])
        if batch.dtype == torch.uint16:  # few kernels support uint16
            batch = batch.to(torch.float32).div_(65535.0)
        if self.resize_size is not None:
            exact_uint8 = (
                batch.dtype == torch.uint8 and self.interpolation != "bilinear"
            )
            if exact_uint8:
                # torchvision's native uint8 bicubic kernel overshoots differently
                # from the float one (up to 21 levels on noisy images); resize in
                # float and round, as the weights' own preset does.
                batch = batch.to(torch.float32)
            batch = TF.resize(
                batch,
                [self.resize_size] * (2 if self.squash else 1),
                interpolation=InterpolationMode(self.interpolation),
                antialias=self.antialias,
            )
            if exact_uint8:
                batch = batch.clamp_(0, 255).round_().div_(255)
        if self.crop_size is not None:
            batch = TF.center_crop(batch, [self.crop_size])
        return batch

    def finish(self, batch: torch.Tensor, source=None) -> torch.Tensor:
        """Scale to float, repeat one channel to three, normalise.

        The result never shares memory with ``source`` (default: ``batch``).
        """
        source = batch if source is None else source
        batch = TF.to_dtype(batch, torch.float32, scale=True)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        if self.mean is not None and self.std is not None:
            batch = TF.normalize(batch, list(self.mean), list(self.std))
        if batch.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
            batch = batch.clone()
        return batch


def _channel_values(prep: Preprocessing, name: str) -> tuple[float, ...]:
    """The ``mean`` or ``std`` of ``prep`` as a tuple of floats, checked: one
    finite number per channel of the network's RGB input (or one for all
    three), and for ``std`` positive. A NaN or infinite value would make every
    image's row the same; a wrong count fails deep inside torch."""
    value = getattr(prep, name)
    example = "(0.485, 0.456, 0.406)" if name == "mean" else "(0.229, 0.224, 0.225)"
    fix = (
        f"Pass 3 finite numbers (one per RGB channel, e.g. {name}={example} for "
        "ImageNet weights) or 1 for all channels; or leave 'mean' and 'std' out "
        "to keep the weights' own."
    )
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(
            f"The preprocessing '{name}' must be a sequence of numbers. Got "
            f"{value!r}. {fix}"
        )
    try:
        if any(isinstance(v, (str, bytes, bool)) for v in value):
            raise TypeError
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"The preprocessing '{name}' must hold numbers only. Got {value!r}. {fix}"
        ) from None
    if len(values) not in (1, 3):
        raise ValueError(
            f"The preprocessing '{name}' has {len(values)} values; the network's "
            f"input has 3 channels (RGB, grayscale images repeated). Got "
            f"{value!r}. {fix}"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"The preprocessing '{name}' must be finite (a NaN or infinity would "
            f"give every image the same row). Got {value!r}. {fix}"
        )
    if name == "std" and any(v <= 0 for v in values):
        raise ValueError(
            f"The preprocessing 'std' must be positive (images are divided by "
            f"it). Got {value!r}. {fix}"
        )
    return values


def from_weights(weights) -> Preprocessing:
    """Read the preprocessing of a torchvision weights enum member."""
    preset = weights.transforms()
    try:
        return _from_preset(preset)
    except AttributeError:
        raise ValueError(
            f"The weights {weights} come with preprocessing of type "
            f"{type(preset).__name__}, not image classification. sktransfer uses "
            "image classification weights; pass preprocessing=dict(...) to set "
            "the resize, crop and normalisation yourself."
        ) from None


def _from_preset(preset) -> Preprocessing:
    return Preprocessing(
        resize_size=int(preset.resize_size[0]),
        crop_size=int(preset.crop_size[0]),
        mean=tuple(float(m) for m in preset.mean),
        std=tuple(float(s) for s in preset.std),
        interpolation=InterpolationMode(preset.interpolation).value,
        antialias=bool(preset.antialias),
    )


def default_preprocessing() -> Preprocessing:
    """Preprocessing for models that carry no weights metadata.

    These are torchvision's own defaults for ImageNet classification presets
    (read from ``ImageClassification``, not restated here).
    """
    from torchvision.transforms._presets import ImageClassification

    return _from_preset(ImageClassification(crop_size=224))


def resolve(spec, auto: Preprocessing, named) -> Preprocessing:
    """Resolve the ``preprocessing`` parameter against the automatic choice.

    ``spec`` is ``"auto"``, a weights name (``named(spec)`` returns that
    weights' preprocessing), a :class:`Preprocessing`, or a mapping of fields
    that override ``auto`` (e.g. ``{"resize_size": 128, "crop_size": 112}``).
    """
    if isinstance(spec, str):
        return auto if spec == "auto" else named(spec)
    if isinstance(spec, Preprocessing):
        return spec
    if isinstance(spec, Mapping):
        known = {f.name for f in fields(Preprocessing)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(
                f"The 'preprocessing' parameter has unknown keys {unknown}. "
                f"Accepted keys: {sorted(known)}."
            )
        return replace(auto, **spec)  # (checked by Preprocessing)
    raise TypeError(
        "The 'preprocessing' parameter must be 'auto', a weights name such as "
        "'IMAGENET1K_V1', a dict of overrides such as "
        "{'resize_size': 128, 'crop_size': 112}, or a "
        f"sktransfer.Preprocessing. Got {spec!r}."
    )
