"""MedQKFormer as published: NISF neurons, SpikeConv, PatchEmbedding, SDQK(-A), Decoder.

Module names follow the reference release (``encoder_stages.0.patch.patch_cnn.0.conv`` ...), so a
bare state_dict saved by the paper's training script loads strictly. Two deviations from the
release, both the paper's intent (see README): PatchEmbedding builds SpikeConv(o) (the release
passes a keyword that does not exist), and the loss is applied once to the probabilities.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from medqk.errors import InputError
from medqk.nisf import NISF

#: Input height and width must be multiples of this (four stride-2 stages).
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's shape (what a checkpoint must record)."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    in_channels: int = 3
    out_channels: int = 1
    levels: int = 4
    heads: int = 4

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != 4:
            raise ValueError(f"MedQKFormer has 4 encoder stages; got widths {self.widths}")
        for w in self.widths:
            if w % (2 * self.heads) != 0:
                raise ValueError(
                    f"each width must be a multiple of {2 * self.heads} (2 x heads) so that the "
                    f"q/k channels split into {self.heads} heads; got {w} in {self.widths}"
                )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class ConvBN(nn.Module):
    """3x3 convolution (stride 1, padding 1, bias), then BatchNorm2d."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.norm(self.conv(x))


class SpikeConv(nn.Module):
    """``x = bn(conv1(NISF(x)) + x0); x = bn(conv2(NISF(x)) + x0)`` with one shared BN."""

    def __init__(self, dim: int, levels: int = 4):
        super().__init__()
        self.conv1 = nn.Sequential(ConvBN(dim, dim))
        self.conv2 = nn.Sequential(ConvBN(dim, dim))
        self.bn = nn.BatchNorm2d(dim)
        self.lif1 = NISF(levels)
        self.lif2 = NISF(levels)

    def forward(self, x):
        x0 = x
        x = self.bn(self.conv1(self.lif1(x)) + x0)
        x = self.bn(self.conv2(self.lif2(x)) + x0)
        return x


class PatchEmbedding(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, levels: int = 4):
        super().__init__()
        self.patch_cnn = nn.Sequential(ConvBN(in_channels, out_channels))
        self.msc = SpikeConv(out_channels, levels)

    def forward(self, x):
        return self.msc(self.patch_cnn(x))


