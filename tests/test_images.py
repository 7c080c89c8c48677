import hashlib
import importlib.util
import io
import logging

import numpy as np
import pytest
from PIL import Image

from mobile_vision_export.export.images import (
    ImageDataError,
    Photo,
    cached_crops,
    calibration_batch,
    calibration_photos,
    center_crop,
    heldout_batch,
    heldout_photos,
    load_rgb,
    natural_photo_dir,
    photos_in_dir,
    random_crop,
    unread_photos,
)
from tests.conftest import ROOT


def test_calibration_and_validation_photos_never_overlap():
    calib = {hashlib.sha256(p.path.read_bytes()).hexdigest() for p in calibration_photos()}
    held = {hashlib.sha256(p.path.read_bytes()).hexdigest() for p in heldout_photos()}
    assert len(calib) >= 500  # full-resolution photos, each once
    assert len(held) == 20 + len(list(natural_photo_dir().glob("*.webp"))) + 20
    assert len(held) >= 190  # 20 labelled ImageNet, >= 150 natural full-resolution photos, 20 CIFAR-10
    assert not calib & held  # by content, not by name
    sizes = [min(Image.open(p.path).size) for p in calibration_photos()]
    assert np.median(sizes) >= 360  # what a camera sees, not thumbnails
    assert sum(p.label is not None for p in heldout_photos()) == 20


def test_missing_heldout_photos_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MVE_PHOTO_CACHE", str(tmp_path))
    with pytest.raises(ImageDataError, match="held-out photos are missing .* run scripts/setup.sh"):
        heldout_photos()


