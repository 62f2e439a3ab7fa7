"""Images given one by one: files, bytes, PIL images, arrays of any size.

Every file here is written by the test itself with Pillow.
"""

import io
import os
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from sktransfer import PretrainedFeatureExtractor, list_images, load_image_folder
from sktransfer._images.decode import BACKGROUND, decode, to_array
from sktransfer._images.inputs import ListImages, as_images
from sktransfer.exceptions import FolderLinkWarning, ImageReadError

from .conftest import SMALL, TinyCNN, assert_same_rows


def make_extractor(**params):
    torch.manual_seed(0)
    defaults = dict(
        model=TinyCNN(),
        preprocessing=SMALL,
        precision="float32",
        cache=None,
        verbose=False,
        num_workers=2,
    )
    return PretrainedFeatureExtractor(**{**defaults, **params})


@pytest.fixture(scope="module")
def extractor():
    rgb = np.zeros((1, 40, 48, 3), np.uint8)
    return make_extractor().fit(rgb)


def save(path, image, **kwargs):
    image.save(path, **kwargs)
    return str(path)


def rgb_image(seed=0, size=(48, 40)):
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3))
    return Image.fromarray(array.astype(np.uint8))


# -- containers ----------------------------------------------------------


def test_every_container_gives_the_rows_of_the_array(extractor, images, tmp_path):
    """Lists, tuples, object arrays, Series, paths, bytes and PIL images all
    give exactly the rows of the same images as one array."""
    pd = pytest.importorskip("pandas")
    expected = extractor.transform(images)
    paths = [
        save(tmp_path / f"{i}.png", Image.fromarray(x)) for i, x in enumerate(images)
    ]
    containers = {
        "list of arrays": list(images),
        "tuple of arrays": tuple(images),
        "list of tensors": [torch.from_numpy(x).permute(2, 0, 1) for x in images],
        "paths": paths,
        "pathlib paths": [tmp_path / f"{i}.png" for i in range(len(images))],
        "object array": np.asarray(paths, dtype=object),
        "series": pd.Series(paths, index=range(100, 100 + len(paths))),
        "bytes": [Path(p).read_bytes() for p in paths],
        "PIL images": [Image.open(p) for p in paths],
    }
    for name, X in containers.items():
        np.testing.assert_array_equal(extractor.transform(X), expected, err_msg=name)


def test_images_of_different_sizes_get_their_own_rows(extractor):
    rng = np.random.default_rng(1)
    shapes = [(40, 48, 3), (64, 33, 3), (40, 48), (20, 90, 3), (40, 48, 3)]
    X = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    out = extractor.transform(X)
    assert out.shape == (5, extractor.n_features_out_)
    for i, image in enumerate(X):
        alone = extractor.transform(image[None])
        np.testing.assert_allclose(out[i], alone[0], rtol=1e-5, atol=1e-6)


def test_rows_do_not_depend_on_batch_or_workers(images, tmp_path):
    paths = [
        save(tmp_path / f"{i}.png", Image.fromarray(x)) for i, x in enumerate(images)
    ]
    results = [
        make_extractor(batch_size=b, num_workers=w).fit(paths).transform(paths)
        for b, w in [(1, 0), (4, 1), (64, 3)]
    ]
    for out in results[1:]:
        np.testing.assert_allclose(out, results[0], rtol=1e-5, atol=1e-6)


def test_wrong_element_type_is_a_type_error_naming_its_index(extractor, images):
    with pytest.raises(TypeError, match="Image 2 of the input is a builtins.int"):
        extractor.transform([images[0], images[1], 7])
    with pytest.raises(ValueError, match="Image 1 of the input is a 4-D array"):
        extractor.transform([images[0], images[:2]])
    with pytest.raises(ValueError, match="image 1 has values in"):
        extractor.transform([images[0], images[0].astype(np.float32)])  # 0..255
    with pytest.raises(TypeError, match="single"):
        extractor.transform("photo.jpg")
    with pytest.raises(ValueError, match="0 images"):
        extractor.transform([])


def test_estimator_fits_on_paths_and_works_in_a_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    for label, level in (("dark", 40), ("light", 210)):
        (tmp_path / label).mkdir()
        for i in range(6):
            array = np.clip(rng.normal(level, 20, (30, 30, 3)), 0, 255)
            save(tmp_path / label / f"{i}.jpg", Image.fromarray(array.astype(np.uint8)))
    X, y = load_image_folder(tmp_path)
    pipe = make_pipeline(make_extractor(), LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.9
    fitted = pipe.fit(list(X), y)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))


