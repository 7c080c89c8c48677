"""Xception (Chollet, 2017) for 299x299 classification, with the widely used PyTorch port's keys."""

from torch import nn


class SeparableConv2d(nn.Module):
    """Depthwise conv followed by a 1x1 pointwise conv, no bias."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, inp, kernel, stride, padding, groups=inp, bias=False)
        self.pointwise = nn.Conv2d(inp, oup, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """`reps` (ReLU, separable conv, BN) triples, an optional stride-2 max pool, and a residual shortcut."""

    def __init__(
        self, inp: int, oup: int, reps: int, stride: int = 1, start_with_relu: bool = True, grow_first: bool = True
    ):
        super().__init__()
        if oup != inp or stride != 1:
            self.skip = nn.Conv2d(inp, oup, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(oup)
        else:
            self.skip = None
        channels = [inp] + [oup if grow_first else inp] * reps
        if not grow_first:
            channels[-1] = oup
        rep = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            rep += [nn.ReLU(inplace=True), SeparableConv2d(cin, cout), nn.BatchNorm2d(cout)]
        rep[0] = nn.ReLU(inplace=False)
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, inp):
        skip = self.skipbn(self.skip(inp)) if self.skip is not None else inp
        return self.rep(inp) + skip


class Xception(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        for i in range(4, 12):  # middle flow
            setattr(self, f"block{i}", Block(728, 728, 3, 1))
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = SeparableConv2d(1536, 2048)
        self.bn4 = nn.BatchNorm2d(2048)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        return self.fc(x.mean([2, 3]))


def xception(num_classes: int = 1000) -> Xception:
    """Build Xception (entry, middle and exit flows)."""
    return Xception(num_classes)