def test_calibration_batch_is_deterministic_and_in_range():
    photos = calibration_photos()[:5]
    a = calibration_batch(photos, 64, 12)
    b = calibration_batch(photos, 64, 12)
    assert a.shape == (12, 64, 64, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert len({x.tobytes() for x in a}) == 12  # random crops, not repeats


def test_unread_photos_are_the_ones_no_calibration_crop_comes_from(tmp_path, monkeypatch):
    """The int8 fallback judges on them: no calibration crop may come from one of them."""
    photos = []
    for k in range(9):  # one flat colour per photo: a crop tells which photo it came from
        Image.new("RGB", (48, 40), (20 * k, 255 - 20 * k, 7 * k)).save(tmp_path / f"{k}.png")
        photos.append(Photo(tmp_path / f"{k}.png"))
    read = []
    monkeypatch.setattr("mobile_vision_export.export.images.load_rgb", lambda path: read.append(path) or load_rgb(path))
    calibration_batch(photos, 32, 4)
    unread = unread_photos(photos, 4)
    assert len(unread) == 5 and not {p.path for p in unread} & set(read)
    assert {p.path for p in unread} | set(read) == {p.path for p in photos}
    assert unread_photos(photos, 9) == [] and unread_photos(photos, 20) == []  # random crops read every photo


def test_center_crop_keeps_aspect_then_crops():
    img = Image.fromarray(np.tile((np.arange(400) % 256).astype(np.uint8)[None, :, None], (200, 1, 3)))
    crop = center_crop(img, 224)
    assert crop.shape == (224, 224, 3)
    # 400x200 -> 512x256, centre 224 columns: the middle column is the original's column 200.
    assert crop[:, 112, 0].mean() == pytest.approx(200 / 255, abs=0.01)
    assert crop[:, 0, 0].mean() == pytest.approx((200 - 112 * 400 / 512) / 255, abs=0.01)


def test_a_non_square_crop_covers_then_takes_the_centre():
    """48x192 (height x width): the photo is scaled to cover 55x219 (the crop / 0.875), aspect kept, then the centre
    48x192 is cut out. A gradient along x and one along y tell where the crop came from."""
    xs = np.tile(np.arange(400, dtype=np.float64)[None, :], (100, 1))
    ys = np.tile(np.arange(100, dtype=np.float64)[:, None], (1, 400))
    img = Image.fromarray(np.stack([xs * 255 / 399, ys * 255 / 99, np.zeros_like(xs)], -1).round().astype(np.uint8))
    crop = center_crop(img, (48, 192))
    assert crop.shape == (48, 192, 3)
    # 400x100 (w x h) covers 219 wide and 55 high at scale max(219/400, 55/100) = 0.55: 220x55, the centre 192x48 of
    # it starts at column 14 and row 3, so the crop spans the photo's columns 25..375 and rows 5..93.
    assert crop[:, 0, 0].mean() * 399 == pytest.approx(14.5 / 0.55, abs=2)
    assert crop[:, -1, 0].mean() * 399 == pytest.approx(205.5 / 0.55, abs=2)
    assert crop[0, :, 1].mean() * 99 == pytest.approx(3.5 / 0.55, abs=2)
    assert crop[-1, :, 1].mean() * 99 == pytest.approx(50.5 / 0.55, abs=2)
    # a square size is the shorter side to size / 0.875, as before
    square = Image.fromarray(np.zeros((300, 500, 3), np.uint8))
    assert center_crop(square, 224).shape == center_crop(square, (224, 224)).shape == (224, 224, 3)
    assert random_crop(img, (48, 192), np.random.default_rng(0)).shape == (48, 192, 3)


def test_calib_dir_skips_non_images_with_a_warning(tmp_path, caplog):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        photos = photos_in_dir(tmp_path)
    assert [p.path.name for p in photos] == ["a.png"]
    assert "notes.txt" in caplog.text
    assert load_rgb(photos[0].path).size == (50, 40)


def test_calib_dir_without_images_is_an_error(tmp_path):
    (tmp_path / "readme.md").write_text("# nothing here")
    with pytest.raises(ImageDataError, match="no readable images"):
        photos_in_dir(tmp_path)
    with pytest.raises(ImageDataError, match="not found"):
        photos_in_dir(tmp_path / "absent")


def test_missing_calibration_photos_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MVE_PHOTO_CACHE", str(tmp_path))
    with pytest.raises(ImageDataError, match="calibration photos are missing .* run scripts/setup.sh"):
        calibration_photos()


def test_near_duplicates_of_heldout_photos_are_recognised(tmp_path):
    """The set-up drops calibration photos that are a re-crop or re-encode of a held-out photo."""
    spec = importlib.util.spec_from_file_location("unpack_photos", ROOT / "scripts" / "unpack_photos.py")
    unpack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unpack)
    photos = [p.path for p in heldout_photos()[20:40]]
    original = photos[0].read_bytes()
    with Image.open(photos[0]) as img:
        w, h = img.size
        buffer = io.BytesIO()
        img.convert("RGB").crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(buffer, "JPEG", quality=80)
    hashes = unpack._hashes(original)

    def distance(blob: bytes) -> int:
        return int((unpack._hashes(blob)[:, None, :] != hashes[None, :, :]).sum(-1).min())

    assert distance(buffer.getvalue()) <= unpack.NEAR_DUPLICATE_BITS
    assert min(distance(p.read_bytes()) for p in photos[1:]) > unpack.NEAR_DUPLICATE_BITS


def test_cached_crops_read_back_bit_for_bit_and_follow_the_photos_content(tmp_path, monkeypatch):
    photos = heldout_photos()[:6]
    monkeypatch.setenv("MVE_PHOTO_CACHE", str(tmp_path / "cache"))
    decoded = heldout_batch(photos, 64)
    first = cached_crops(photos, lambda: heldout_batch(photos, 64), "held-out", 64)
    again = cached_crops(photos, lambda: pytest.fail("decoded again"), "held-out", 64)
    assert first.dtype == again.dtype == np.float32 and np.array_equal(again, decoded)
    assert len(list((tmp_path / "cache" / ".crops").glob("*.npy"))) == 1

    changed = tmp_path / "changed.png"  # same name in the list, other content: a new entry
    Image.fromarray((decoded[0] * 255).astype(np.uint8)[::-1]).save(changed)
    other = [Photo(changed), *photos[1:]]
    flipped = cached_crops(other, lambda: heldout_batch(other, 64), "held-out", 64)
    assert not np.array_equal(flipped, decoded)
    keyed = cached_crops(photos, lambda: heldout_batch(photos, 64), "held-out", 64, "another key")
    assert np.array_equal(keyed, decoded)
    assert len(list((tmp_path / "cache" / ".crops").glob("*.npy"))) == 3
