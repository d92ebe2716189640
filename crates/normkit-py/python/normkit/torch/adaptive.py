"""normkit's layers that torch.nn lacks: Dynamic Tanh, the adaptive family
(AdaIN, modulated LayerNorm/RMSNorm, Switchable Normalization, Batch
Renormalization) and weight normalization as a parametrization."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations as _P

from .. import _spec
from ._ops import check, layout_of, normalize, pack


class DyT(nn.Module):
    """Dynamic Tanh (Zhu et al., 2025): ``y = weight · tanh(alpha · x) + bias``.

    Arguments, parameters and ``state_dict`` keys (``alpha``, ``weight``,
    ``bias``) follow the paper's ``DynamicTanh``: ``channels_last=True``
    takes ``[*, C]`` (transformers), ``False`` takes ``[N, C, *]`` (CNNs; a
    channels_last tensor is read in place).
    """

    def __init__(
        self,
        normalized_shape: int,
        channels_last: bool = True,
        alpha_init_value: float = 0.5,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.normalized_shape = int(normalized_shape)
        self.channels_last = channels_last
        self.alpha_init_value = alpha_init_value
        self.elementwise_affine = elementwise_affine
        self.alpha = nn.Parameter(torch.empty(1, **kw))
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **kw))
            self.bias = nn.Parameter(torch.empty(self.normalized_shape, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init_value)
        if self.weight is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    kind = "dyt"

    def _scalars(self):
        return (self.alpha,)

    def forward(self, input: Tensor) -> Tensor:
        check(self.kind, input, self.alpha, self.weight, self.bias)
        x, layout = layout_of(input, channel_op=not self.channels_last)
        spec = _spec.pointwise(self.kind, self.channels_last, self.weight is not None,
                               self.bias is not None)
        params = pack(x, self._scalars() + (self.weight, self.bias))
        return normalize(spec, layout, x, params)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, channels_last={self.channels_last}, "
            f"alpha_init_value={self.alpha_init_value}, "
            f"elementwise_affine={self.elementwise_affine}"
        )


class Derf(DyT):
    """Dynamic erf (Chen et al., 2025, "Stronger Normalization-Free
    Transformers"): ``y = weight · erf(alpha · x + shift) + bias``, DyT's
    arguments plus the learnable scalar ``shift`` (``state_dict`` keys
    ``alpha``, ``shift``, ``weight``, ``bias``)."""

    kind = "derf"

    def __init__(self, normalized_shape: int, channels_last: bool = True,
                 alpha_init_value: float = 0.5, shift_init_value: float = 0.0,
                 elementwise_affine: bool = True, device=None, dtype=None) -> None:
        super().__init__(normalized_shape, channels_last, alpha_init_value, elementwise_affine,
                         device, dtype)
        self.shift_init_value = shift_init_value
        self.shift = nn.Parameter(torch.full((1,), float(shift_init_value), device=device,
                                             dtype=dtype))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "shift"):
            nn.init.constant_(self.shift, self.shift_init_value)

    def _scalars(self):
        return (self.alpha, self.shift)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift_init_value={self.shift_init_value}"


class AdaIN(nn.Module):
    """Adaptive Instance Normalization (Huang & Belongie, 2017):
    ``forward(content, style)`` gives the content the style's per-channel
    mean and standard deviation; gradients flow to both. ``unbiased``
    divides the variance by ``M - 1`` as the paper's code does."""

    def __init__(self, eps: float = 1e-5, unbiased: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.unbiased = unbiased

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        check("adain", content, style)
        x, layout = layout_of(content, channel_op=True)
        s = style.movedim(1, -1) if layout == "channels_last" else style
        spec = _spec.adain(style.shape, self.eps, self.unbiased)
        return normalize(spec, layout, x, pack(x, (s,)))

    def extra_repr(self) -> str:
        return f"eps={self.eps}, unbiased={self.unbiased}"


class _AdaNorm(nn.Module):
    """``y = norm(x) · (1 + scale[n]) + shift[n]`` with ``scale``, ``shift``
    of ``N × prod(normalized_shape)`` values (``[N, D]``), ``N = x.shape[0]``."""

    rms = False

    def __init__(
        self,
        normalized_shape: Union[int, Sequence[int]],
        eps: Optional[float] = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(d) for d in normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, **kw))
        else:
            self.register_parameter("weight", None)
        if elementwise_affine and bias and not self.rms:
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **kw))
        else:
            self.register_parameter("bias", None)

    def forward(self, input: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        op = "ada_rms_norm" if self.rms else "ada_layer_norm"
        check(op, input, scale, shift, self.weight, self.bias)
        x, layout = layout_of(input, channel_op=False)
        spec = _spec.ada_norm(self.normalized_shape, self.eps, self.rms,
                              self.weight is not None, self.bias is not None)
        return normalize(spec, layout, x, pack(x, (self.weight, self.bias, scale, shift)))

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
        )


