"""Shared helpers: the yardstick is torch.nn in float64 on the same input
values; normkit must be as accurate as torch.nn at the same dtype, up to a
small factor, or within the dtype's rounding."""

import pytest
import torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Relative error (of the largest value) allowed whatever torch.nn achieves:
# a few units in the last place of the dtype.
FLOOR = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    # Inputs, weights and upstream gradients are O(1) in these tests, so
    # errors are measured against at least 1: a value that should be tiny
    # (a derivative through cancellation) cannot fail on rounding alone.
    scale = ref.abs().max().clamp_min(1.0)
    return ((a.double() - ref).abs().max() / scale).item()


def assert_accurate(nk, tr, ref, dtype, what):
    """normkit's `nk` is within the dtype's floor or 4x torch.nn's `tr` error
    against the float64 `ref`; also directly close to torch.nn."""
    assert nk.shape == ref.shape, f"{what}: shape {nk.shape} != {ref.shape}"
    assert torch.isfinite(nk.double()).all(), f"{what}: not finite"
    e_nk, e_tr = rel_err(nk, ref), rel_err(tr, ref) if tr is not None else 0.0
    assert e_nk <= max(4 * e_tr, FLOOR[dtype]), (
        f"{what} ({dtype}): normkit error {e_nk:.3g}, torch.nn {e_tr:.3g} vs float64"
    )
    if tr is not None:
        assert rel_err(nk, tr) <= 2 * max(4 * e_tr, FLOOR[dtype]) + e_tr, (
            f"{what} ({dtype}): normkit and torch.nn differ by {rel_err(nk, tr):.3g}"
        )


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`x` (logical [N, C, *]) stored with dimension 1 last, or as it is."""
    if not channels_last:
        return x.contiguous()
    y = x.movedim(1, -1).contiguous().movedim(-1, 1)
    assert not y.is_contiguous() or x.shape[1] == 1 or x[0, 0].numel() == 1
    return y


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
