"""A SpikeYOLO-style spiking segmenter: MultiSpike neurons (integer spikes 0..D), C2f blocks that
split their channels and concatenate the branches, residual adds, max pooling on spike maps, a
token-mixing nn.Linear applied over channels, nearest upsampling, and a logits output.

    medqk convert --model examples/spikeyolo_segmenter.py:build --input-shape 3 32 32 -o yolo-model
"""
import torch
from torch import nn

from medqk.convert import register_neuron


class MultiSpike(nn.Module):
    """SpikeYOLO's integer-valued spike: round(clamp(x, 0, D)), sent as the integer itself."""

    def __init__(self, D: int = 4):
        super().__init__()
        self.D = D

    def forward(self, x):
        return torch.round(torch.clamp(x, 0, self.D))


register_neuron(MultiSpike, output="integer", levels=lambda m: m.D)


class SpikeConv(nn.Module):
    """Spike, then convolution and BatchNorm (SpikeYOLO's order: the membrane is the BN output)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.spike = MultiSpike()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(self.spike(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = SpikeConv(c, c), SpikeConv(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Split the channels in two, run one half through a bottleneck, concatenate all three."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = SpikeConv(c_in, 2 * self.hidden, 1)
        self.m = Bottleneck(self.hidden)
        self.cv2 = SpikeConv(3 * self.hidden, c_out, 1)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a, b, self.m(b)], dim=1))


class TokenMixer(nn.Module):
    """A spiking MLP over channels on the flattened tokens (as in spiking transformers), residual."""

    def __init__(self, c: int):
        super().__init__()
        self.spike = MultiSpike()
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                       # [B, H*W, C]
        mixed = self.fc(self.spike(tokens))
        return x + mixed.transpose(1, 2).reshape(b, c, h, w)


class SpikeYoloSegmenter(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.stage1 = C2f(width, width)
        self.down = nn.Sequential(MultiSpike(), nn.MaxPool2d(2))    # max pooling on spike maps
        self.stage2 = nn.Sequential(SpikeConv(width, 2 * width), C2f(2 * width, 2 * width))
        self.mixer = TokenMixer(2 * width)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = C2f(3 * width, width)
        self.head = nn.Sequential(MultiSpike(), nn.Conv2d(width, 1, 1))  # logits

    def forward(self, x):
        skip = self.stage1(self.stem(x))
        deep = self.mixer(self.stage2(self.down(skip)))
        return self.head(self.fuse(torch.cat([skip, self.up(deep)], dim=1)))


def build() -> nn.Module:
    return SpikeYoloSegmenter()
