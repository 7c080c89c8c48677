"""A segmenter and a detector trained here, in seconds, on real photos with circles, squares and triangles painted
on them: trained weights whose int8 parity means something (random weights give near-tied scores). Self-contained
(torch, numpy, Pillow) so a test can copy it into a project folder as a user's own model file; the factories load
the weights saved beside it."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

SIZE = 64
CLASSES = ("circle", "square", "triangle")  # the segmenter's class 0 is the background
SEG_STRIDE, DET_STRIDE = 4, 8


def _body(strides: int) -> list[nn.Module]:
    layers, width = [], 3
    for _ in range(strides):
        layers += [nn.Conv2d(width, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU()]
        width = 32
    return layers + [
        nn.Conv2d(32, 32, 3, 1, 2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 4, dilation=4),
        nn.ReLU(),
    ]


class Segmenter(nn.Module):
    """[1, 4, 16, 16] class map (background and the three shapes)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*_body(2))
        self.head = nn.Conv2d(32, 1 + len(CLASSES), 1)

    def forward(self, x):
        return self.head(self.body(x))


class Detector(nn.Module):
    """One box per 8x8 cell: boxes [1, 64, 4] (centre x, y, width, height, 0..1 of the image) and per-class scores
    [1, 64, 3], both through sigmoids."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*_body(3))
        self.boxes = nn.Conv2d(32, 4, 1)
        self.scores = nn.Conv2d(32, len(CLASSES), 1)

    def forward(self, x):
        f = self.body(x)
        b, s = self.boxes(f).sigmoid(), self.scores(f).sigmoid()
        return b.flatten(2).transpose(1, 2), s.flatten(2).transpose(1, 2)


def _paint(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple]]:
    """1 to 3 shapes of random colour and size painted on `image` (H x W x 3 uint8): the per-pixel class map and
    the boxes (class, x1, y1, x2, y2 in pixels)."""
    classes = np.zeros(image.shape[:2], np.int64)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]] + 0.5
    boxes = []
    for _ in range(rng.integers(1, 4)):
        kind, size = int(rng.integers(len(CLASSES))), float(rng.uniform(14, 26))
        cx, cy = rng.uniform(size / 2, SIZE - size / 2, 2)
        dx, dy = xx - cx, yy - cy
        if kind == 0:
            inside = dx**2 + dy**2 <= (size / 2) ** 2
        elif kind == 1:
            inside = (np.abs(dx) <= size / 2) & (np.abs(dy) <= size / 2)
        else:  # pointing up: below the two sloped sides, above the base
            inside = (dy <= size / 2) & (dy >= -size / 2 + 2 * np.abs(dx))
        image[inside] = rng.integers(0, 256, 3)
        classes[inside] = kind + 1
        boxes.append((kind, cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2))
    return classes, boxes


def scenes(photos: list[Path], count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[list[tuple]]]:
    """`count` 64x64 scenes: a random crop of one of `photos` with shapes painted on it. Returns the images
    (N x 64 x 64 x 3 uint8), the class maps (N x 64 x 64) and the boxes of each."""
    rng = np.random.default_rng(seed)
    images, maps, boxes = [], [], []
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as photo:
            photo = photo.convert("RGB")
            side = int(min(photo.size) * rng.uniform(0.4, 1.0))
            left, top = (int(rng.integers(0, d - side + 1)) for d in photo.size)
            image = np.asarray(photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE))).copy()
        classes, painted = _paint(image, rng)
        images.append(image)
        maps.append(classes)
        boxes.append(painted)
    return np.stack(images), np.stack(maps), boxes


def _detector_targets(boxes: list[list[tuple]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cells = SIZE // DET_STRIDE
    box_t = torch.zeros(len(boxes), cells * cells, 4)
    score_t = torch.zeros(len(boxes), cells * cells, len(CLASSES))
    for n, painted in enumerate(boxes):
        for kind, x1, y1, x2, y2 in painted:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            cell = int(cy // DET_STRIDE) * cells + int(cx // DET_STRIDE)
            box_t[n, cell] = torch.tensor([cx / SIZE, cy / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE])
            score_t[n, cell] = 0
            score_t[n, cell, kind] = 1
    return box_t, score_t, score_t.sum(-1) > 0


def train(kind: str, photos: list[Path], steps: int = 2000, seed: int = 0) -> nn.Module:
    """A Segmenter or Detector trained on scenes painted on `photos` (inputs 0..1 RGB, no normalization)."""
    torch.manual_seed(seed)
    model = Segmenter() if kind == "segmenter" else Detector()
    images, maps, boxes = scenes(photos, 2048, seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    seg_t = torch.from_numpy(maps[:, SEG_STRIDE // 2 :: SEG_STRIDE, SEG_STRIDE // 2 :: SEG_STRIDE])
    box_t, score_t, positive = _detector_targets(boxes)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        batch = torch.from_numpy(rng.choice(len(x), 32, replace=False))
        if kind == "segmenter":
            loss = F.cross_entropy(model(x[batch]), seg_t[batch])
        else:
            b, s = model(x[batch])
            loss = F.binary_cross_entropy(s, score_t[batch]) * 10 + F.l1_loss(
                b[positive[batch]], box_t[batch][positive[batch]]
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def _trained(model: nn.Module, name: str) -> nn.Module:
    model.load_state_dict(torch.load(Path(__file__).with_name(f"{name}.pt"), weights_only=True))
    return model.eval()


def segmenter() -> nn.Module:
    return _trained(Segmenter(), "segmenter")


def detector() -> nn.Module:
    return _trained(Detector(), "detector")
