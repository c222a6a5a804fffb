"""The U-Net of the paper's comparison table, as ``../shared/spec/unet-baseline.md`` describes it.

It lives in ``medqk`` (not ``energy``) because ``medqk train --model unet`` trains it and
``medqk eval`` evaluates it; the energy report imports it from here as its ANN baseline.

14,751,873 parameters; thop counts 32,894,877,696 at 1x3x256x256, of which the convolutions and
transposed convolutions really do 29,578,231,808 multiply-accumulates (thop sizes a transposed
convolution by its output, 4x its true cost).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Everything that fixes the U-Net's shape (what a checkpoint records)."""

    in_channels: int = 3
    out_channels: int = 1
    width: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def conv_bn_relu(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=True), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


def double_conv(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(i, o), conv_bn_relu(o, o))


class Down(nn.Module):
    def __init__(self, i: int, o: int):
        super().__init__()
        self.block = nn.Sequential(nn.MaxPool2d(2), double_conv(i, o))

    def forward(self, x):
        return self.block(x)


class Up(nn.Module):
    """2x2 stride-2 transposed convolution (c/2 -> c/2) on the deeper map, concat with the skip, two ConvBNReLU."""

    def __init__(self, i: int, o: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(i // 2, i // 2, 2, stride=2)
        self.conv = double_conv(i, o)

    def forward(self, deep, skip):
        return self.conv(torch.cat([skip, self.up(deep)], dim=1))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 64):
        super().__init__()
        self.config = UNetConfig(in_channels, out_channels, width)
        w = width
        self.inc = conv_bn_relu(in_channels, w)
        self.down1, self.down2 = Down(w, 2 * w), Down(2 * w, 4 * w)
        self.down3, self.down4 = Down(4 * w, 8 * w), Down(8 * w, 8 * w)
        self.up4, self.up3 = Up(16 * w, 4 * w), Up(8 * w, 2 * w)
        self.up2, self.up1 = Up(4 * w, w), Up(2 * w, w)
        self.outc = nn.Conv2d(w, out_channels, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up4(x5, x4)
        x = self.up3(x, x3)
        x = self.up2(x, x2)
        x = self.up1(x, x1)
        return torch.sigmoid(self.outc(x))
