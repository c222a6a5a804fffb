"""A two-class spiking segmenter with a softmax output: medqk's NISF neurons, average pooling,
nearest upsampling (F.interpolate), a channel slice, and softmax over the two classes.

    medqk convert --model examples/softmax_net.py:build --input-shape 3 32 32 -o softmax-model
"""
import torch
import torch.nn.functional as F
from torch import nn

from medqk.nisf import NISF


class TwoClassNet(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(in_channels, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), NISF(4))
        self.pool = nn.AvgPool2d(2)
        self.mid = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), NISF(4))
        self.head = nn.Conv2d(2 * width, 2, 1)

    def forward(self, x):
        features = self.enc(x)
        half = features[:, : features.shape[1] // 2]           # the first half of the channels
        deep = F.interpolate(self.mid(self.pool(half)), scale_factor=2, mode="nearest")
        return torch.softmax(self.head(torch.cat([deep, features[:, half.shape[1]:]], dim=1)), dim=1)


def build() -> nn.Module:
    return TwoClassNet()
