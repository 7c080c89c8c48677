"""Unpack the photo sets from Debian packages (extracted with dpkg -x) into folders of image files.

    python scripts/unpack_photos.py heldout RCC_DIR OUT_DIR
        the held-out set: gcompris-qt-data's (bookworm) animals, everyday objects, fish, windmills, solar panels
    python scripts/unpack_photos.py calibration ROOT OUT_DIR HELDOUT_DIR
        the calibration set: gcompris-qt-data 1.0's (bullseye) photos, Endless Sky's landscape and city photos and
        krank's underwater photos, under ROOT; exact duplicates and near-duplicates of any held-out photo dropped

Only the listed bundles and folders are read (photos, not drawings); images under 200 px on a side are skipped.
"""

from __future__ import annotations

import hashlib
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

_ACTIVITIES = "gcompris/src/activities"
PHOTO_FOLDERS = {
    "erase.rcc": ["gcompris/src/activities/erase/resource/"],
    "explore_world_animals.rcc": ["gcompris/src/activities/explore_world_animals/resource/animals/"],
    "explore_farm_animals.rcc": ["gcompris/src/activities/explore_farm_animals/resource/animals/"],
    "categorization.rcc": [
        f"gcompris/src/activities/categorization/resource/images/{kind}/"
        for kind in ("tools", "others", "fishes", "renewable")
    ],
}
CALIBRATION_FOLDERS = {  # gcompris-qt-data 1.0: most of its photos were replaced in later versions
    "erase.rcc": [f"{_ACTIVITIES}/erase/resource/"],
    "explore_world_animals.rcc": [f"{_ACTIVITIES}/explore_world_animals/resource/animals/"],
    "explore_farm_animals.rcc": [f"{_ACTIVITIES}/explore_farm_animals/resource/animals/"],
    "categorization.rcc": [
        f"{_ACTIVITIES}/categorization/resource/images/{kind}/"
        for kind in ("tools", "others", "fishes", "renewable", "monuments")
    ],
    "explore_monuments.rcc": [
        f"{_ACTIVITIES}/explore_monuments/resource/{place}/"
        for place in ("egypt", "france", "germany", "india", "usa", "wonders")
    ],
    "explore_world_music.rcc": [f"{_ACTIVITIES}/explore_world_music/resource/music/"],
    "clickgame.rcc": [f"{_ACTIVITIES}/clickgame/resource/"],
}
CALIBRATION_DIRS = {  # photo folders of other packages, relative to ROOT
    "endless_sky": "usr/share/games/endless-sky/images/land",
    "krank": "usr/share/games/krank/levels/unera-backgrounds",
}
PHOTO_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")
MIN_SIDE = 200
# Near-duplicate test: a 256-bit difference hash of several crops of each photo. Photos re-cropped or re-encoded
# between package versions differed by at most 22 bits; the closest distinct photos by 27.
NEAR_DUPLICATE_BITS = 24
COMPRESSED_ZLIB = 1
DIRECTORY = 2


def read_bundle(path: Path) -> dict[str, bytes]:
    """Every file of a Qt resource bundle (format 1-3, zlib or uncompressed), by its path inside the bundle."""
    data = path.read_bytes()
    if data[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource bundle")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    entry = 22 if version >= 2 else 14

    def name(offset: int) -> str:
        at = names + offset
        length = struct.unpack(">H", data[at : at + 2])[0]
        return data[at + 6 : at + 6 + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}

    def walk(index: int, prefix: str) -> None:
        at = tree + index * entry
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        path_here = f"{prefix}{name(name_offset)}" if index else ""
        if flags & DIRECTORY:
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            for child in range(first, first + count):
                walk(child, f"{path_here}/" if path_here else "")
            return
        offset = payload + struct.unpack(">I", data[at + 10 : at + 14])[0]
        size = struct.unpack(">I", data[offset : offset + 4])[0]
        raw = data[offset + 4 : offset + 4 + size]
        files[path_here] = zlib.decompress(raw[4:]) if flags & COMPRESSED_ZLIB else raw

    walk(0, "")
    return files


def _bundle_photos(rcc_dir: Path, folders: dict[str, list[str]]) -> dict[str, bytes]:
    """Photo files of the listed folders (not their subfolders) of each bundle, by an output name."""
    photos = {}
    for bundle, prefixes in folders.items():
        for inner, blob in sorted(read_bundle(rcc_dir / bundle).items()):
            if any(inner.startswith(f) and "/" not in inner[len(f) :] for f in prefixes) and inner.lower().endswith(
                PHOTO_SUFFIXES
            ):
                photos[f"{Path(bundle).stem}_{Path(inner).parent.name}_{Path(inner).name}"] = blob
    return photos


def _large_enough(blob: bytes) -> bool:
    with Image.open(io.BytesIO(blob)) as img:
        return min(img.size) >= MIN_SIDE


def _hashes(blob: bytes) -> np.ndarray:
    """Difference hashes (16 x 16 bits) of the photo and of 15 crops of it (70-90 %, centre and corners)."""
    with Image.open(io.BytesIO(blob)) as img:
        img.draft("RGB", (256, 256))
        gray = img.convert("L")
    w, h = gray.size
    crops = [gray]
    for f in (0.9, 0.8, 0.7):
        cw, ch = int(w * f), int(h * f)
        for x, y in (((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)):
            crops.append(gray.crop((x, y, x + cw, y + ch)))
    out = []
    for crop in crops:
        a = np.asarray(crop.resize((17, 16), Image.BILINEAR), dtype=np.int16)
        out.append((a[:, 1:] > a[:, :-1]).ravel())
    return np.array(out)


def heldout(rcc_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    photos = {name: blob for name, blob in _bundle_photos(rcc_dir, PHOTO_FOLDERS).items() if _large_enough(blob)}
    for name, blob in photos.items():
        (out_dir / name).write_bytes(blob)
    print(f"unpack_photos: {len(photos)} held-out photos in {out_dir}")


def calibration(root: Path, out_dir: Path, heldout_dir: Path) -> None:
    candidates = _bundle_photos(root / "usr/share/gcompris-qt/rcc", CALIBRATION_FOLDERS)
    for prefix, folder in CALIBRATION_DIRS.items():
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in PHOTO_SUFFIXES:
                candidates[f"{prefix}_{path.name}"] = path.read_bytes()
    held = [p.read_bytes() for p in sorted(heldout_dir.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES]
    held_sha = {hashlib.sha256(b).hexdigest() for b in held}
    held_hashes = np.concatenate([_hashes(b) for b in held])
    seen, kept, dropped = set(), {}, []
    for name, blob in candidates.items():
        digest = hashlib.sha256(blob).hexdigest()
        if digest in seen or not _large_enough(blob):
            continue
        seen.add(digest)
        distance = (_hashes(blob)[:, None, :] != held_hashes[None, :, :]).sum(-1).min()
        if digest in held_sha or distance <= NEAR_DUPLICATE_BITS:
            dropped.append(name)
            continue
        kept[name] = blob
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, blob in kept.items():
        (out_dir / name).write_bytes(blob)
    print(f"unpack_photos: {len(kept)} calibration photos in {out_dir}; {len(dropped)} dropped as held-out duplicates")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "heldout":
        heldout(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 5 and sys.argv[1] == "calibration":
        calibration(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
