"""Photographs for predict.py: every odd format decodes upright to RGB, bad files fail with their
kind, inputs expand in order, and the FOV crop is the training cache's own."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from photo_fixtures import bomb_png, textured_fundus
from PIL import Image

from data.datasets.base import Record
from data.photo import PhotoDataset, PhotoError, PhotoInput, list_inputs, prepare_photo, read_photo
from data.prepare import preprocess
from data.records import DataError


@pytest.fixture(scope="module")
def fundus() -> np.ndarray:
    return textured_fundus(150, 200)


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _formats(fundus: np.ndarray):
    """File name -> writer returning (the RGB the file should decode to, whether exactly: lossless)."""
    grey = cv2.cvtColor(fundus, cv2.COLOR_RGB2GRAY)
    grey_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = np.dstack([fundus, np.where(fundus.any(axis=2), 255, 0).astype(np.uint8)])
    rgba[:, :, :3][rgba[:, :, 3] == 0] = (
        255  # transparent pixels hold white: they must come out black
    )
    pil = Image.fromarray(fundus)
    return {
        "rgb.jpg": lambda p: (_save(pil, p, quality=95), fundus, False),
        "rgb.png": lambda p: (_save(pil, p), fundus, True),
        "rgb.bmp": lambda p: (_save(pil, p), fundus, True),
        "rgb.tif": lambda p: (_save(pil, p), fundus, True),
        "grey.jpg": lambda p: (_save(Image.fromarray(grey), p, quality=95), grey_rgb, False),
        "grey.png": lambda p: (_save(Image.fromarray(grey), p), grey_rgb, True),
        "rgb16.png": lambda p: (
            cv2.imwrite(str(p), fundus[:, :, ::-1].astype(np.uint16) * 257),
            fundus,
            True,
        ),
        "rgb16.tif": lambda p: (
            cv2.imwrite(str(p), fundus[:, :, ::-1].astype(np.uint16) * 257),
            fundus,
            True,
        ),
        "grey16.png": lambda p: (cv2.imwrite(str(p), grey.astype(np.uint16) * 257), grey_rgb, True),
        "grey16.tif": lambda p: (cv2.imwrite(str(p), grey.astype(np.uint16) * 257), grey_rgb, True),
        "rgba.png": lambda p: (_save(Image.fromarray(rgba, "RGBA"), p), fundus, True),
        "palette.png": lambda p: (_save(pil.quantize(64), p), fundus, False),
        "cmyk.jpg": lambda p: (_save(pil.convert("CMYK"), p, quality=95), fundus, False),
        "cmyk.tif": lambda p: (_save(pil.convert("CMYK"), p), fundus, False),
    }


@pytest.mark.parametrize("name", list(_formats(np.zeros((4, 4, 3), np.uint8))))
def test_every_format_decodes_to_rgb_and_finds_the_fov(tmp_path, fundus, name):
    path = tmp_path / name
    _, expected, exact = _formats(fundus)[name](path)
    image, size = read_photo(path)
    assert image.dtype == np.uint8 and image.shape == (150, 200, 3) and size == (150, 200)
    difference = np.abs(image.astype(int) - expected.astype(int))
    assert difference.max() <= 1 if exact else difference.mean() < 8, (
        name,
        difference.max(),
        difference.mean(),
    )
    prepared = prepare_photo(image, 64)
    assert prepared.hr is not None and prepared.hr.shape == (64, 64, 3)
    assert prepared.quality.flags == (), (name, prepared.quality)


@pytest.mark.parametrize(
    "orientation, undo",
    [
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, 1)),
        (8, lambda a: np.rot90(a, -1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_rotated_photographs_come_out_upright(tmp_path, fundus, orientation, undo):
    """The stored pixels are the upright photograph turned the way the EXIF tag says to undo."""
    stored = np.ascontiguousarray(undo(fundus))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(stored), tmp_path / "rotated.png", exif=exif)
    image, size = read_photo(path)
    assert size == fundus.shape[:2]
    np.testing.assert_array_equal(image, fundus)


def test_bad_files_fail_with_their_kind(tmp_path, fundus):
    (tmp_path / "text.jpg").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    good = _save(Image.fromarray(fundus), tmp_path / "good.jpg", quality=95)
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bomb_png(tmp_path / "bomb.png")
    expected = {
        "text.jpg": "unreadable",
        "empty.png": "empty",
        "truncated.jpg": "unreadable",
        "bomb.png": "too_large",
        "absent.png": "missing",
    }
    for name, kind in expected.items():
        with pytest.raises(PhotoError) as caught:
            read_photo(tmp_path / name)
        assert (
            caught.value.kind == kind
            and name in str(caught.value)
            and "\n" not in str(caught.value)
        )
    with pytest.raises(PhotoError, match="over the limit of 1000 .--max-pixels."):
        read_photo(good, max_pixels=1000)


def test_dataset_items_carry_failures_instead_of_raising(tmp_path, fundus):
    good = _save(Image.fromarray(fundus), tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    items = [
        PhotoDataset([PhotoInput(good), PhotoInput(tmp_path / "bad.png")], 64)[i] for i in range(2)
    ]
    assert (
        items[0]["status"] == "ok"
        and tuple(items[0]["hr"].shape) == (3, 64, 64)
        and items[0]["hr"].dtype.is_floating_point is False
    )
    assert (
        items[1]["status"] == "unreadable"
        and "bad.png" in items[1]["reason"]
        and "hr" not in items[1]
    )


def test_inputs_expand_folders_lists_and_files_in_order(tmp_path, fundus):
    folder = tmp_path / "photos"
    for name in ("b.jpg", "a.PNG", "sub/c.tif", ".hidden/d.jpg", "notes.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    single = tmp_path / "single.bmp"
    single.write_bytes(b"x")
    listing = tmp_path / "list.csv"
    listing.write_text("path,grade\nphotos/b.jpg,2\n/abs/x.jpg,\nmissing.png,4\n")
    inputs = list_inputs([folder, single, listing])
    assert [
        p.path.relative_to(tmp_path).as_posix() if p.path.is_relative_to(tmp_path) else str(p.path)
        for p in inputs.photos
    ] == [
        "photos/a.PNG",
        "photos/b.jpg",
        "photos/sub/c.tif",
        "single.bmp",
        "photos/b.jpg",
        "/abs/x.jpg",
        "missing.png",
    ]
    assert [p.reference_grade for p in inputs.photos[-3:]] == [2, -1, 4]
    assert [p.name for p in inputs.ignored] == ["notes.txt"]
    with pytest.raises(DataError, match="input not found: .*nowhere"):
        list_inputs([tmp_path / "nowhere"])
    listing.write_text("path,grade\nx.jpg,two\n")
    with pytest.raises(DataError, match="list.csv row 2: grade 'two'"):
        list_inputs([listing])


@pytest.mark.parametrize(
    "height, width, background, centre, radius",
    [
        (300, 300, 0, None, 140),  # a full circle on black
        (200, 320, 12, None, 95),  # 16:10, near-black JPEG-like background
        (240, 420, 60, (120, 180), 110),  # wide, grey background, off centre
        (180, 320, 0, None, 120),  # IDRiD-like: the circle cut at top and bottom
        (400, 200, 0, (200, 100), 90),  # portrait
    ],
)
def test_fov_crop_of_synthetic_photographs(height, width, background, centre, radius):
    image = textured_fundus(
        height, width, seed=1, background=background, centre=centre, radius=radius
    )
    prepared = prepare_photo(image, 128)
    assert prepared.hr.shape == (128, 128, 3) and prepared.quality.flags == ()
    fov = prepared.fov
    # The disc fills the square side to side (cut-off circles: left to right) and sits at its centre.
    rows, cols = np.nonzero(fov)
    assert abs(cols.min()) <= 3 and abs(cols.max() - 127) <= 3
    assert abs(rows.mean() - 63.5) <= 3 and abs(cols.mean() - 63.5) <= 3
    assert (prepared.hr[~fov] == 0).all() and prepared.hr[fov].mean() > 40
    assert prepared.quality.fov_side == pytest.approx(2 * radius, abs=4)
    assert prepared.quality.fov_fraction == pytest.approx(
        fov_area_fraction(height, width, centre, radius), abs=0.02
    )


def fov_area_fraction(height, width, centre, radius):
    yy, xx = np.mgrid[:height, :width]
    cy, cx = centre if centre is not None else (height / 2, width / 2)
    return float(((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).mean())


def test_prepared_photo_equals_the_training_cache_image(tmp_path):
    """predict.py's HR square is bit-identical to what data.prepare writes for the same file."""
    path = tmp_path / "IDRiD_999.png"
    Image.fromarray(textured_fundus(400, 600, seed=3, background=8)).save(path)
    record = Record(
        id="idrid/grading/train/IDRiD_999",
        image=path,
        grade=0,
        part="grading",
        split="train",
        patient="p",
    )
    cached, _ = preprocess(record, 256)
    item = PhotoDataset([PhotoInput(path)], 256)[0]
    np.testing.assert_array_equal(item["hr"].permute(1, 2, 0).numpy(), cached)
