"""normkit's ops over NumPy arrays, for users without PyTorch.

Each function returns the output, a new array. With ``with_vjp=True`` it
returns ``(y, vjp)`` instead, where ``vjp(dy)`` gives ``(dx, grads)``: the
gradient of ``sum(y * dy)`` for the input and, in ``grads``, for every
parameter that was given (a dict by name, float32, shaped like it).

Arrays are float32 or float16, read and written in place through DLPack
(no copies when dense). Channel ops take ``[N, C, *]``; pass
``channel_axis=-1`` for ``[N, *, C]`` (channels last), which normkit reads
as it is. Running statistics are float32 arrays updated in place. Bad
shapes, dtypes or hyperparameters raise ``ValueError`` or ``TypeError``
naming the op and the shapes, and nothing is written.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from . import _normkit
from . import _spec as S

Params = Sequence[Tuple[str, Optional[np.ndarray]]]


def _ns(normalized_shape) -> Tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _dense(x: np.ndarray, channel_axis: int) -> Tuple[np.ndarray, str]:
    """`x` as a logical ``[N, C, *]`` array and the layout to read it in."""
    x = np.asarray(x)
    if channel_axis in (1, -x.ndim + 1) or x.ndim < 3:
        return np.ascontiguousarray(x), "contiguous"
    if channel_axis not in (-1, x.ndim - 1):
        raise ValueError(f"normkit: channel_axis must be 1 or -1, got {channel_axis}")
    return np.moveaxis(np.ascontiguousarray(x), -1, 1), "channels_last"


def _run(
    spec: str,
    x: np.ndarray,
    params: Params,
    *,
    layout: str = "contiguous",
    channel_axis: int = 1,
    running: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    count: int = 0,
    threads: int = 0,
    with_vjp: bool = False,
):
    given = [(n, np.asarray(p)) for n, p in params if p is not None]
    packed = (
        np.concatenate([p.astype(np.float32, copy=False).reshape(-1) for _, p in given])
        if given
        else np.empty(0, np.float32)
    )
    y = np.empty_like(x)
    rm, rv = running if running is not None else (None, None)
    saved = _normkit.forward(spec, layout, threads, y, x, packed, rm, rv, count)
    out = np.moveaxis(y, 1, -1) if layout == "channels_last" else y
    if not with_vjp:
        return out

    def vjp(dy: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        dy = np.asarray(dy, dtype=x.dtype)
        if layout == "channels_last":
            dy = np.moveaxis(np.ascontiguousarray(dy), -1, 1)
        else:
            dy = np.ascontiguousarray(dy)
        dx = np.empty_like(x)
        dparams = np.empty_like(packed) if given else None
        _normkit.backward(spec, layout, threads, dx, dparams, dy, x, packed, saved)
        grads, at = {}, 0
        for name, p in given:
            grads[name] = dparams[at : at + p.size].reshape(p.shape).astype(p.dtype)
            at += p.size
        return (np.moveaxis(dx, 1, -1) if layout == "channels_last" else dx), grads

    return out, vjp


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, threads=0, with_vjp=False):
    """``torch.nn.functional.layer_norm``."""
    spec = S.layer_norm(_ns(normalized_shape), eps, weight is not None, bias is not None)
    return _run(spec, np.ascontiguousarray(x), [("weight", weight), ("bias", bias)],
                threads=threads, with_vjp=with_vjp)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, threads=0, with_vjp=False):
    """``torch.nn.functional.rms_norm``; ``eps=None`` is the dtype's machine eps."""
    spec = S.rms_norm(_ns(normalized_shape), eps, weight is not None)
    return _run(spec, np.ascontiguousarray(x), [("weight", weight)], threads=threads, with_vjp=with_vjp)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, num_batches_tracked=0, channel_axis=1, threads=0,
               with_vjp=False):
    """``torch.nn.functional.batch_norm``: training updates the running
    statistics when given (``momentum=None``: cumulative average over
    ``num_batches_tracked`` earlier steps); evaluation reads them."""
    x, layout = _dense(x, channel_axis)
    running = None if running_mean is None else (running_mean, running_var)
    spec = S.running("batch_norm", eps, momentum, training, weight is not None, bias is not None)
    return _run(spec, x, [("weight", weight), ("bias", bias)], layout=layout, running=running,
                count=num_batches_tracked, threads=threads, with_vjp=with_vjp)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, threads=0,
               with_vjp=False):
    """``torch.nn.functional.group_norm``."""
    x, layout = _dense(x, channel_axis)
    spec = S.group_norm(num_groups, eps, weight is not None, bias is not None)
    return _run(spec, x, [("weight", weight), ("bias", bias)], layout=layout, threads=threads,
                with_vjp=with_vjp)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, channel_axis=1, threads=0,
                  with_vjp=False):
    """``torch.nn.functional.instance_norm``."""
    x, layout = _dense(x, channel_axis)
    running = None if running_mean is None else (running_mean, running_var)
    spec = S.running("instance_norm", eps, momentum, use_input_stats, weight is not None,
                     bias is not None)
    return _run(spec, x, [("weight", weight), ("bias", bias)], layout=layout, running=running,
                threads=threads, with_vjp=with_vjp)