# -- folders -------------------------------------------------------------


def test_list_images_and_load_image_folder(tmp_path):
    for rel in ["b/2.PNG", "b/sub/3.jpeg", "a/1.jpg", "a/.hidden.jpg", "a/._1.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / ".git").mkdir()
    (tmp_path / "top.png").write_bytes(b"x")
    names = [os.path.relpath(p, tmp_path) for p in list_images(tmp_path)]
    assert names == ["a/1.jpg", "b/2.PNG", "b/sub/3.jpeg", "top.png"]
    flat = list_images(tmp_path, recursive=False)
    assert [os.path.basename(p) for p in flat] == ["top.png"]
    X, y = load_image_folder(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in X] == names[:3]
    assert y.tolist() == ["a", "b", "b"]
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="has no image files"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no class folders"):
        load_image_folder(tmp_path / "b" / "sub")


def _class_tree(root):
    """root/cat/{0,1}.png, root/cat/sub/2.png, root/dog/{0,1}.png, a root
    image, and outside/{0,1}.png beside root."""
    for rel in ["cat/0.png", "cat/1.png", "cat/sub/2.png", "dog/0.png", "dog/1.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "top.png").write_bytes(b"x")
    (root.parent / "outside").mkdir()
    for name in ("0.png", "1.png"):
        (root.parent / "outside" / name).write_bytes(b"x")


@pytest.mark.parametrize(
    "links",
    [
        {"kitty": "cat"},  # a second name for a class
        {"all": "."},  # the root itself
        {"up": ".."},  # above the root
        {"kitten": "cat/sub"},  # into another class's tree
        {"a_cat": "cat", "z_dog": "dog"},  # sorting before and after the real one
        {"cat/dogs": "../dog", "dog/loop": ".."},  # inside a class
        {"cat/puppies": "../dog/.."},  # the root, by another path
        {"x": "../outside", "y": "../outside"},  # two links to one folder
    ],
)
def test_a_link_never_labels_an_image_twice(tmp_path, links):
    """Links to the root, above it, into a class folder or to a folder
    listed already are cut and named: each image once, under its class."""
    root = tmp_path / "root"
    _class_tree(root)
    for name, target in links.items():
        os.symlink(target, root / name)
    with pytest.warns(FolderLinkWarning) as record:
        X, y = load_image_folder(root)
    assert len(X) == len(set(map(os.path.realpath, X)))
    expected = {"cat": 3, "dog": 2, "x": 2} if "x" in links else {"cat": 3, "dog": 2}
    assert dict(zip(*np.unique(y, return_counts=True), strict=True)) == expected
    for path, label in zip(X, y, strict=True):
        real = Path(os.path.realpath(path))
        if real.parent.name != "outside":
            assert real.relative_to(root.resolve()).parts[0] == label
    message = " ".join(str(w.message) for w in record)
    cut = [name for name in links if name != "x"]
    for name in cut:
        assert str(root / name) in message
    assert f"{len(cut)} link(s)" in message


def test_a_link_to_a_folder_elsewhere_is_followed(tmp_path):
    """A class folder that is a link to a folder outside the root (and not a
    class by another name), or such a link inside a class, is followed,
    without a warning."""
    root = tmp_path / "root"
    _class_tree(root)
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "9.png").write_bytes(b"x")
    os.symlink("../outside", root / "elsewhere")
    os.symlink("../../more", root / "dog" / "more")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FolderLinkWarning)
        X, y = load_image_folder(root)
        assert len(list_images(root)) == 3 + 3 + 2 + 1
    assert y.tolist() == ["cat"] * 3 + ["dog"] * 3 + ["elsewhere"] * 2
    assert [os.path.relpath(p, root) for p in X[3:]] == [
        "dog/0.png",
        "dog/1.png",
        "dog/more/9.png",
        "elsewhere/0.png",
        "elsewhere/1.png",
    ]


