"""Real photos for calibration and validation, and the preprocessing contract that turns them into input."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from mobile_vision_export.errors import UserError

log = logging.getLogger(__name__)

CROP_FRACTION = 0.875  # resize to cover size / 0.875, then centre-crop (224 -> 256)


class ImageDataError(UserError, ValueError):
    """A folder or file that yields no usable images."""


@dataclass(frozen=True)
class Photo:
    """A real photo: where it came from, and its ImageNet class index when known."""

    path: Path
    label: int | None = None


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImageDataError(f"the photo set needs the package '{name}': run scripts/setup.sh")
    return Path(spec.submodule_search_locations[0])


def _foolbox_photos(prefix: str) -> list[Photo]:
    folder = _package_dir("foolbox") / "data"
    return [Photo(p, int(p.stem.rsplit("_", 1)[1])) for p in sorted(folder.glob(f"{prefix}_*"))]


def photo_cache() -> Path:
    """Where scripts/setup_photos.sh unpacks the photo sets (MVE_PHOTO_CACHE overrides it)."""
    return Path(os.environ.get("MVE_PHOTO_CACHE") or Path.home() / ".cache" / "mobile-vision-export" / "photos")


def _cached_set(folder: Path, what: str) -> list[Photo]:
    if not (folder / ".complete").is_file():
        raise ImageDataError(f"the {what} are missing from {folder}: run scripts/setup.sh")
    return [Photo(p) for p in sorted(folder.iterdir()) if p.name != ".complete"]


def calibration_photos() -> list[Photo]:
    """The built-in calibration set: 548 full-resolution photos of objects, animals, monuments, landscapes, cities
    and underwater scenes from Debian packages (gcompris-qt-data 1.0, endless-sky-data, krank), none of them a
    held-out photo or a near-duplicate of one (scripts/unpack_photos.py)."""
    return _cached_set(photo_cache() / "calibration", "calibration photos")


def natural_photo_dir() -> Path:
    """Where the natural held-out photos are unpacked."""
    return photo_cache() / "natural"


def heldout_photos() -> list[Photo]:
    """Photos never used for calibration: 20 labelled ImageNet photos, the natural photos of gcompris-qt-data
    (animals, everyday objects, fish; full resolution), then 20 CIFAR-10 photos (32 x 32, upscaled)."""
    imagenet = _foolbox_photos("imagenet")
    natural = _cached_set(natural_photo_dir(), "held-out photos")
    return imagenet + natural + [Photo(p.path) for p in _foolbox_photos("cifar10")]


def photos_in_dir(folder: Path, fix: str = "add JPEG or PNG photos, or drop --calib-dir") -> list[Photo]:
    """Every readable image in `folder` (recursively); other files are skipped with a warning. `fix` says what to
    do when none is left."""
    if not folder.is_dir():
        raise ImageDataError(f"calibration folder not found: {folder}")
    photos = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            with _opened(path) as img:
                img.load()  # decode fully: a truncated file fails here, not halfway through calibration
                to_rgb8(img)  # a mode without a known white level is refused here, by name
            photos.append(Photo(path))
        except ImageDataError as exc:
            log.warning("skipping %s: %s", path, exc)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("skipping %s: not a readable image (%s)", path, type(exc).__name__)
    if not photos:
        raise ImageDataError(f"no readable images in {folder}: {fix}")
    return photos


_GRAY16 = {"I;16", "I;16L", "I;16B", "I;16N"}
_NO_WHITE_LEVEL = "so their white level is unknown: save the photo as an 8- or 16-bit PNG or JPEG"


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB, each pixel scaled by the white level of its mode.

    Pillow's own convert("RGB") clips 16-bit grayscale (and 32-bit integer) pixels above 255 to white, so:
    - I;16, I;16L, I;16B, I;16N (16-bit grayscale PNG, TIFF): v * 255 / 65535, rounded.
    - I (32-bit integer; Pillow's mode for 16-bit PGM and for older 16-bit PNG reads): values within 0..65535 are
      taken as 16-bit, scaled like I;16; anything outside that has no known white level and is refused by name.
    - F (32-bit float): values within 0..1 are scaled by 255; anything else is refused by name (0..1, 0..255 and
      HDR radiance cannot be told apart).
    - 16-bit-per-channel RGB/RGBA PNGs: Pillow 13 already opens them as RGB/RGBA holding the high byte of every
      sample (v >> 8), which is within one level of v * 255 / 65535; they go through convert("RGB").
    - 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: Pillow's convert("RGB").
    - Alpha (LA, La, PA, RGBA, RGBa, P with a transparent colour) is dropped, as Pillow's convert("RGB") does:
      the colour stored under a transparent pixel is what the model sees.
    Raises ImageDataError (without the file name) for a mode that has no defined conversion.
    """
    mode = img.mode
    if mode in _GRAY16 or mode == "I":
        values = np.asarray(img)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise ImageDataError(
                f"32-bit integer pixels (mode {mode}, values {lo}..{hi}) do not fit 16 bits, {_NO_WHITE_LEVEL}"
            )
        return Image.fromarray(np.rint(values * (255 / 65535)).astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        if not np.isfinite(values).all() or lo < 0 or hi > 1:
            raise ImageDataError(
                f"floating-point pixels (mode F, values {lo:g}..{hi:g}) are not within 0..1, {_NO_WHITE_LEVEL}"
            )
        return Image.fromarray(np.rint(values * 255).astype(np.uint8)).convert("RGB")
    if mode == "La":
        img = img.convert("LA")
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the direct path warns about palette transparency; the result is the same
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageDataError(f"Pillow cannot convert its mode {mode} to RGB ({exc}): save it as PNG or JPEG") from None


LARGE_PHOTO_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's own "decompression bomb" size
_said_large: set[Path] = set()  # each very large photo is mentioned once per run


@contextmanager
def _opened(path: Path):
    """Image.open, with Pillow's raw warning about very large images said as one line of ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            if img.width * img.height > LARGE_PHOTO_PIXELS and path not in _said_large:
                _said_large.add(path)
                log.warning(
                    "%s is %.0f megapixels: decoding it takes a while and much memory",
                    path,
                    img.width * img.height / 1e6,
                )
            yield img


def load_rgb(path: Path) -> Image.Image:
    """The photo at `path` as 8-bit RGB (see to_rgb8); ImageDataError names the file if its mode is refused."""
    with _opened(path) as img:
        try:
            return to_rgb8(img)
        except ImageDataError as exc:
            raise ImageDataError(f"{path}: {exc}") from None


def pixel_hash(path: Path) -> str:
    """SHA-256 of the photo's decoded 8-bit RGB pixels and size: the same picture whatever its file (a lossless
    re-save, other metadata, another name)."""
    img = load_rgb(path)
    return hashlib.sha256(repr(img.size).encode() + img.tobytes()).hexdigest()


def pixel_hashes(photos: list[Photo], cacheable: bool) -> dict[str, Path]:
    """pixel_hash -> path for `photos`; for the built-in sets (`cacheable`) the hashes are kept in the photo cache,
    keyed by each file's own hash, so the set is decoded once per machine."""
    cache_path = photo_cache() / ".crops" / "pixel_hashes.json"
    known: dict[str, str] = {}
    if cacheable:
        try:
            known = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            known = {}
    out, added = {}, False
    for photo in photos:
        file_hash = hashlib.sha256(photo.path.read_bytes()).hexdigest() if cacheable else None
        if file_hash not in known:
            digest = pixel_hash(photo.path)
            if not cacheable:
                out[digest] = photo.path
                continue
            known[file_hash], added = digest, True
        out[known[file_hash]] = photo.path
    if cacheable and added:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(cache_path)
        except OSError as exc:  # a read-only cache: carry on without it
            log.warning("could not cache photo hashes in %s: %s", cache_path.parent, exc)
    return out


