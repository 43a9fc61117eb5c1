"""The preprocessing cache: FOV crop + resize, manifest and hashes, resumable and idempotent runs,
bad images, and the dataset that trains from the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dataset_fixtures import write_image, write_mask, write_text
from PIL import Image

from data.cache import CachedFundus, file_sha256, read_manifest, read_settings, verify_cache
from data.prepare import main as prepare_main
from data.prepare import prepare
from data.records import SAMPLE_KEYS, DataError

SIZE = 32


def _csv_dataset(root, bad: str | None = None):
    """A generic-CSV dataset: 3 graded images (one grey background) and 1 with MA + HE masks."""
    write_image(root / "images" / "g0.jpg", 48, 64, seed=0)
    write_image(root / "images" / "g1.png", 48, 64, seed=1, background=128)
    write_image(root / "images" / "g2.jpg", 60, 60, seed=2)
    write_image(root / "images" / "s0.png", 48, 64, seed=3)
    write_mask(root / "masks" / "s0_MA.png", 48, 64, box=(20, 28, 24, 36), style="binary")
    write_mask(root / "masks" / "s0_HE.png", 48, 64, box=None, style="ones")  # valid, no lesion
    rows = [
        "image,grade,split,mask_MA,mask_HE,mask_EX,mask_SE",
        "images/g0.jpg,0,train,,,,",
        "images/g1.png,2,train,,,,",
        "images/g2.jpg,4,valid,,,,",
        "images/s0.png,,train,masks/s0_MA.png,masks/s0_HE.png,,",
    ]
    if bad == "truncated":
        data = (root / "images" / "g0.jpg").read_bytes()
        (root / "images" / "g0.jpg").write_bytes(data[: len(data) // 3])
    if bad == "mask_size":
        write_mask(root / "masks" / "s0_MA.png", 40, 64, style="binary")
    write_text(root / "labels.csv", "\n".join(rows) + "\n")
    return root / "labels.csv"


def test_prepare_writes_cache_manifest_and_hashes(tmp_path):
    labels = _csv_dataset(tmp_path / "my data ü")  # spaces and non-ASCII in the path
    out = tmp_path / "cache"
    report = prepare("csv", labels, out, size=SIZE, workers=1)
    assert (report.written, report.reused, report.skipped) == (4, 0, [])
    entries = read_manifest(out)
    assert [entry.id for entry in entries] == sorted(entry.id for entry in entries)
    by_id = {entry.id.rsplit("/", 1)[1]: entry for entry in entries}
    assert set(by_id) == {"g0", "g1", "g2", "s0"}
    assert (
        by_id["s0"].mask_valid == "1100"
        and by_id["s0"].grade == -1
        and by_id["s0"].part == "segmentation"
    )
    assert by_id["g2"].split == "valid" and by_id["g2"].grade == 4
    for entry in entries:
        assert file_sha256(out / entry.image) == entry.image_sha256
        assert file_sha256(out / entry.masks) == entry.masks_sha256
        with Image.open(out / entry.image) as image:
            assert image.size == (SIZE, SIZE)
    assert verify_cache(out, entries) == []
    settings = read_settings(out)
    assert settings["size"] == SIZE and settings["dataset"] == "csv"
    assert (out / "skipped.csv").read_text().splitlines() == ["source,reason"]


def test_cached_dataset_yields_the_sample_contract(tmp_path):
    labels = _csv_dataset(tmp_path / "data")
    out = tmp_path / "cache"
    prepare("csv", labels, out, size=SIZE, workers=1)
    entries = read_manifest(out)
    dataset = CachedFundus(out, entries, scale=4)
    assert dataset.grades == [entry.grade for entry in entries]
    assert dataset.has_masks == [entry.id.endswith("s0") for entry in entries]
    for index in range(len(dataset)):
        sample = dataset[index]
        assert set(sample) == SAMPLE_KEYS
        assert sample["hr"].shape == (3, SIZE, SIZE) and sample["lr"].shape == (
            3,
            SIZE // 4,
            SIZE // 4,
        )
        assert sample["masks"].shape == (4, SIZE, SIZE) and sample["fov"].shape == (1, SIZE, SIZE)
        assert set(torch.unique(sample["masks"]).tolist()) <= {0.0, 1.0}
        fov = sample["fov"][0].bool()
        assert 0.5 < fov.float().mean() < 0.9  # a disc inscribed in the square
        # black outside the FOV, grey background included (up to JPEG ringing at the rim)
        assert sample["hr"][:, ~fov].mean() < 0.02
    s0 = dataset[[entry.id.endswith("s0") for entry in entries].index(True)]
    assert s0["mask_valid"].tolist() == [True, True, False, False]
    assert s0["masks"][0].sum() > 0 and s0["masks"][1].sum() == 0 and s0["grade"] == -1


def test_rerun_is_idempotent_and_resumes_after_a_kill(tmp_path):
    labels = _csv_dataset(tmp_path / "data")
    out = tmp_path / "cache"
    prepare("csv", labels, out, size=SIZE, workers=1)
    manifest = (out / "manifest.csv").read_bytes()
    again = prepare("csv", labels, out, size=SIZE, workers=1)
    assert (again.written, again.reused) == (0, 4)
    assert (out / "manifest.csv").read_bytes() == manifest
    # A killed run: one image never written, a temporary file left behind, no manifest yet.
    entry = read_manifest(out)[0]
    (out / entry.image).unlink()
    (out / "manifest.csv").unlink()
    stale = out / "images" / ".x.jpg.tmp-999"
    stale.write_bytes(b"partial")
    resumed = prepare("csv", labels, out, size=SIZE, workers=1)
    assert (resumed.written, resumed.reused) == (1, 3)
    assert not stale.exists()
    assert (out / "manifest.csv").read_bytes() == manifest


def test_prepare_refuses_a_cache_of_another_size(tmp_path):
    labels = _csv_dataset(tmp_path / "data")
    prepare("csv", labels, tmp_path / "cache", size=SIZE, workers=1)
    with pytest.raises(DataError, match="size"):
        prepare("csv", labels, tmp_path / "cache", size=64, workers=1)


def test_truncated_image_stops_naming_the_file_or_is_skipped(tmp_path):
    labels = _csv_dataset(tmp_path / "data", bad="truncated")
    with pytest.raises(DataError, match=r"g0\.jpg.*--skip-bad"):
        prepare("csv", labels, tmp_path / "cache", size=SIZE, workers=1)
    assert not (tmp_path / "cache" / "manifest.csv").exists()
    report = prepare("csv", labels, tmp_path / "cache", size=SIZE, workers=1, skip_bad=True)
    assert report.written == 3 and len(report.skipped) == 1
    assert "g0.jpg" in report.skipped[0][0]
    assert "g0.jpg" in (tmp_path / "cache" / "skipped.csv").read_text()
    assert len(read_manifest(tmp_path / "cache")) == 3


def test_mask_of_another_size_names_mask_and_image(tmp_path):
    labels = _csv_dataset(tmp_path / "data", bad="mask_size")
    with pytest.raises(DataError, match=r"s0_MA\.png is 64x40 but its image .*s0\.png is 64x48"):
        prepare("csv", labels, tmp_path / "cache", size=SIZE, workers=1)


def test_cli_prints_a_summary_and_fails_with_one_line(tmp_path, capsys):
    labels = _csv_dataset(tmp_path / "data")
    assert (
        prepare_main(
            [
                "--dataset",
                "csv",
                "--root",
                str(labels),
                "--out",
                str(tmp_path / "c"),
                "--size",
                "32",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert "4 images" in capsys.readouterr().out
    assert (
        prepare_main(
            ["--dataset", "csv", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c2")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]
    assert (
        prepare_main(
            [
                "--dataset",
                "csv",
                "--root",
                str(labels),
                "--out",
                str(tmp_path / "c3"),
                "--size",
                "30",
            ]
        )
        == 2
    )
    assert "multiple of 16" in capsys.readouterr().err


def test_two_workers_give_the_same_cache(tmp_path):
    labels = _csv_dataset(tmp_path / "data")
    prepare("csv", labels, tmp_path / "one", size=SIZE, workers=1)
    prepare("csv", labels, tmp_path / "two", size=SIZE, workers=2)
    assert (tmp_path / "one" / "manifest.csv").read_bytes() == (
        tmp_path / "two" / "manifest.csv"
    ).read_bytes()
    assert json.loads((tmp_path / "two" / "cache.json").read_text())["size"] == SIZE


def test_masks_are_cropped_with_the_image(tmp_path):
    """The MA box sits at the same place relative to the FOV after crop and resize."""
    labels = _csv_dataset(tmp_path / "data")
    prepare("csv", labels, tmp_path / "cache", size=64, workers=1)
    entries = read_manifest(tmp_path / "cache")
    entry = next(entry for entry in entries if entry.id.endswith("s0"))
    sample = CachedFundus(tmp_path / "cache", [entry], scale=4)[0]
    rows, cols = np.nonzero(sample["masks"][0].numpy())
    # The 48x64 source's disc (radius 21.6 around (24, 32)) fills the 64 px square: scale ~1.48,
    # so the box rows 20..23 / cols 28..35 map to about rows 27..34 / cols 27..39.
    assert abs(rows.mean() - 30.5) < 3 and abs(cols.mean() - 32.5) < 3


def test_corrupt_cache_file_names_it(tmp_path):
    labels = _csv_dataset(tmp_path / "data")
    prepare("csv", labels, tmp_path / "cache", size=SIZE, workers=1)
    entries = read_manifest(tmp_path / "cache")
    (tmp_path / "cache" / entries[0].image).write_bytes(b"not a jpeg")
    assert verify_cache(tmp_path / "cache", entries) == [str(tmp_path / "cache" / entries[0].image)]
    with pytest.raises(DataError, match=entries[0].image.split("/")[1]):
        CachedFundus(tmp_path / "cache", entries, scale=4)[0]


def test_missing_cache_says_how_to_build_it(tmp_path):
    with pytest.raises(DataError, match="python -m data.prepare"):
        read_manifest(tmp_path / "nothing")


def test_a_lossless_cache_holds_the_square_a_photograph_gives(tmp_path):
    """--image-format png: the cached HR square equals, bit for bit, the square predict.py makes
    from the same photograph (data/photo.py); a JPEG cache differs by its compression."""
    from data.photo import PhotoDataset, PhotoInput

    labels = _csv_dataset(tmp_path / "data")
    prepare("csv", labels, tmp_path / "png", size=SIZE, workers=1, image_format="png")
    prepare("csv", labels, tmp_path / "jpeg", size=SIZE, workers=1)
    assert read_settings(tmp_path / "png")["image_format"] == "png"
    png = CachedFundus(tmp_path / "png", read_manifest(tmp_path / "png"), 4)
    jpeg = CachedFundus(tmp_path / "jpeg", read_manifest(tmp_path / "jpeg"), 4)
    index = next(i for i, entry in enumerate(png.entries) if entry.id.endswith("/g2"))
    assert png.entries[index].image.endswith(".png")
    photo = PhotoDataset([PhotoInput(tmp_path / "data" / "images" / "g2.jpg")], SIZE)[0]["hr"]
    as_bytes = lambda sample: (sample["hr"] * 255).round().to(torch.uint8)  # noqa: E731
    assert torch.equal(as_bytes(png[index]), photo)
    assert not torch.equal(as_bytes(jpeg[index]), photo)
    with pytest.raises(DataError, match="image_format"):  # one cache folder, one storage
        prepare("csv", labels, tmp_path / "png", size=SIZE, workers=1)
    with pytest.raises(DataError, match="--image-format must be jpeg or png"):
        prepare("csv", labels, tmp_path / "x", size=SIZE, workers=1, image_format="webp")
