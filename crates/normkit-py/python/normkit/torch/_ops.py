"""normkit's one forward and one backward as PyTorch ops.

Every module calls :func:`normalize` with an op description (see
``normkit._normkit``), the input and the parameters packed into one float32
vector in the op's packing order. Eagerly it runs through an
``autograd.Function``; under ``torch.compile`` through the custom ops
``normkit::forward`` / ``normkit::backward`` registered with
``torch.library``, so the graph does not break. Both call the same two
functions below, which hand the tensors to Rust by DLPack (no copies)
and size normkit's thread pool to ``torch.get_num_threads()``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.dlpack import from_dlpack, to_dlpack

from .. import _normkit

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def layout_of(x: Tensor, channel_op: bool) -> Tuple[Tensor, str]:
    """The input, dense, and the layout normkit reads it in.

    A channel op reads channels-last memory as it is (dimension 1 stored
    last); anything else not contiguous is copied to contiguous, as
    ``torch.nn``'s kernels do.
    """
    if x.is_contiguous():
        return x, "contiguous"
    if channel_op and x.dim() >= 3:
        fmt = _CHANNELS_LAST.get(x.dim())
        if fmt is not None:
            if x.is_contiguous(memory_format=fmt):
                return x, "channels_last"
        elif x.movedim(1, -1).is_contiguous():
            return x, "channels_last"
    return x.contiguous(), "contiguous"


def _like(t: Tensor, x: Tensor, layout: str) -> Tensor:
    """`t` in `x`'s memory layout (a copy only when it differs)."""
    if layout == "contiguous":
        return t.contiguous()
    if t.stride() == x.stride():
        return t
    return torch.empty_like(x).copy_(t)


def check(op: str, x: Tensor, *others: Optional[Tensor]) -> None:
    """Device and dtype checks with messages naming the op and the shape."""
    for t in (x,) + others:
        if t is not None and t.device.type != "cpu":
            raise ValueError(
                f"normkit.{op}: tensor of shape {tuple(t.shape)} is on device "
                f"{t.device}; normkit's kernels run on the CPU (move the module and "
                f"its input with .cpu(), or use torch.nn's module on {t.device.type})"
            )
    if x.dtype not in DTYPES:
        raise TypeError(
            f"normkit.{op}: input of shape {tuple(x.shape)} is {x.dtype}; "
            "expected torch.float32, torch.bfloat16 or torch.float16"
        )


def pack(x: Tensor, params: Sequence[Optional[Tensor]]) -> Tensor:
    """Parameters flattened to float32 and concatenated, in packing order
    (differentiable: their gradients flow back through autograd)."""
    ps = [p.reshape(-1).to(torch.float32) for p in params if p is not None]
    if not ps:
        return torch.empty(0, dtype=torch.float32, device=x.device)
    if len(ps) == 1:
        return ps[0]
    return torch.cat(ps)


def _dl(t: Optional[Tensor]):
    return None if t is None else to_dlpack(t.detach())


def forward_impl(
    spec: str,
    layout: str,
    x: Tensor,
    params: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
):
    """Runs the forward: returns the output and the Rust-side saved state."""
    y = torch.empty_like(x)
    count = 0
    if num_batches_tracked is not None:
        # The module counted this step already; normkit takes the count
        # before it (momentum 1 / (count + 1)).
        count = max(int(num_batches_tracked) - 1, 0)
    saved = _normkit.forward(
        spec,
        layout,
        torch.get_num_threads(),
        to_dlpack(y),
        to_dlpack(x.detach()),
        to_dlpack(params.detach()),
        _dl(running_mean),
        _dl(running_var),
        count,
    )
    return y, saved