@pytest.mark.parametrize(
    "links", [{"all": "."}, {"again": "cat"}, {"cat/up": "../.."}, {"b": "cat/sub"}]
)
def test_list_images_lists_each_file_once_by_its_own_path(tmp_path, links):
    """A link to the folder, above it or to a folder listed through its own
    path is cut and named; each file comes once, by its real path."""
    root = tmp_path / "root"
    _class_tree(root)
    for name, target in links.items():
        os.symlink(target, root / name)
    with pytest.warns(FolderLinkWarning) as record:
        paths = list_images(root)
    names = [os.path.relpath(p, root) for p in paths]
    assert names == [
        "cat/0.png",
        "cat/1.png",
        "cat/sub/2.png",
        "dog/0.png",
        "dog/1.png",
        "top.png",
    ]
    message = str(record[0].message)
    assert all(str(root / name) in message for name in links)


@pytest.mark.parametrize(
    "names",
    [
        ["#1.png", "b.png ", "b.png", " c.png", "\tc.png"],  # comment-like, spaces
        ["a.png", "# not a comment", "#", "a.png\t", "a.png\x0c"],
        ["x\u2028y.png", "x\x85y.png", "x\ry.png", "x\x0bz.png", "\u2029.png"],
    ],
)
@pytest.mark.parametrize("terminator", ["\n", "\r\n"])
@pytest.mark.parametrize("last", [True, False])
def test_a_list_file_is_read_line_by_line_verbatim(tmp_path, names, terminator, last):
    """Each line is one path, only its terminator removed: no comments, no
    stripping, no other line breaks; a Windows file's \r\n is a terminator."""
    from sktransfer._images.folders import read_list_file

    text = terminator.join(names) + (terminator if last else "")
    (tmp_path / "files.txt").write_bytes(text.encode())
    assert read_list_file(tmp_path / "files.txt") == names


def test_a_list_file_keeps_a_trailing_carriage_return_of_a_unix_file(tmp_path):
    """Lines of a \n file that end in \r (not all of them): the \r is part of
    the name."""
    from sktransfer._images.folders import read_list_file

    (tmp_path / "files.txt").write_bytes(b"a.png\r\nb.png\n")
    assert read_list_file(tmp_path / "files.txt") == ["a.png\r", "b.png"]


def test_a_list_file_with_names_that_are_not_utf8(tmp_path):
    """Bytes that are not UTF-8 become the name os.listdir would give."""
    from sktransfer._images.folders import read_list_file

    (tmp_path / "files.txt").write_bytes(b"\xff.png\nok.png\n\xe9t\xe9.png\n")
    names = read_list_file(tmp_path / "files.txt")
    assert [os.fsencode(n) for n in names] == [b"\xff.png", b"ok.png", b"\xe9t\xe9.png"]


@pytest.mark.parametrize(
    "text, line",
    [
        ("a.png\n\nb.png\n", 2),
        ("\na.png\n", 1),
        ("a.png\nb.png\n\n", 3),
        ("a\r\n\r\n", 2),
    ],
)
def test_an_empty_line_of_a_list_file_is_an_error_naming_it(tmp_path, text, line):
    """An empty line is not skipped: every line is a row."""
    from sktransfer._images.folders import read_list_file

    (tmp_path / "files.txt").write_bytes(text.encode())
    with pytest.raises(ValueError, match=f"Line {line} of the list file .* is empty"):
        read_list_file(tmp_path / "files.txt")


# -- decoding ------------------------------------------------------------


