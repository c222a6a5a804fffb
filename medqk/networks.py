"""The networks medqk trains and evaluates: MedQKFormer (the one it deploys) and the paper's U-Net
baseline. A checkpoint records which one it holds by the names below."""
from __future__ import annotations

from torch import nn

from medqk.model import MedQKFormer, ModelConfig
from medqk.unet import UNet, UNetConfig

MEDQKFORMER = "medqkformer"
UNET = "unet"
#: name -> (class, its configuration class, the name messages use)
NETWORKS = {
    MEDQKFORMER: (MedQKFormer, ModelConfig, "MedQKFormer"),
    UNET: (UNet, UNetConfig, "U-Net"),
}


def network_name(model: nn.Module) -> str:
    for name, (cls, _, _) in NETWORKS.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"not a network medqk records: {type(model).__name__}")


def display_name(name: str) -> str:
    return NETWORKS[name][2]


def build_network(name: str, config: dict) -> nn.Module:
    """A freshly initialised network of kind ``name`` with the recorded ``config``."""
    cls, config_cls, _ = NETWORKS[name]
    built = config_cls.from_dict(config)
    if cls is UNet:
        return UNet(built.in_channels, built.out_channels, built.width)
    return MedQKFormer(built)