def dyt(x, alpha, weight=None, bias=None, *, channels_last=True, threads=0, with_vjp=False):
    """Dynamic Tanh ``weight · tanh(alpha · x) + bias``, per channel of
    ``[*, C]`` (``channels_last=True``) or ``[N, C, *]``."""
    x = np.ascontiguousarray(x)
    spec = S.pointwise("dyt", channels_last, weight is not None, bias is not None)
    alpha = np.asarray(alpha, dtype=np.float32).reshape(1)
    return _run(spec, x, [("alpha", alpha), ("weight", weight), ("bias", bias)], threads=threads,
                with_vjp=with_vjp)


def derf(x, alpha, shift, weight=None, bias=None, *, channels_last=True, threads=0,
         with_vjp=False):
    """Dynamic erf ``weight · erf(alpha · x + shift) + bias``, per channel of
    ``[*, C]`` (``channels_last=True``) or ``[N, C, *]``."""
    x = np.ascontiguousarray(x)
    spec = S.pointwise("derf", channels_last, weight is not None, bias is not None)
    scalars = [(n, np.asarray(v, dtype=np.float32).reshape(1)) for n, v in (("alpha", alpha), ("shift", shift))]
    return _run(spec, x, scalars + [("weight", weight), ("bias", bias)], threads=threads,
                with_vjp=with_vjp)


def weight_norm(v, g, dim: Optional[int] = 0, *, threads=0, with_vjp=False):
    """``w = g · v / ‖v‖`` with one norm per index of `dim` (``None``: one)."""
    spec = S.weight_norm(dim)
    return _run(spec, np.ascontiguousarray(v), [("g", g)], threads=threads, with_vjp=with_vjp)


def adain(content, style, eps=1e-5, unbiased=True, *, channel_axis=1, threads=0, with_vjp=False):
    """Adaptive Instance Normalization; ``vjp`` also gives ``grads['style']``."""
    x, layout = _dense(content, channel_axis)
    s, _ = _dense(style, channel_axis)
    spec = S.adain(s.shape, eps, unbiased)
    s_mem = np.moveaxis(s, 1, -1) if layout == "channels_last" else s
    return _run(spec, x, [("style", np.ascontiguousarray(s_mem))], layout=layout, threads=threads,
                with_vjp=with_vjp)


def _ada(rms, x, normalized_shape, scale, shift, weight, bias, eps, threads, with_vjp):
    spec = S.ada_norm(_ns(normalized_shape), eps, rms, weight is not None, bias is not None)
    params = [("weight", weight), ("bias", bias), ("scale", scale), ("shift", shift)]
    return _run(spec, np.ascontiguousarray(x), params, threads=threads, with_vjp=with_vjp)


def ada_layer_norm(x, normalized_shape, scale, shift, weight=None, bias=None, eps=1e-5, *,
                   threads=0, with_vjp=False):
    """``layer_norm(x) · (1 + scale[n]) + shift[n]``, scale and shift ``[N, D]``."""
    return _ada(False, x, normalized_shape, scale, shift, weight, bias, eps, threads, with_vjp)


def ada_rms_norm(x, normalized_shape, scale, shift, weight=None, eps=None, *, threads=0,
                 with_vjp=False):
    """``rms_norm(x) · (1 + scale[n]) + shift[n]``, scale and shift ``[N, D]``."""
    return _ada(True, x, normalized_shape, scale, shift, weight, None, eps, threads, with_vjp)


def switch_norm(x, mean_weight, var_weight, running_mean=None, running_var=None, weight=None,
                bias=None, training=True, momentum=0.1, eps=1e-5, *, num_batches_tracked=0,
                channel_axis=1, threads=0, with_vjp=False):
    """Switchable Normalization with importance logits (IN, LN, BN)."""
    x, layout = _dense(x, channel_axis)
    running = None if running_mean is None else (running_mean, running_var)
    spec = S.running("switch_norm", eps, momentum, training, weight is not None, bias is not None)
    params = [("weight", weight), ("bias", bias), ("mean_weight", mean_weight),
              ("var_weight", var_weight)]
    return _run(spec, x, params, layout=layout, running=running, count=num_batches_tracked,
                threads=threads, with_vjp=with_vjp)


def batch_renorm(x, running_mean, running_var, weight=None, bias=None, training=True,
                 r_max=3.0, d_max=5.0, momentum=0.1, eps=1e-5, *, num_batches_tracked=0,
                 channel_axis=1, threads=0, with_vjp=False):
    """Batch Renormalization; training needs and updates the running statistics."""
    x, layout = _dense(x, channel_axis)
    spec = S.running("batch_renorm", eps, momentum, training, weight is not None,
                     bias is not None, r_max, d_max)
    return _run(spec, x, [("weight", weight), ("bias", bias)], layout=layout,
                running=(running_mean, running_var), count=num_batches_tracked, threads=threads,
                with_vjp=with_vjp)


__all__ = [
    "adain",
    "ada_layer_norm",
    "ada_rms_norm",
    "batch_norm",
    "batch_renorm",
    "derf",
    "dyt",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "switch_norm",
    "weight_norm",
]
