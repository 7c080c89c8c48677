"""Unpack the natural photos of Debian's gcompris-qt-data (Qt resource bundles) into a folder of image files.

Usage: python scripts/unpack_photos.py RCC_DIR OUT_DIR. Only the bundles and folders listed in PHOTO_FOLDERS are
read (animal photos, everyday objects, fish, windmills and solar panels); images under 200 px on a side are skipped.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

PHOTO_FOLDERS = {
    "erase.rcc": ["gcompris/src/activities/erase/resource/"],
    "explore_world_animals.rcc": ["gcompris/src/activities/explore_world_animals/resource/animals/"],
    "explore_farm_animals.rcc": ["gcompris/src/activities/explore_farm_animals/resource/animals/"],
    "categorization.rcc": [
        f"gcompris/src/activities/categorization/resource/images/{kind}/"
        for kind in ("tools", "others", "fishes", "renewable")
    ],
}
MIN_SIDE = 200
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


def main(rcc_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for bundle, folders in PHOTO_FOLDERS.items():
        for inner, blob in sorted(read_bundle(rcc_dir / bundle).items()):
            if not any(inner.startswith(f) and "/" not in inner[len(f) :] for f in folders):
                continue
            if not inner.endswith((".webp", ".jpg", ".png")):
                continue
            with Image.open(io.BytesIO(blob)) as img:
                if min(img.size) < MIN_SIDE:
                    continue
            stem = f"{Path(bundle).stem}_{Path(inner).parent.name}_{Path(inner).name}"
            (out_dir / stem).write_bytes(blob)
            written += 1
    print(f"unpack_photos: {written} photos in {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python scripts/unpack_photos.py RCC_DIR OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