def decoded(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return decode(buffer.getvalue(), max_pixels=None)


def test_exif_orientation_is_applied(extractor, tmp_path):
    upright = rgb_image(size=(48, 32))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera saves it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    np.testing.assert_array_equal(
        decoded(stored, exif=exif.tobytes()), np.asarray(upright)
    )
    # JPEG: lossy, so the twin is close rather than equal.
    smooth = Image.fromarray(
        np.kron(np.asarray(upright)[::8, ::8], np.ones((8, 8, 1))).astype(np.uint8)
    )
    paths = [
        save(tmp_path / "upright.jpg", smooth, quality=95),
        save(
            tmp_path / "rotated.jpg",
            smooth.transpose(Image.Transpose.ROTATE_90),
            quality=95,
            exif=exif.tobytes(),
        ),
    ]
    a, b = (decode(Path(p).read_bytes(), None) for p in paths)
    assert a.shape == b.shape == (32, 48, 3)
    assert np.abs(a.astype(int) - b).mean() < 3
    rows = extractor.transform(paths)
    np.testing.assert_allclose(rows[0], rows[1], rtol=0.05, atol=0.02)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 40, 0)
    rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]
    out = decoded(Image.fromarray(rgba, "RGBA"))
    alpha = rgba[..., 3:] / 255
    expected = np.round(alpha * rgba[..., :3] + (1 - alpha) * np.array(BACKGROUND))
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert tuple(out[0, 0]) == BACKGROUND
    la = Image.fromarray(
        np.dstack([np.full((2, 2), 10), [[0, 255], [0, 255]]]).astype(np.uint8), "LA"
    )
    assert decoded(la)[:, :, 0].tolist() == [[255, 10], [255, 10]]
    # Palette with a transparent index (GIF).
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    out = decoded(palette, "GIF", transparency=0)
    assert out.tolist() == [[list(BACKGROUND), [0, 0, 255]]]


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr"])
def test_colour_modes_become_rgb(mode):
    image = rgb_image(3).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else "TIFF"
    out = decoded(image, fmt)
    assert out.dtype == np.uint8 and out.shape == (40, 48, 3)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    np.testing.assert_array_equal(out, np.asarray(Image.open(buffer).convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_are_scaled_never_clipped(extractor, fmt, tmp_path):
    deep = (np.arange(40 * 48).reshape(40, 48) * 28).astype(np.uint16)
    out = decoded(Image.fromarray(deep), fmt)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, deep)  # values above 255 kept
    path = save(tmp_path / f"deep.{fmt.lower()}", Image.fromarray(deep))
    np.testing.assert_array_equal(
        extractor.transform([path]), extractor.transform(deep[None])
    )
    half = save(tmp_path / f"half.{fmt.lower()}", Image.fromarray(deep // 2))
    assert not np.allclose(extractor.transform([half]), extractor.transform([path]))


def test_32_bit_images():
    ints = (np.arange(12).reshape(3, 4) * 100_000_000).astype(np.int32)
    out = decoded(Image.fromarray(ints), "TIFF")
    np.testing.assert_allclose(out, ints / (2**31 - 1), rtol=1e-6)
    floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(decoded(Image.fromarray(floats), "TIFF"), floats)
    with pytest.raises(ValueError, match="values in"):
        decoded(Image.fromarray(floats * 300), "TIFF")
    with pytest.raises(ValueError, match="negative"):
        decoded(Image.fromarray(-ints), "TIFF")


def test_animations_and_multipage_files_give_the_first_frame():
    frames = [rgb_image(seed) for seed in range(3)]
    for fmt in ("GIF", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
        with Image.open(buffer) as reopened:
            assert getattr(reopened, "n_frames", 1) == 3, fmt
            first = np.asarray(reopened.convert("RGB"))
        np.testing.assert_array_equal(decode(buffer.getvalue(), None), first)


def test_pil_images_are_not_modified():
    image = rgb_image().convert("RGBA")
    before = np.asarray(image).copy()
    to_array(image, None)
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image), before)


# -- bad files -----------------------------------------------------------


@pytest.fixture
def hazards(tmp_path):
    """A folder of good and bad files: {name: (path, good)}."""
    good = rgb_image(5)
    jpeg = io.BytesIO()
    good.save(jpeg, format="JPEG")
    png = io.BytesIO()
    good.save(png, format="PNG")
    files = {
        "good.jpg": jpeg.getvalue(),
        "empty.jpg": b"",
        "text.jpg": b"This is a text file renamed to .jpg\n" * 20,
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "good.png": png.getvalue(),
    }
    ppm = io.BytesIO()
    good.save(ppm, format="PPM")  # a format Pillow reads, but not an accepted one
    files["netpbm.jpg"] = ppm.getvalue()
    paths = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    paths["missing.jpg"] = str(tmp_path / "missing.jpg")
    (tmp_path / "folder.jpg").mkdir()
    paths["folder.jpg"] = str(tmp_path / "folder.jpg")
    bomb = Image.new("L", (4000, 3000))  # 12 Mpx of zeros: a 12 KB PNG
    paths["bomb.png"] = save(tmp_path / "bomb.png", bomb)
    return paths


@pytest.fixture
def good_hazards(tmp_path):
    """Readable files that need care: {name: (path, the pixels they hold)}."""
    upright = rgb_image(6, size=(48, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = np.dstack([np.asarray(upright), np.tile([0, 128, 255], (32, 16))])
    alpha = rgba[..., 3:] / 255
    composite = np.round(alpha * rgba[..., :3] + (1 - alpha) * np.array(BACKGROUND))
    deep = (np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)
    frames = [rgb_image(seed).quantize(16).convert("RGB") for seed in (7, 8)]
    cmyk = io.BytesIO()
    upright.convert("CMYK").save(cmyk, format="JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(cmyk.getvalue())
    return {
        "rotated.png": (
            save(
                tmp_path / "rotated.png",
                upright.transpose(Image.Transpose.ROTATE_90),
                exif=exif.tobytes(),
            ),
            np.asarray(upright),
        ),
        "rgba.png": (
            save(tmp_path / "rgba.png", Image.fromarray(rgba.astype(np.uint8))),
            composite.astype(np.uint8),
        ),
        "deep.tif": (save(tmp_path / "deep.tif", Image.fromarray(deep)), deep),
        "animated.gif": (
            save(
                tmp_path / "animated.gif",
                frames[0],
                save_all=True,
                append_images=frames[1:],
            ),
            np.asarray(frames[0]),
        ),
        "cmyk.jpg": (
            str(tmp_path / "cmyk.jpg"),
            np.asarray(Image.open(cmyk).convert("RGB")),
        ),
    }


def test_a_folder_of_every_hazard_gives_the_right_rows_or_errors(hazards, good_hazards):
    """Good files give the rows of the pixels they hold (rotated, composited,
    16-bit, first frame...); bad ones NaN rows and errors, in place."""
    X = [hazards[n] for n in sorted(hazards)] + [p for p, _ in good_hazards.values()]
    extractor = make_extractor(on_error="nan", max_pixels=1_000_000).fit(X[-1:])
    with pytest.warns(UserWarning, match=f"{len(BAD)} of {len(X)} images"):
        out = extractor.transform(X)
    bad = {i for i, n in enumerate(sorted(hazards)) if n in BAD}
    assert {e.index for e in extractor.errors_} == bad
    for i, row in enumerate(out):
        assert np.isnan(row).all() == (i in bad)
    rows = {X[i]: out[i] for i in range(len(X))}
    for name, (path, pixels) in good_hazards.items():
        expected = extractor.transform(pixels[None])[0]
        np.testing.assert_allclose(rows[path], expected, rtol=1e-5, err_msg=name)


BAD = {
    "empty.jpg": "empty",
    "text.jpg": "not an image in an accepted format",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated|Truncated|EOF|broken",
    "netpbm.jpg": "not an image in an accepted format",
    "missing.jpg": "no such file",
    "folder.jpg": "directory",
    "bomb.png": "max_pixels",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_file_raises_one_error_naming_row_and_path(extractor, hazards, name):
    X = [hazards["good.jpg"], hazards["good.png"], hazards[name]]
    flags = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    with pytest.raises(ImageReadError, match=BAD[name]) as info:
        make_extractor(max_pixels=1_000_000).fit(X[:1]).transform(X)
    error = info.value
    assert (error.index, error.path) == (2, hazards[name])
    assert f"Image 2 ({hazards[name]!r})" in str(error)
    assert isinstance(error, OSError) and isinstance(error, ValueError)
    assert error.__cause__ is not None
    assert flags == (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file"
)
def test_permission_denied(extractor, tmp_path):
    path = save(tmp_path / "secret.png", rgb_image())
    os.chmod(path, 0)
    with pytest.raises(ImageReadError, match="permission denied"):
        extractor.transform([path])


def test_the_pixel_limit_is_checked_before_decoding(hazards, monkeypatch):
    def fail(*args):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", fail)
    data = Path(hazards["bomb.png"]).read_bytes()
    with pytest.raises(ValueError, match="12,000,000 pixels"):
        decode(data, max_pixels=1_000_000)


@pytest.mark.parametrize("cache", [None, "memory"])
def test_on_error_nan_keeps_every_other_row_in_place(hazards, cache):
    names = sorted(hazards)
    X = [hazards[n] for n in names] + [None]
    extractor = make_extractor(on_error="nan", max_pixels=1_000_000, cache=cache)
    extractor.fit(X)
    with pytest.warns(UserWarning, match=f"{len(BAD) + 1} of {len(X)} images"):
        out = extractor.transform(X)
    failed = {i for i, n in enumerate(names) if n in BAD} | {len(names)}
    assert {e.index for e in extractor.errors_} == failed
    assert all(e.path == X[e.index] for e in extractor.errors_)
    assert set(np.flatnonzero(np.isnan(out).any(axis=1))) == failed
    for i, name in enumerate(names):
        if name not in BAD:
            alone = make_extractor().fit([X[i]]).transform([X[i]])
            np.testing.assert_allclose(out[i], alone[0], rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():  # the failures were not cached
        warnings.simplefilter("ignore")
        assert np.isnan(extractor.transform(X)[sorted(failed)]).all()
    good = [hazards["good.png"]]
    extractor.transform(good)
    assert extractor.errors_ == []


def test_a_missing_value_is_an_unreadable_image(extractor, images):
    with pytest.raises(ImageReadError, match=r"Image 1 could not be read: a missing"):
        extractor.transform([images[0], float("nan")])


def _pandas_missing_cases(pd, paths):
    """(name, column) pairs of paths with row 1 missing, as pandas holds it."""
    cases = [
        ("string", pd.Series([paths[0], pd.NA, paths[1]], dtype="string")),
        ("object pd.NA", pd.Series([paths[0], pd.NA, paths[1]], dtype=object)),
        ("object pd.NaT", pd.Series([paths[0], pd.NaT, paths[1]], dtype=object)),
        ("list pd.NA", [paths[0], pd.NA, paths[1]]),
        ("numpy float32 NaN", [paths[0], np.float32("nan"), paths[1]]),
    ]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        column = pd.Series([paths[0], pd.NA, paths[1]], dtype="string[pyarrow]")
        cases.append(("string[pyarrow]", column))
    return cases


def test_pandas_missing_values_are_unreadable_images_like_none(tmp_path):
    """pd.NA (a pandas string column's missing value, also in object columns,
    lists and pyarrow strings) and pd.NaT are missing images, as None is: an
    error naming row 1, or a NaN row 1 with the others in place."""
    pd = pytest.importorskip("pandas")
    paths = [save(tmp_path / f"{i}.png", rgb_image(i)) for i in range(2)]
    extractor = make_extractor().fit(paths)
    expected = extractor.transform(paths)
    tolerant = make_extractor(on_error="nan").fit(paths)
    for name, X in _pandas_missing_cases(pd, paths):
        with pytest.raises(ImageReadError, match="Image 1 could not be read: a miss"):
            extractor.transform(X)
        with pytest.warns(UserWarning, match="could not be read"):
            rows = tolerant.transform(X)
        assert np.isnan(rows[1]).all(), name
        assert_same_rows(rows[[0, 2]], expected)
        assert [e.index for e in tolerant.errors_] == [1], name


# -- streaming -----------------------------------------------------------


def test_workers_stay_a_bounded_way_ahead(images, monkeypatch):
    """Reading runs about one batch ahead of the network, not to the end."""
    adapter = ListImages([images[0]] * 200, num_workers=2)
    loaded = []
    real = ListImages._load

    def counting(self, i, data=None):
        loaded.append(i)
        return real(self, i, data)

    monkeypatch.setattr(ListImages, "_load", counting)
    batches = adapter.batches(10)
    next(batches)
    assert 10 <= len(loaded) <= 10 + 10 + 2
    batches.close()
    assert len(loaded) <= 10 + 10 + 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_thousands_of_paths_leak_no_file_handles(tmp_path):
    path = save(tmp_path / "one.png", rgb_image(size=(16, 16)))
    paths = [path] * 2000 + [str(tmp_path / "missing.png")]
    extractor = make_extractor(on_error="nan", batch_size=128).fit(paths[:1])
    before = len(os.listdir("/proc/self/fd"))
    with pytest.warns(UserWarning):
        out = extractor.transform(paths)
    assert np.isfinite(out[:-1]).all()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_decoding_errors_stop_the_workers(hazards):
    """An error mid-way ends the call cleanly: no thread keeps running."""
    import threading

    X = [hazards["good.png"]] * 50 + [hazards["text.jpg"]] + [hazards["good.png"]] * 50
    adapter = as_images(X, num_workers=3)
    with pytest.raises(ImageReadError):
        list(adapter.batches(8))
    assert not [t for t in threading.enumerate() if t.name.startswith("sktransfer")]


# -- properties ----------------------------------------------------------

import hypothesis  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MODES = {
    "L": (np.uint8, ()),
    "RGB": (np.uint8, (3,)),
    "RGBA": (np.uint8, (4,)),
    "I;16": (np.uint16, ()),
}


@st.composite
def pil_images(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    dtype, channels = MODES[mode]
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    info = np.iinfo(dtype)
    array = np.random.default_rng(seed).integers(
        info.min, info.max, (height, width, *channels), dtype=dtype, endpoint=True
    )
    image = Image.fromarray(array)
    assert image.mode == mode
    return image


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    images=st.lists(pil_images(), min_size=1, max_size=5),
    batch_size=st.integers(1, 4),
    num_workers=st.integers(0, 2),
)
def test_any_image_in_any_container_gives_the_same_finite_row(
    images, batch_size, num_workers
):
    """PIL images, PNG bytes, decoded arrays and tensors: the same rows,
    finite, whatever the batch size and the number of workers."""
    extractor = make_extractor(batch_size=batch_size, num_workers=num_workers)
    extractor.fit([images[0]])
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    arrays = [to_array(image, None) for image in images]
    tensors = [torch.from_numpy(np.atleast_3d(a)).permute(2, 0, 1) for a in arrays]
    reference = extractor.transform(images)
    assert np.isfinite(reference).all()
    for X in (encoded, arrays, tensors):
        np.testing.assert_allclose(extractor.transform(X), reference, atol=1e-5)
    one_by_one = np.vstack([extractor.transform([image]) for image in images])
    np.testing.assert_allclose(one_by_one, reference, rtol=1e-5, atol=1e-5)


def _device_jpegs(tmp_path):
    """JPEGs the device decoder takes (RGB, grayscale, different sizes), and
    files it must leave to Pillow (PNG, EXIF-rotated JPEG, CMYK JPEG)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    gray = Image.fromarray(np.asarray(rgb_image(3)).mean(2).astype(np.uint8))
    images = {
        "a.jpg": (rgb_image(1, size=(48, 40)), {}),
        "b.jpg": (rgb_image(2, size=(30, 52)), {}),
        "gray.jpg": (gray, {}),
        "c.png": (rgb_image(4), {}),
        "rotated.jpg": (rgb_image(5), {"exif": exif.tobytes()}),
        "cmyk.jpg": (rgb_image(6).convert("CMYK"), {}),
        "d.jpg": (rgb_image(7, size=(40, 40)), {"progressive": True}),
    }
    return [save(tmp_path / name, im, **kw) for name, (im, kw) in images.items()]


@pytest.mark.parametrize("crop", [32, None])
def test_jpegs_decoded_on_the_device_give_pillows_rows(tmp_path, monkeypatch, crop):
    """The decode-on-device path (nvJPEG on CUDA; here torchvision's decoder on
    the CPU, the same code) gives the pixels and batches of the Pillow path;
    only plain upright RGB/grayscale JPEGs take it."""
    from sktransfer._images import decode as _decode
    from sktransfer._preprocess import Preprocessing

    paths = _device_jpegs(tmp_path)
    geometry = Preprocessing(36, crop, None, None).geometry
    calls = []
    original = _decode.decode_jpegs_on

    def counting(datas, device):
        calls.append(len(datas))
        return original(datas, device)

    monkeypatch.setattr(_decode, "decode_jpegs_on", counting)
    items = paths + [Path(paths[0]).read_bytes()]  # bytes take it too
    expected = list(ListImages(items).batches(3, None, geometry))
    ours = list(
        ListImages(items).batches(3, None, geometry, decode_device=torch.device("cpu"))
    )
    assert [start for start, _ in ours] == [start for start, _ in expected]
    for (_, a), (_, b) in zip(ours, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a.int() - b.int()).abs().max() <= 1  # libjpeg-turbo in both
    assert sum(calls) == 5  # a, b, gray, d and the bytes; not png/rotated/cmyk
    indices = [6, 0, 2]
    subset = ListImages(items).batches(2, indices, geometry, torch.device("cpu"))
    pillow = ListImages(items).batches(2, indices, geometry)
    assert [(s, len(b)) for s, b in subset] == [(s, len(b)) for s, b in pillow]


def test_a_jpeg_the_device_cannot_decode_falls_back_to_pillow(tmp_path, hazards):
    """A broken JPEG in a device batch: the batch is decoded again by Pillow,
    which names the bad file (raise) or skips its row (nan)."""
    from sktransfer._preprocess import Preprocessing

    geometry = Preprocessing(32, 32, None, None).geometry
    good = _device_jpegs(tmp_path)[:2]
    items = [good[0], hazards["truncated.jpg"], good[1]]
    cpu = torch.device("cpu")
    with pytest.raises(ImageReadError) as info:
        list(ListImages(items).batches(4, None, geometry, cpu))
    assert info.value.index == 1
    lenient = ListImages(items, on_error="nan")
    batches = list(lenient.batches(4, None, geometry, cpu))
    assert [(start, len(batch)) for start, batch in batches] == [(0, 1), (2, 1)]
    assert list(lenient.errors) == [1]


def test_jpegs_over_the_pixel_limit_never_reach_the_device_decoder(tmp_path):
    """The pixel limit is checked from the header before the device decoder
    sees a file: the Pillow path then refuses it as a bomb."""
    from sktransfer._images.decode import device_decodable

    path = _device_jpegs(tmp_path)[0]  # 48x40 = 1920 pixels
    data = Path(path).read_bytes()
    assert device_decodable(data, None) and device_decodable(data, 1920)
    assert not device_decodable(data, 1919)
    images = ListImages([path], max_pixels=1919)
    with pytest.raises(ImageReadError, match="max_pixels"):
        list(images.batches(2, None, None, torch.device("cpu")))


# -- reduced decoding of large JPEGs ---------------------------------------------
def big_photo(size=(1600, 1200), seed=0):
    """A photo-like image: scikit-learn's sample photo, upscaled, with grain."""
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[seed])
    pixels = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), np.float32)
    grain = np.random.default_rng(seed).normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))


def jpeg(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "min_side, shape",
    [
        (100, (300, 400)),
        (150, (300, 400)),
        (151, (600, 800)),
        (224, (600, 800)),
        (300, (600, 800)),
        (301, (1200, 1600)),
        (None, (1200, 1600)),
    ],
)
def test_large_jpegs_are_decoded_reduced_never_below_the_target(min_side, shape):
    """The largest 1/2^k reduction whose shorter side stays >= twice the
    resize target (REDUCING_GAP)."""
    array = decode(jpeg(big_photo()), None, min_side)
    assert array.shape == (*shape, 3)


def test_reduced_decoding_is_close_to_a_full_decode_and_keeps_the_rules():
    """A reduced decode looks like the full one shrunk; EXIF orientation,
    grayscale and CMYK keep their rules; PNGs are decoded in full."""
    photo = big_photo()
    full = Image.fromarray(decode(jpeg(photo), None))
    reduced = decode(jpeg(photo), None, 150)
    shrunk = np.asarray(full.resize((400, 300), Image.Resampling.BOX), np.float32)
    assert np.abs(reduced - shrunk).mean() < 3  # of 255 levels
    # EXIF orientation 6 (rotated 90 degrees clockwise for display)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = photo.transpose(Image.Transpose.ROTATE_90)
    upright = decode(jpeg(stored, exif=exif), None, 150)
    assert upright.shape == reduced.shape
    assert np.abs(upright.astype(np.float32) - reduced).mean() < 3
    for mode in ("L", "CMYK"):
        out = decode(jpeg(photo.convert(mode)), None, 150)
        assert out.shape == (300, 400, 3) and out.dtype == np.uint8
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    assert decode(buffer.getvalue(), None, 224).shape == (1200, 1600, 3)


def test_max_pixels_is_judged_on_the_full_size():
    """A JPEG over max_pixels is refused even though its draft would fit."""
    with pytest.raises(ValueError, match="1,920,000 pixels, more than"):
        decode(jpeg(big_photo()), 1_000_000, 224)


def test_reduced_rows_are_close_and_cached_apart(tmp_path):
    """Rows of reduced and full decoding differ by little, are never served
    for each other by the cache, and each equals its uncached row."""
    from sktransfer import EmbeddingCache

    paths = []
    for seed in (0, 1):
        path = tmp_path / f"{seed}.jpg"
        path.write_bytes(jpeg(big_photo(seed=seed)))
        paths.append(str(path))
    common = dict(model="resnet18", weights=None, random_state=0, verbose=False)
    cache = EmbeddingCache()
    reduced = PretrainedFeatureExtractor(cache=cache, **common).fit(paths)
    full = PretrainedFeatureExtractor(
        cache=cache, reduced_decoding=False, **common
    ).fit(paths)
    a, b = reduced.transform(paths), full.transform(paths)
    uncached = dict(cache=None, **common)
    b_ref = PretrainedFeatureExtractor(reduced_decoding=False, **uncached)
    assert_same_rows(b, b_ref.fit(paths).transform(paths))
    assert_same_rows(
        a, PretrainedFeatureExtractor(**uncached).fit(paths).transform(paths)
    )
    difference = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert 0 < difference.max() < 0.02
