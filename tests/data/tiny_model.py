"""A small user model for tests of --model file.py:factory (10 classes, any input size)."""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean([2, 3]))


def build():
    return TinyNet()


def not_a_module():
    return 42


class TinyShuffle(nn.Module):
    """A ShuffleNet-style tail: channel shuffle, residual add, then a global average (NCHW islands in onnx2tf)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.conv = nn.Sequential(nn.Conv2d(16, 16, 1, groups=2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def pooled(self, x):
        x = self.stem(x)
        n, c, h, w = x.shape
        shuffled = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return nn.functional.relu(self.conv(shuffled) + x).mean([2, 3])

    def forward(self, x):
        return self.fc(self.pooled(x))


class ShuffleTwoHeads(TinyShuffle):
    """The same with two outputs: class scores and the pooled features they come from."""

    def forward(self, x):
        pooled = self.pooled(x)
        return self.fc(pooled), pooled


def build_shuffle():
    return TinyShuffle()


def shuffle_two_heads():
    return ShuffleTwoHeads()


class Unbalanced(nn.Module):
    """conv -> ReLU6 -> depthwise -> ReLU6 -> 1x1 projection -> 1x1 conv, with channel gains spread 300x apart."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 3, 2, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 10, 1)
        with torch.no_grad():
            gains = torch.logspace(-2.5, 0, 16)
            self.expand.weight.mul_(gains.view(-1, 1, 1, 1))
            self.expand.bias.mul_(gains)
            spread = torch.logspace(-1.5, 0, 8)
            self.project.weight.mul_(spread.view(-1, 1, 1, 1))
            self.project.bias.mul_(spread)

    def forward(self, x):
        x = nn.functional.relu6(self.expand(x))
        x = nn.functional.relu6(self.depthwise(x))
        return self.head(self.project(x)).mean([2, 3])


def build_unbalanced():
    torch.manual_seed(0)
    return Unbalanced()