def backward_impl(
    spec: str,
    layout: str,
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    saved,
    need_dparams: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Runs the backward from the state `saved` (or its handle tensor)."""
    dy = _like(dy, x, layout)
    if dy.dtype != x.dtype:
        dy = dy.to(x.dtype)
    dx = torch.empty_like(x)
    dparams = torch.empty_like(params) if need_dparams else None
    handle = saved if isinstance(saved, _normkit.Saved) else to_dlpack(saved)
    _normkit.backward(
        spec,
        layout,
        torch.get_num_threads(),
        to_dlpack(dx),
        _dl(dparams),
        to_dlpack(dy.detach()),
        to_dlpack(x.detach()),
        to_dlpack(params.detach()),
        handle,
    )
    return dx, dparams


class _Norm(torch.autograd.Function):
    """Eager autograd: the saved state stays a Rust object on ctx."""

    @staticmethod
    def forward(ctx, spec, layout, x, params, running_mean, running_var, nbt):
        y, saved = forward_impl(spec, layout, x, params, running_mean, running_var, nbt)
        ctx.spec, ctx.layout, ctx.state = spec, layout, saved
        ctx.save_for_backward(x, params)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, params = ctx.saved_tensors
        dx, dparams = backward_impl(
            ctx.spec, ctx.layout, dy, x, params, ctx.state, ctx.needs_input_grad[3]
        )
        return None, None, dx, dparams, None, None, None


# --- torch.library: the same two passes as custom ops, for torch.compile ---


@torch.library.custom_op("normkit::forward", mutates_args=())
def _forward_op(
    spec: str,
    layout: str,
    x: Tensor,
    params: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    # Functional, as torch.library's autograd needs: the running statistics
    # are updated on copies, returned for the caller to write back.
    rm = running_mean.clone() if running_mean is not None else None
    rv = running_var.clone() if running_var is not None else None
    y, saved = forward_impl(spec, layout, x, params, rm, rv, num_batches_tracked)
    # The state as a one-element int64 tensor that owns it.
    handle = from_dlpack(saved)
    return y, handle, _or_empty(rm, params), _or_empty(rv, params)


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


@_forward_op.register_fake
def _(spec, layout, x, params, running_mean, running_var, num_batches_tracked):
    def stat(t):
        return params.new_empty(0) if t is None else torch.empty_like(t)

    handle = x.new_empty([1], dtype=torch.int64)
    return torch.empty_like(x), handle, stat(running_mean), stat(running_var)


@torch.library.custom_op("normkit::backward", mutates_args=())
def _backward_op(
    spec: str,
    layout: str,
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    handle: Tensor,
    need_dparams: bool,
) -> Tuple[Tensor, Tensor]:
    dx, dparams = backward_impl(spec, layout, dy, x, params, handle, need_dparams)
    return dx, dparams if dparams is not None else params.new_empty(0)


@_backward_op.register_fake
def _(spec, layout, dy, x, params, handle, need_dparams):
    n = params.shape[0] if need_dparams else 0
    return torch.empty_like(x), params.new_empty([n])


def _setup_context(ctx, inputs, output):
    spec, layout, x, params = inputs[:4]
    handle = output[1]
    ctx.spec, ctx.layout = spec, layout
    ctx.save_for_backward(x, params, handle)


def _backward(ctx, dy, *_):
    x, params, handle = ctx.saved_tensors
    need = ctx.needs_input_grad[3]
    dx, dparams = _backward_op(ctx.spec, ctx.layout, dy, x, params, handle, need)
    return None, None, dx, (dparams if need else None), None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def normalize(
    spec: str,
    layout: str,
    x: Tensor,
    params: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    num_batches_tracked: Optional[Tensor] = None,
) -> Tensor:
    """The forward of the op `spec` on `x` (dense in `layout`) with the
    packed `params`; differentiable in `x` and `params`."""
    if running_mean is not None and running_mean.dtype != torch.float32:
        # Buffers of a module cast to half precision: normkit updates the
        # statistics in float32, then they are rounded back.
        rm, rv = running_mean.float(), running_var.float()
        y = normalize(spec, layout, x, params, rm, rv, num_batches_tracked)
        running_mean.copy_(rm)
        running_var.copy_(rv)
        return y
    if torch.compiler.is_compiling():
        y, _, rm, rv = _forward_op(
            spec, layout, x, params, running_mean, running_var, num_batches_tracked
        )
        if running_mean is not None:
            with torch.no_grad():
                running_mean.copy_(rm)
                running_var.copy_(rv)
        return y
    if torch.is_grad_enabled() and (x.requires_grad or params.requires_grad):
        return _Norm.apply(
            spec, layout, x, params, running_mean, running_var, num_batches_tracked
        )
    y, _ = forward_impl(spec, layout, x, params, running_mean, running_var, num_batches_tracked)
    return y