class AdaLayerNorm(_AdaNorm):
    """Modulated LayerNorm (adaLN of DiT, FiLM): ``forward(x, scale, shift)``
    is ``LayerNorm(x) · (1 + scale) + shift`` per sample; the constructor is
    ``torch.nn.LayerNorm``'s."""

    rms = False


class AdaRMSNorm(_AdaNorm):
    """Modulated RMSNorm: ``forward(x, scale, shift)`` is
    ``RMSNorm(x) · (1 + scale) + shift`` per sample; the constructor is
    ``torch.nn.RMSNorm``'s (``eps=None``: the input dtype's machine eps)."""

    rms = True

    def __init__(self, normalized_shape, eps: Optional[float] = None, elementwise_affine=True, device=None, dtype=None):
        super().__init__(normalized_shape, eps, elementwise_affine, False, device, dtype)


class _RunningNorm(nn.Module):
    """Per-channel parameters and BatchNorm's running statistics and
    ``num_batches_tracked`` buffers, as ``torch.nn``'s ``_NormBase``."""

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **kw))
            self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            # Running statistics stay float32: normkit updates them in f32.
            f32 = {"device": device, "dtype": torch.float32}
            self.register_buffer("running_mean", torch.zeros(num_features, **f32))
            self.register_buffer("running_var", torch.ones(num_features, **f32))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _step(self):
        """Counts a training step; returns (training, momentum, count tensor)."""
        nbt = None
        momentum = self.momentum
        training = self.training or self.running_mean is None
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                nbt = self.num_batches_tracked
        elif momentum is None:
            momentum = 0.0
        return training, momentum, nbt

    def _spec(self, kind, training, momentum, r_max=None, d_max=None) -> str:
        return _spec.running(kind, self.eps, momentum, training, self.weight is not None,
                             self.bias is not None, r_max, d_max)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class SwitchNorm(_RunningNorm):
    """Switchable Normalization (Luo et al., 2019): a learned softmax mixture
    of InstanceNorm, LayerNorm and BatchNorm statistics over ``[N, C, *]``.
    Parameters ``weight``, ``bias``, ``mean_weight`` and ``var_weight`` (3
    logits each, IN/LN/BN, initialized to ones); BatchNorm's buffers."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        kw = {"device": device, "dtype": dtype}
        self.mean_weight = nn.Parameter(torch.ones(3, **kw))
        self.var_weight = nn.Parameter(torch.ones(3, **kw))

    def forward(self, input: Tensor) -> Tensor:
        check("switch_norm", input, self.weight, self.running_mean)
        training, momentum, nbt = self._step()
        x, layout = layout_of(input, channel_op=True)
        spec = self._spec("switch_norm", training, momentum)
        params = pack(x, (self.weight, self.bias, self.mean_weight, self.var_weight))
        return normalize(spec, layout, x, params, self.running_mean, self.running_var, nbt)


class BatchRenorm(_RunningNorm):
    """Batch Renormalization (Ioffe, 2017) over ``[N, C, *]``: training
    corrects the batch statistics towards the running ones by ``r``
    (clipped to ``[1/r_max, r_max]``) and ``d`` (to ``[-d_max, d_max]``);
    evaluation is BatchNorm's. ``r_max``, ``d_max`` may be changed between
    steps (the paper ramps them from 1 and 0)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 r_max=3.0, d_max=5.0, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.r_max = r_max
        self.d_max = d_max

    def forward(self, input: Tensor) -> Tensor:
        check("batch_renorm", input, self.weight, self.running_mean)
        training, momentum, nbt = self._step()
        x, layout = layout_of(input, channel_op=True)
        spec = self._spec("batch_renorm", training, momentum, self.r_max, self.d_max)
        params = pack(x, (self.weight, self.bias))
        return normalize(spec, layout, x, params, self.running_mean, self.running_var, nbt)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"


class _WeightNorm(_P._WeightNorm):
    """``torch.nn.utils.parametrizations``' weight norm through normkit."""

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        check("weight_norm", weight_v, weight_g)
        # PyTorch's dim -1 (also what dim=None becomes) is one norm over all.
        dim = None if self.dim == -1 else int(self.dim)
        v, layout = layout_of(weight_v, channel_op=False)
        return normalize(_spec.weight_norm(dim), layout, v, pack(v, (weight_g,)))


def weight_norm(module: nn.Module, name: str = "weight", dim: Optional[int] = 0) -> nn.Module:
    """``torch.nn.utils.parametrizations.weight_norm`` computed by normkit:
    the same parametrization (``original0`` = g, ``original1`` = v) and
    ``state_dict`` keys."""
    _P.weight_norm(module, name, dim)
    p = module.parametrizations[name][0]
    p.__class__ = _WeightNorm
    return module
