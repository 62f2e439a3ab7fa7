"""Image files and PIL images to correct pixel arrays.

The rules (the user guide's "Images and files" page), all without touching Pillow's
global settings:

- only ordinary formats are opened: JPEG (and MPO, the multi-picture JPEG of
  some cameras), PNG, WebP, BMP, TIFF and GIF; other decoders are never
  reached, whatever the file's name or content;
- the pixel count is checked against ``max_pixels`` from the header, before
  anything is decoded (decompression bombs);
- reduced decoding (``min_side``): a JPEG is decoded directly at 1/2, 1/4
  or 1/8 of its size (libjpeg's DCT-domain scaling, Pillow's
  ``Image.draft``), the largest reduction that keeps its shorter side at or
  above :data:`REDUCING_GAP` times ``min_side``, the side the preprocessing
  resizes it to; the resize then still shrinks it by that much or more. A
  12-MP photo costs a fraction of a full decode. ``max_pixels`` is judged on
  the file's real size; other formats are decoded in full;
- truncated files raise (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never set);
- the EXIF orientation is applied, so a rotated photo and its upright twin
  give the same pixels;
- multi-frame files (animated GIF/WebP, multi-page TIFF): the first frame;
- colour: 1-bit, grayscale, palette, CMYK and YCbCr images become RGB;
  transparency (alpha channel, palette or colour-key transparency) is
  composited on a white background (:data:`BACKGROUND`);
- depth: 16-bit images stay 16-bit (``uint16``, scaled from 0..65535 later,
  never clipped to 255); 32-bit integer images are scaled from 0..2**31 - 1
  (negative values are refused); 32-bit float images must lie in [0, 1].

The result is an ``(H, W, 3)`` uint8 array, or an ``(H, W)`` uint16 or
float32 array for deep grayscale images.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
import torch
from PIL import (  # noqa: F401  (importing a plugin registers its format)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from sktransfer._common import read_regular_file
from sktransfer._device import own_stream
from sktransfer._identity import digest

__all__ = [
    "BACKGROUND",
    "DECODER_TAG",
    "DEFAULT_MAX_PIXELS",
    "EXTENSIONS",
    "FORMATS",
    "decode",
    "encoded_digest",
    "plan_reduced_decoding",
    "decode_jpegs_on",
    "device_decodable",
    "check_file_size",
    "max_file_bytes",
    "read_bytes",
    "to_array",
]

FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF")
EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".webp",
    ".bmp",
    ".dib",
    ".tif",
    ".tiff",
    ".gif",
)
#: Colour that transparent pixels are composited on.
BACKGROUND = (255, 255, 255)
#: Pillow's own default limit (about 0.25 GB of RGB pixels).
DEFAULT_MAX_PIXELS = 89_478_485
#: Part of the cache key of encoded images: change it when these rules change.
DECODER_TAG = "decode-v1:exif,white,first-frame"


#: Reduced decoding keeps at least this many times the resize target, as
#: Pillow's ``thumbnail`` does by default: the DCT scaling is a box filter,
#: and leaving the last 2x or more of the shrinking to the antialiased
#: resize about halves its effect on the rows (figures in
#: ``benchmarks/RESULTS.md``, from ``bench_reduced_decoding.py``).
REDUCING_GAP = 2


def encoded_digest(data: bytes, min_side: int | None) -> str:
    """The image part of the cache key of an encoded image: its bytes and
    the decoding rules, reduced decoding included (whose rows differ
    slightly from those of a full decode)."""
    tag = DECODER_TAG
    if min_side is not None:
        tag = f"{DECODER_TAG},reduced>={min_side}x{REDUCING_GAP}"
    return digest(tag, data)


def plan_reduced_decoding(images, enabled: bool, preprocessing, device) -> None:
    """Set an input adapter's ``decode_min_side``: the resize target when
    reduced decoding is on and JPEGs are decoded on the CPU (on CUDA they go
    to nvJPEG at full size), else None (every file decoded in full)."""
    size = preprocessing.resize_size
    on = enabled and size is not None and device.type != "cuda"
    images.decode_min_side = int(size) if on else None


_ORIENTATION = 0x0112  # EXIF tag
_UINT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_FLOAT_SLACK = 0.01


def max_file_bytes(max_pixels: int | None) -> int | None:
    """The largest image file read for a pixel limit: 8 bytes a pixel (a
    16-bit RGBA image, uncompressed) plus 1 MiB of metadata; None: no bound."""
    return None if max_pixels is None else 8 * max_pixels + (1 << 20)


def check_file_size(size: int, max_pixels: int | None) -> None:
    """Refuse a file too large to hold an image within ``max_pixels``."""
    bound = max_file_bytes(max_pixels)
    if bound is not None and size > bound:
        raise ValueError(
            f"the file is {size:,} bytes, more than an image of "
            f"max_pixels={max_pixels:,} can take ({bound:,} bytes); it is not "
            "read. If it is a genuine image, raise max_pixels"
        )


def read_bytes(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes:
    """The file's content, refused unread if it is larger than an image of
    ``max_pixels`` can be, or if it is not a regular file (a FIFO or a
    device is never waited on: ``_common.read_regular_file``); the file is
    closed before this returns."""
    data = read_regular_file(
        path,
        max_file_bytes(max_pixels),
        check_size=lambda size: check_file_size(size, max_pixels),
    )
    check_file_size(len(data), max_pixels)  # (it grew while being read)
    if not data:
        raise ValueError("the file is empty (0 bytes)")
    return data


def decode(data: bytes, max_pixels: int | None, min_side: int | None = None):
    """Decode an encoded image (the bytes of a file) to a pixel array.

    ``min_side``: decode JPEGs reduced, to a shorter side of at least
    :data:`REDUCING_GAP` times this many pixels, when that saves at least
    half of each side.
    """
    formats = [name for name in FORMATS if name in Image.OPEN]  # WebP is optional
    with Image.open(io.BytesIO(data), formats=formats) as image:
        if min_side is not None and image.format in ("JPEG", "MPO"):
            _check_pixels(image, max_pixels)  # on the real size, not the draft's
            width, height = image.size
            scale = REDUCING_GAP * min_side / min(width, height)
            if scale <= 0.5:
                # the smallest 1/2^k size at least this large, in both sides
                wanted = (math.ceil(width * scale), math.ceil(height * scale))
                image.draft(image.mode, wanted)
        return to_array(image, max_pixels)


def device_decodable(data: bytes, max_pixels: int | None) -> int:
    """The image's pixel count if an accelerator's JPEG decoder gives these
    bytes the pixels that :func:`decode` would, else 0: a plain JPEG (not
    MPO), RGB or grayscale (not CMYK), upright (no EXIF rotation to apply),
    within ``max_pixels``. Only the header is read; anything else is left to
    :func:`decode`."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            width, height = image.size
            decodable = (
                image.format == "JPEG"
                and image.mode in ("RGB", "L")
                and image.getexif().get(_ORIENTATION, 1) == 1
                and (max_pixels is None or width * height <= max_pixels)
            )
            return width * height if decodable else 0
    except Exception:  # not a JPEG, or a broken one: decode() says why
        return 0


