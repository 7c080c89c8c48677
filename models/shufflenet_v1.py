"""ShuffleNet V1 (Zhang et al., 2017) at 1.0x with the ImageNet stem."""

import torch
from torch import nn
from torch.nn import functional as F

from mobile_vision_export.models.shufflenet_v2 import channel_shuffle

# Output channels of stages 2-4 for each group count (paper, Table 1, scale 1x).
_STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}


class ShuffleUnit(nn.Module):
    """Bottleneck unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; add (stride 1) or concat (stride 2)."""

    def __init__(self, inp: int, oup: int, stride: int, groups: int, first_group_conv: bool = True):
        super().__init__()
        self.stride = stride
        self.groups = groups if first_group_conv else 1
        out_branch = oup - inp if stride == 2 else oup
        mid = oup // 4
        self.conv1 = nn.Conv2d(inp, mid, 1, groups=self.groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_branch)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.stride == 2:
            return F.relu(torch.cat((out, F.avg_pool2d(x, 3, 2, 1)), dim=1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp = 24
        for name, repeats, out in zip(("stage2", "stage3", "stage4"), (4, 8, 4), _STAGE_CHANNELS[groups]):
            units = [ShuffleUnit(inp, out, 2, groups, first_group_conv=(name != "stage2"))]
            units += [ShuffleUnit(out, out, 1, groups) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            inp = out
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean([2, 3]))


def shufflenet_v1(groups: int, num_classes: int = 1000) -> ShuffleNetV1:
    """Build ShuffleNet V1 1.0x with 1, 2, 3, 4 or 8 groups."""
    return ShuffleNetV1(groups, num_classes)
