"""Model size: trainable parameters and MACs counted with ``torch.utils.flop_counter``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_gmacs"]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (fixed tables such as ViG's relative position are buffers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_gmacs(model: nn.Module, img_size: int = 224, in_channels: int = 3) -> float:
    """GMACs of one eval-mode forward of one image: FlopCounterMode FLOPs / 2 / 1e9.

    FlopCounterMode counts matrix products and convolutions (the GATv2 and local-update linear
    layers and the baselines' dense k-NN products included); k-means, k-NN inside the partitions
    and aggregation are custom ops it does not see.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.randn(1, in_channels, img_size, img_size, device=param.device, dtype=param.dtype)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        return counter.get_total_flops() / 2 / 1e9
    finally:
        model.train(was_training)
