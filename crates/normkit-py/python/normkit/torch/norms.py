"""Drop-in replacements for torch.nn's normalization modules.

Each class subclasses its ``torch.nn`` counterpart: the same constructor
arguments, parameters, buffers, ``state_dict`` keys, initialization and
``repr``; only the forward (and so the backward) runs through normkit.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _spec
from ._ops import check, layout_of, normalize, pack


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` through normkit."""

    def forward(self, input: Tensor) -> Tensor:
        check("layer_norm", input, self.weight, self.bias)
        x, layout = layout_of(input, channel_op=False)
        spec = _spec.layer_norm(self.normalized_shape, self.eps, self.weight is not None,
                                self.bias is not None)
        return normalize(spec, layout, x, pack(x, (self.weight, self.bias)))


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` through normkit; ``eps=None`` is the input
    dtype's machine epsilon, as in PyTorch."""

    def forward(self, x: Tensor) -> Tensor:
        check("rms_norm", x, self.weight)
        x, layout = layout_of(x, channel_op=False)
        spec = _spec.rms_norm(self.normalized_shape, self.eps, self.weight is not None)
        return normalize(spec, layout, x, pack(x, (self.weight,)))


def _batch_norm(m, input: Tensor) -> Tensor:
    """``torch.nn``'s ``_BatchNorm.forward``, through normkit."""
    m._check_input_dim(input)
    check("batch_norm", input, m.weight, m.bias, m.running_mean, m.running_var)
    momentum = m.momentum
    nbt: Optional[Tensor] = None
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        if m.momentum is None:
            nbt = m.num_batches_tracked
    elif m.momentum is None:
        momentum = 0.0
    training = m.training or (m.running_mean is None and m.running_var is None)
    use_running = not m.training or m.track_running_stats
    running_mean = m.running_mean if use_running else None
    running_var = m.running_var if use_running else None
    x, layout = layout_of(input, channel_op=True)
    spec = _spec.running("batch_norm", m.eps, momentum, training, m.weight is not None,
                         m.bias is not None)
    return normalize(
        spec, layout, x, pack(x, (m.weight, m.bias)), running_mean, running_var, nbt
    )


class BatchNorm1d(nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` through normkit."""

    forward = _batch_norm


class BatchNorm2d(nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` through normkit; channels_last inputs are
    read in place."""

    forward = _batch_norm


class BatchNorm3d(nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` through normkit."""

    forward = _batch_norm


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` through normkit."""

    def forward(self, input: Tensor) -> Tensor:
        check("group_norm", input, self.weight, self.bias)
        x, layout = layout_of(input, channel_op=True)
        spec = _spec.group_norm(self.num_groups, self.eps, self.weight is not None,
                                self.bias is not None)
        return normalize(spec, layout, x, pack(x, (self.weight, self.bias)))


def _instance_norm(m, input: Tensor) -> Tensor:
    """``torch.nn``'s ``_InstanceNorm._apply_instance_norm``, through normkit."""
    check("instance_norm", input, m.weight, m.bias, m.running_mean, m.running_var)
    training = m.training or not m.track_running_stats
    if m.running_mean is None:
        training = True
    x, layout = layout_of(input, channel_op=True)
    momentum = m.momentum if m.momentum is not None else 0.0
    spec = _spec.running("instance_norm", m.eps, momentum, training, m.weight is not None,
                         m.bias is not None)
    return normalize(
        spec, layout, x, pack(x, (m.weight, m.bias)), m.running_mean, m.running_var
    )


class InstanceNorm1d(nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` through normkit."""

    _apply_instance_norm = _instance_norm


class InstanceNorm2d(nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` through normkit; channels_last inputs
    are read in place."""

    _apply_instance_norm = _instance_norm


class InstanceNorm3d(nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` through normkit."""

    _apply_instance_norm = _instance_norm


#: torch.nn class → normkit class, for :func:`replace_norms`.
DROP_IN = {
    nn.LayerNorm: LayerNorm,
    nn.RMSNorm: RMSNorm,
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
    nn.GroupNorm: GroupNorm,
    nn.InstanceNorm1d: InstanceNorm1d,
    nn.InstanceNorm2d: InstanceNorm2d,
    nn.InstanceNorm3d: InstanceNorm3d,
}


def replace_norms(model: nn.Module) -> nn.Module:
    """Swaps every ``torch.nn`` norm of `model` (and `model` itself, if it is
    one) for normkit's, in place, keeping the same parameter and buffer
    objects (so optimizers holding them keep working), hooks and mode.
    Returns the model, or its replacement when `model` is itself a norm."""

    def swap(m: nn.Module) -> nn.Module:
        cls = DROP_IN.get(type(m))
        if cls is None:
            return m
        new = cls.__new__(cls)
        new.__dict__.update(m.__dict__)
        return new

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = swap(child)
            if new is not child:
                setattr(parent, name, new)
    return swap(model)