def decode_jpegs_on(datas: list[bytes], device) -> list:
    """Decode JPEG files (checked by :func:`device_decodable`) on ``device``
    in one call (nvJPEG on CUDA), as ``(3, H, W)`` uint8 tensors there.

    Raises RuntimeError if any of them fails: the caller decodes them again
    with :func:`decode`, which says which and why; or, out of device memory
    (the outputs take 3 bytes a pixel), in smaller calls.
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as exc:  # (a torchvision without its decoders)
        raise RuntimeError(f"torchvision cannot decode JPEGs here: {exc}") from exc

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    if torch.device(device).type != "cuda":
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    with _decode_stream(device) as stream:
        images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return _ordered(images, stream)  # (on the caller's stream again)


# torchvision 0.29 deprecates its decoders for TorchCodec's; they still work,
# and TorchCodec is no dependency of ours. One filter for that message, set
# once: ``warnings.catch_warnings`` around each call is not thread-safe
# (decoding runs on worker and Dask threads).
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)


@contextlib.contextmanager
def _decode_stream(device):
    """Make a stream of this thread's own for decoding on ``device``
    (:func:`~sktransfer._device.own_stream`) the current one, and yield it.

    torchvision's nvJPEG decoder allocates its outputs on the current stream
    but writes them from a private stream that waits for nothing queued
    before (pytorch/vision PR 9606). On the caller's stream, the caching
    allocator may hand it memory that kernels still queued there (the
    previous batch's) are reading: rows and pixels silently corrupted. On a
    stream of its own, it only gets memory that decoding used (and freed
    once the caller's kernels that read it ended, :func:`_ordered`), and the
    stream is synchronised first, so no earlier decode still writes there.
    """
    stream = own_stream(torch.device(device), "decode")
    stream.synchronize()
    with torch.cuda.stream(stream):
        yield stream


def _ordered(images: list, stream) -> list:
    """Decoded ``images`` for the caller's stream: it waits for the
    decoding stream, and their memory is not reused before its kernels that
    read them have run."""
    current = torch.cuda.current_stream(stream.device)
    current.wait_stream(stream)
    for image in images:
        image.record_stream(current)
    return images


def _check_open(image: Image.Image) -> None:
    """Refuse a PIL image whose pixels are gone: closed by ``image.close()``
    (its core is a DeferredError), or opened from a file by
    ``Image.open`` and never loaded before its file was closed (a ``with
    Image.open(path) as image:`` block ended; Pillow then fails with a bare
    AssertionError)."""
    # Read without Pillow's ``im`` property, which asserts on images that
    # are not loaded yet.
    core = image.__dict__.get("_im", image.__dict__.get("im"))
    closed = type(core).__name__ == "DeferredError" or (
        core is None and getattr(image, "fp", None) is None
    )
    if closed:
        raise ValueError(
            "the PIL image is closed (image.close(), or the `with "
            "Image.open(...)` block that opened it ended before its pixels "
            "were read); pass an open image (call image.load() inside the "
            "block), or the file's path"
        )


def _check_pixels(image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"the image is {width}x{height} = {width * height:,} pixels, more "
            f"than max_pixels={max_pixels:,} (a decompression bomb?). If it is "
            "a genuine image, raise max_pixels."
        )


def to_array(image: Image.Image, max_pixels: int | None) -> np.ndarray:
    """The pixels of a PIL image by the rules of this module (a new array)."""
    _check_open(image)
    _check_pixels(image, max_pixels)
    file_format = image.format
    if image.getexif().get(_ORIENTATION, 1) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _UINT16_MODES or (mode == "I" and file_format == "PNG"):
        # 16-bit grayscale (older Pillow opens 16-bit PNGs as mode "I").
        return np.array(image).astype(np.uint16)
    if mode == "I":
        array = np.array(image)
        if array.min() < 0:
            raise ValueError(
                "the 32-bit integer image has negative values; sktransfer reads "
                "integer images as intensities from 0 to 2**31 - 1"
            )
        return (array / (2**31 - 1)).astype(np.float32)
    if mode == "F":
        array = np.array(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("the float image contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
            raise ValueError(
                f"the float image has values in [{low:g}, {high:g}]; float images "
                "must have values in [0, 1] (rescale it and pass the array)"
            )
        return array
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)