def hw(size) -> tuple[int, int]:
    """(height, width) of an input size given as S (square), (H, W) or [H, W]."""
    if isinstance(size, (tuple, list)):
        height, width = size
        return int(height), int(width)
    return int(size), int(size)


def size_text(size) -> str:
    """224 for a square size, 48x192 (height x width) otherwise."""
    height, width = hw(size)
    return str(height) if height == width else f"{height}x{width}"


def cover_size(size) -> tuple[int, int]:
    """(height, width) a photo is resized to cover before the centre crop: the crop / 0.875 (224 -> 256)."""
    height, width = hw(size)
    return round(height / CROP_FRACTION), round(width / CROP_FRACTION)


def center_crop(img: Image.Image, size) -> np.ndarray:
    """Resize (bilinear, aspect kept) to cover cover_size(size), centre-crop to H x W; HWC float32 in 0..1. For a
    square size this is "shorter side to size / 0.875"."""
    height, width = hw(size)
    cover_h, cover_w = cover_size(size)
    w, h = img.size
    scale = max(cover_w / w, cover_h / h)
    img = img.resize((max(width, round(w * scale)), max(height, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - width) // 2, (h - height) // 2
    return np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0


def random_crop(img: Image.Image, size, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 35-100 % of the area, random aspect within 3:4..4:3 of the input's, random horizontal
    flip, resized to H x W; HWC 0..1."""
    height, width = hw(size)
    w, h = img.size
    area = w * h * rng.uniform(0.35, 1.0)
    aspect = (width / height) * np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32) / 255.0


def calibration_batch(photos: list[Photo], size, samples: int, seed: int = 0) -> np.ndarray:
    """`samples` NHWC 0..1 crops: a centre crop of each photo (an evenly spread subset if there are more photos
    than samples), then seeded random crops cycling through all photos. Photos are loaded one at a time."""
    rng = np.random.default_rng(seed)
    batch = [center_crop(load_rgb(photos[i].path), size) for i in _centred(len(photos), samples)]
    while len(batch) < samples:
        batch.append(random_crop(load_rgb(photos[len(batch) % len(photos)].path), size, rng))
    return np.stack(batch)


def _centred(count: int, samples: int) -> list[int]:
    """The photos calibration_batch takes a centre crop of."""
    return np.linspace(0, count - 1, num=min(samples, count)).round().astype(int).tolist()


def unread_photos(photos: list[Photo], samples: int) -> list[Photo]:
    """The photos calibration_batch(photos, size, samples) never reads: none when its random crops cycle through
    them all."""
    if samples > len(photos):
        return []
    centred = set(_centred(len(photos), samples))
    return [photo for i, photo in enumerate(photos) if i not in centred]


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration photos of one export: the user's (decoded each time, never copied into a cache) or the
    built-in set (its crops cached per machine)."""

    photos: list[Photo]
    where: str
    user_owned: bool

    def crops(self, photos: list[Photo], make: Callable[[], np.ndarray], *key: object) -> np.ndarray:
        """`make()`'s crops of `photos` (some of this set's)."""
        return make() if self.user_owned else cached_crops(photos, make, *key)


def calibration_set(folder: Path | None) -> CalibrationSet:
    """The photos in `folder`, or the built-in calibration set when there is none."""
    if folder is not None:
        return CalibrationSet(photos_in_dir(folder), str(folder), user_owned=True)
    built_in = "built-in photos: gcompris-qt-data 1.0, endless-sky, krank"
    return CalibrationSet(calibration_photos(), built_in, user_owned=False)


def heldout_batch(photos: list[Photo], size) -> np.ndarray:
    """Centre crops of `photos`, NHWC 0..1."""
    return np.stack([center_crop(load_rgb(p.path), size) for p in photos])


def normalize(batch: np.ndarray, mean, std) -> np.ndarray:
    """(x - mean) / std per channel, on NHWC 0..1 data."""
    return ((batch - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def pixel_codes(crops: np.ndarray) -> np.ndarray:
    """The uint8 code of every crop value (each is a pixel / 255): the same crops in a quarter of the memory."""
    return np.rint(crops * 255.0).astype(np.uint8)


def from_pixel_codes(codes: np.ndarray) -> np.ndarray:
    """The 0..1 float32 crop values of `codes`, bit for bit as the crops were made."""
    return codes.astype(np.float32) / 255.0


def cached_crops(photos: list[Photo], make: Callable[[], np.ndarray], *key: object) -> np.ndarray:
    """`make()`'s NHWC 0..1 crops of the built-in `photos`, kept in the photo cache under a name made of the photos'
    content hashes and `key`, so a set is decoded once per machine instead of once per export. The crops are stored
    as their 8-bit codes, which every crop value is (a pixel / 255), and read back bit for bit."""
    digest = hashlib.sha256(repr((CROP_FRACTION, *key)).encode())
    for photo in photos:
        digest.update(hashlib.sha256(photo.path.read_bytes()).digest())
    path = photo_cache() / ".crops" / f"{digest.hexdigest()[:40]}.npy"
    try:
        return from_pixel_codes(np.load(path))
    except (OSError, ValueError):  # not cached yet, or a damaged file: decode again
        pass
    crops = make()
    codes = pixel_codes(crops)
    if np.array_equal(from_pixel_codes(codes), crops):  # always, for crops made by this module
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as out:
                np.save(out, codes)
            tmp.replace(path)
        except OSError as exc:  # a read-only cache: carry on without it
            log.warning("could not cache decoded photos in %s: %s", path.parent, exc)
    return crops