class HeadSum(nn.Module):
    """Sum over the channels of each head: [B, C, H, W] -> [B, heads, H, W] (heads of C/heads
    consecutive channels, as the release's reshape to [B, heads, C/heads, N] groups them)."""

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        return x.reshape(b, self.heads, c // self.heads, h, w).sum(dim=2)


class HeadBroadcast(nn.Module):
    """Repeat one map per head over that head's channels: [B, heads, H, W] -> [B, C, H, W]."""

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads

    def forward(self, x, like):
        return x.repeat_interleave(like.shape[1] // self.heads, dim=1)


class SDQK(nn.Module):
    """Spike-Decomposing Q-K attention: activated/inactivated interactions of q and k spikes."""

    def __init__(self, dim: int, levels: int = 4, heads: int = 4):
        super().__init__()
        half = dim // 2
        self.heads = heads
        self.conv_q = nn.Sequential(nn.Conv2d(dim, half, 3, padding=1, groups=half, bias=True), nn.BatchNorm2d(half))
        self.conv_k = nn.Sequential(nn.Conv2d(dim, half, 3, padding=1, groups=half, bias=True), nn.BatchNorm2d(half))
        self.q_lif = NISF(levels)
        self.k_lif = NISF(levels)
        self.head_sum = HeadSum(heads)
        self.wa_lif = NISF(levels)
        self.wi_lif = NISF(levels)
        self.head_broadcast = HeadBroadcast(heads)
        self.msc = SpikeConv(dim, levels)
        self.fpn = SpikeConv(dim, levels)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        q = self.q_lif(self.conv_q(x))
        k = self.k_lif(self.conv_k(x))
        qn = 1 - q
        kn = 1 - k
        # One weight per head and pixel, repeated over the head's channels: the release's
        # [B, heads, 1, N] x [B, heads, C/heads, N] broadcast, written channel-wise.
        wa = self.head_broadcast(self.wa_lif(self.head_sum(q)), k)
        wi = self.head_broadcast(self.wi_lif(self.head_sum(qn)), k)
        same = wa * k + wi * kn
        cross = wa * kn + wi * k
        attn = torch.cat([same, cross], dim=1)
        out = self.bn(self.msc(attn) + x)
        return self.fpn(out) + out


class SDQKA(nn.Module):
    """One encoder unit: PatchEmbedding, SDQK, then a 2x2 stride-2 conv + BN (halves H and W)."""

    def __init__(self, in_channels: int, out_channels: int, levels: int = 4, heads: int = 4):
        super().__init__()
        self.patch = PatchEmbedding(in_channels, out_channels, levels)
        self.SDQK = SDQK(out_channels, levels, heads)
        self.pool_conv = nn.Sequential(nn.Conv2d(out_channels, out_channels, 2, stride=2, bias=True), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return self.pool_conv(self.SDQK(self.patch(x)))


class Decoder(nn.Module):
    """``x = SpikeConv(x) + x``; bilinear x2 (align_corners=True); ConvBN(i, o)."""

    def __init__(self, in_channels: int, out_channels: int, levels: int = 4):
        super().__init__()
        self.sc = SpikeConv(in_channels, levels)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.nConv = nn.Sequential(ConvBN(in_channels, out_channels))

    def forward(self, x):
        x = self.sc(x) + x
        return self.nConv(self.up(x))


class MedQKFormer(nn.Module):
    """The published network; ``MedQKFormer()`` is the paper's configuration (7,429,345 parameters).

    Input: float [B, in_channels, H, W] in [0, 1] (BGR for RGB images, as the release reads with
    OpenCV), H and W multiples of 16. Output: probabilities [B, out_channels, H, W].
    """

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        config = config or ModelConfig()
        if overrides:
            config = ModelConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        w, d = config.widths, config.levels
        ins = (config.in_channels,) + w[:-1]
        self.encoder_stages = nn.ModuleList(SDQKA(i, o, d, config.heads) for i, o in zip(ins, w))
        dec_out = (w[2], w[1], w[0], w[0])
        dec_in = (w[3], w[2], w[1], w[0])
        self.decoder_stages = nn.ModuleList(Decoder(i, o, d) for i, o in zip(dec_in, dec_out))
        self.head1 = nn.Sequential(nn.Conv2d(w[0], config.out_channels, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.fx.Proxy):
            check_input_shape(tuple(x.shape), self.config.in_channels)
        skips = []
        for stage in self.encoder_stages:
            x = stage(x)
            skips.append(x)
        x = self.decoder_stages[0](skips[3])
        x = self.decoder_stages[1](skips[2] + x)
        x = self.decoder_stages[2](skips[1] + x)
        x = self.decoder_stages[3](skips[0] + x)
        return torch.sigmoid(self.head1(x))


def nearest_valid_sizes(n: int) -> tuple[int, int]:
    below = max(SIZE_MULTIPLE, n - n % SIZE_MULTIPLE)
    above = below if n % SIZE_MULTIPLE == 0 else below + SIZE_MULTIPLE
    return below, above


def check_input_shape(shape: tuple, in_channels: int) -> None:
    """Raise InputError unless ``shape`` is [B, in_channels, H, W] with H, W multiples of 16."""
    if len(shape) != 4:
        raise InputError(f"MedQKFormer expects a 4-D input [batch, {in_channels}, H, W]; got shape {list(shape)}")
    if shape[1] != in_channels:
        raise InputError(f"MedQKFormer expects {in_channels} input channels; got {shape[1]} (shape {list(shape)})")
    bad = [(name, n) for name, n in (("height", shape[2]), ("width", shape[3])) if n % SIZE_MULTIPLE or n == 0]
    if bad:
        hints = "; ".join(f"{name} {n}: use {' or '.join(map(str, sorted(set(nearest_valid_sizes(n)))))}" for name, n in bad)
        raise InputError(f"input height and width must be multiples of {SIZE_MULTIPLE} (four stride-2 stages); {hints}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
