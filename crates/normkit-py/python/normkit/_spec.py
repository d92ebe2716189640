"""Op descriptions for ``normkit._normkit.forward``/``backward``, written
once for the torch modules and the NumPy functions (the format is
documented in ``crates/normkit-py/src/spec.rs``)."""

from __future__ import annotations

from typing import Optional, Sequence


def _b(v) -> str:
    return "1" if v else "0"


def _f(v) -> str:
    return "none" if v is None else repr(float(v))


def _shape(s) -> str:
    return ",".join(str(int(d)) for d in s)


def _affine(weight: bool, bias: bool) -> str:
    return f"weight={_b(weight)};bias={_b(bias)}"


def layer_norm(normalized_shape: Sequence[int], eps, weight: bool, bias: bool) -> str:
    return f"layer_norm;shape={_shape(normalized_shape)};eps={_f(eps)};{_affine(weight, bias)}"


def rms_norm(normalized_shape: Sequence[int], eps: Optional[float], weight: bool) -> str:
    return f"rms_norm;shape={_shape(normalized_shape)};eps={_f(eps)};weight={_b(weight)}"


def running(kind: str, eps, momentum, training: bool, weight: bool, bias: bool,
            r_max=None, d_max=None) -> str:
    """batch_norm, instance_norm, switch_norm, batch_renorm (with limits)."""
    limits = f"r_max={_f(r_max)};d_max={_f(d_max)};" if kind == "batch_renorm" else ""
    return (f"{kind};eps={_f(eps)};momentum={_f(momentum)};training={_b(training)};"
            f"{limits}{_affine(weight, bias)}")


def group_norm(num_groups: int, eps, weight: bool, bias: bool) -> str:
    return f"group_norm;groups={int(num_groups)};eps={_f(eps)};{_affine(weight, bias)}"


def pointwise(kind: str, channels_last: bool, weight: bool, bias: bool) -> str:
    """dyt or derf."""
    return f"{kind};channels_last={_b(channels_last)};{_affine(weight, bias)}"


def weight_norm(dim: Optional[int]) -> str:
    return f"weight_norm;dim={'none' if dim is None else int(dim)}"


def adain(style_shape: Sequence[int], eps, unbiased: bool) -> str:
    return f"adain;style={_shape(style_shape)};eps={_f(eps)};unbiased={_b(unbiased)}"


def ada_norm(normalized_shape: Sequence[int], eps, rms: bool, weight: bool, bias: bool) -> str:
    return (f"ada_norm;shape={_shape(normalized_shape)};eps={_f(eps)};rms={_b(rms)};"
            f"{_affine(weight, bias)}")
