"""Text-line photos drawn here (Pillow's own font, dark words on light backgrounds, half of them upside down) for
PP-OCR's text-direction classifier: its task, on crops its users feed it."""

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WORDS = "the quick brown fox jumps over lazy dog mobile vision export model photo camera text line read".split()
ANGLES = ("0", "180")  # the classifier's two classes, in its output order


def draw(folder: Path, count: int, seed: int, by_class: bool) -> None:
    """`count` 192x48 text lines in `folder`, in a subfolder per angle if `by_class` (labelled photos)."""
    rng = random.Random(seed)
    font = ImageFont.load_default(size=22)
    for k in range(count):
        angle = ANGLES[k % 2]
        image = Image.new("RGB", (192, 48), tuple(rng.randint(180, 255) for _ in range(3)))
        ink = tuple(rng.randint(0, 60) for _ in range(3))
        ImageDraw.Draw(image).text((rng.randint(2, 12), rng.randint(4, 12)), " ".join(rng.sample(WORDS, 3)), ink, font)
        where = folder / angle if by_class else folder
        where.mkdir(parents=True, exist_ok=True)
        (image.rotate(180) if angle == "180" else image).save(where / f"{k:03d}.png")
