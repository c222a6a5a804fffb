"""A U-Net of binary integrate-and-fire neurons (one time step: fire 1 where the input reaches the
threshold), max pooling on spike maps, nearest upsampling, skip concatenations, sigmoid output.

    medqk convert --model examples/if_unet.py:build --input-shape 3 32 32 -o if-unet-model
"""
import torch
from torch import nn

from medqk.convert import register_neuron


class IFNeuron(nn.Module):
    """Heaviside spike at one time step: 1 where x >= threshold, else 0."""

    def __init__(self, threshold: float = 1.0):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        return (x >= self.threshold).float()


register_neuron(IFNeuron, output="binary", threshold=lambda m: m.threshold)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), IFNeuron())


class IFUNet(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.enc1 = conv_block(in_channels, width)
        self.enc2 = conv_block(width, 2 * width)
        self.bottom = conv_block(2 * width, 4 * width)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = conv_block(6 * width, 2 * width)
        self.dec1 = conv_block(3 * width, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], dim=1))
        return torch.sigmoid(self.head(d1))


def build() -> nn.Module:
    return IFUNet()
