"""Small non-classifiers for tests of --model file.py:factory (a segmenter, a two-output detector head,
MobileNetV3-style heads) and for third-party-style ONNX files (a text detector's dense probability map)."""

import torch
from torch import nn


class Seg(nn.Module):
    """A small segmenter: [1, 5, H/2, W/2] class map."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU()
        )
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.head(self.body(x))


class Det(nn.Module):
    """boxes [1, N, 4] (centre x, y, width, height, 0..1 of the image) and scores [1, N, 6] (0..1); with `raw`, the
    heads' outputs as they are (box offsets and class logits, as SSD-style heads give them before decoding)."""

    def __init__(self, raw: bool = False):
        super().__init__()
        self.raw = raw
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 4, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.boxes = nn.Conv2d(32, 4, 1)
        self.scores = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        f = self.body(x)
        b, s = self.boxes(f), self.scores(f)
        if not self.raw:
            b, s = b.sigmoid(), s.sigmoid()
        b, s = b.flatten(2).transpose(1, 2), s.flatten(2).transpose(1, 2)
        return b, s


class TextDet(nn.Module):
    """A text-detection-style map: one probability per input pixel, [1, 1, H, W] (as DBNet-like detectors give)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Conv2d(8, 1, 1), nn.Upsample(scale_factor=4, mode="nearest"), nn.Sigmoid())

    def forward(self, x):
        return self.head(self.body(x))


def seg():
    return Seg()


def det():
    return Det()


def det_raw():
    return Det(raw=True)


class Embedder(nn.Module):
    """A 128-d image embedding, L2-normalised (as face and image embedders give them)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU()
        )
        self.project = nn.Linear(32, 128)

    def forward(self, x):
        return nn.functional.normalize(self.project(self.body(x).mean([2, 3])), dim=1)


def embedder():
    return Embedder()


class MobileHeads(nn.Module):
    """MobileNetV3's ops beside a segmentation and an embedding head: hard-swish, squeeze-excitation (hard sigmoid),
    a nearest-neighbour upsampled skip, a bilinear upsampled class map [1, 4, H/2, W/2] and a 32-d L2-normalised
    embedding."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1), nn.Hardswish(), nn.Conv2d(48, 48, 3, 2, 1, groups=48))
        self.squeeze = nn.Sequential(nn.Conv2d(48, 12, 1), nn.ReLU(), nn.Conv2d(12, 48, 1), nn.Hardsigmoid())
        self.project = nn.Conv2d(48, 16, 1)
        self.classes = nn.Conv2d(16, 4, 1)
        self.embed = nn.Linear(16, 32)

    def forward(self, x):
        skip = self.stem(x)
        f = self.expand(skip)
        f = self.project(f * self.squeeze(f.mean((2, 3), keepdim=True)))
        f = skip + nn.functional.interpolate(f, scale_factor=2, mode="nearest")
        classes = nn.functional.interpolate(self.classes(f), scale_factor=2, mode="bilinear", align_corners=False)
        return classes, nn.functional.normalize(self.embed(f.mean((2, 3))), dim=1)


def mobile_heads():
    torch.manual_seed(0)
    return MobileHeads().eval()


class Activations(nn.Module):
    """A 10-class classifier through PReLU, LeakyReLU and tanh, ending in softmax (probabilities, not logits)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.BatchNorm2d(16),
            nn.PReLU(16),
            nn.Conv2d(16, 16, 3, 2, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(16, 16, 1),
            nn.Tanh(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return torch.softmax(self.fc(self.body(x).mean((2, 3))), dim=1)


def activations():
    torch.manual_seed(0)
    return Activations().eval()


class Decoder(nn.Module):
    """A U-Net-style segmenter: transposed convolutions (3x3 with output padding, and 2x2) up to full resolution
    over a skip, one bias-free conv, and one conv split into a 4-class map and 2 sigmoid channels."""

    def __init__(self):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(32, 16, 3, 2, padding=1, output_padding=1)
        self.fuse = nn.Conv2d(32, 16, 3, 1, 1, bias=False)
        self.up2 = nn.ConvTranspose2d(16, 8, 2, 2)
        self.heads = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        skip = self.down1(x)
        f = torch.relu(self.up1(self.down2(skip)))
        f = torch.relu(self.up2(torch.relu(self.fuse(torch.cat([skip, f], 1)))))
        classes, boxes = torch.split(self.heads(f), [4, 2], dim=1)
        return classes, torch.sigmoid(boxes)


def decoder():
    torch.manual_seed(0)
    return Decoder().eval()
