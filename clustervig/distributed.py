"""Several training processes (``torchrun``): the process group and batch norm across processes.

:class:`Distributed` is torchrun's process group (gloo on CPU, NCCL on GPU) or a single process;
:func:`sync_batch_norm` makes a model's batch-norm statistics span every process.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn

__all__ = ["Distributed", "sync_batch_norm"]


class Distributed:
    """The process group (torchrun's environment) or a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            import torch.distributed as dist

            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


class _CrossProcessBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics span every process (sums all-reduced with
    gradients), for CPU process groups, where ``nn.SyncBatchNorm`` refuses to run. Same
    parameters and buffers as the ``BatchNorm2d`` / ``BatchNorm1d`` it replaces."""

    def forward(self, x: Tensor) -> Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count.reshape(1)])
        with warnings.catch_warnings():  # deprecated for functional collectives, still exact
            warnings.simplefilter("ignore", FutureWarning)
            from torch.distributed.nn.functional import all_reduce

            stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            # momentum None: a cumulative average, as BatchNorm2d does
            m = self.momentum if self.momentum is not None else 1.0 / int(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2-D, 3-D or 4-D input, got {x.dim()}-D")


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with batch norms whose training statistics span every process:
    ``nn.SyncBatchNorm`` on CUDA, :class:`_CrossProcessBatchNorm` on the CPU (same state dict)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
                new = _CrossProcessBatchNorm(
                    child.num_features, child.eps, child.momentum, child.affine
                ).to(child.weight.device)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new)
    return model
