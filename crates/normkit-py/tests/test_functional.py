"""normkit.functional over NumPy: outputs and vector-Jacobian products
against torch.nn.functional in float64 on the same values."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from normkit import functional as F

rng = np.random.default_rng(5)


def _t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64)).requires_grad_()


def _close(a, b, dtype, what):
    tol = 2e-5 if dtype == np.float32 else 4e-3
    b = b.detach().numpy()
    scale = max(np.abs(b).max(), 1e-3)
    err = np.abs(np.asarray(a, np.float64) - b).max() / scale
    assert err <= tol, f"{what}: {err:.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_layer_and_rms_norm(dtype):
    x = (rng.standard_normal((4, 3, 10)) * 2 + 1).astype(dtype)
    w, b = rng.standard_normal(10).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, vjp = F.layer_norm(x, 10, w, b, with_vjp=True)
    assert y.dtype == dtype and y.shape == x.shape
    tx, tw, tb = _t(x), _t(w), _t(b)
    ty = TF.layer_norm(tx, (10,), tw, tb, 1e-5)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, g = vjp(dy)
    _close(y, ty, dtype, "y")
    _close(dx, tx.grad, dtype, "dx")
    _close(g["weight"], tw.grad, np.float32 if dtype == np.float32 else dtype, "dweight")
    _close(g["bias"], tb.grad, dtype, "dbias")

    y = F.rms_norm(x, (3, 10), eps=1e-6)
    ty = TF.rms_norm(_t(x), (3, 10), None, 1e-6)
    _close(y, ty, dtype, "rms y")


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_batch_norm_updates_running_statistics(channel_axis):
    x = (rng.standard_normal((6, 3, 4, 5)) * 3 + 2).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    xin = x if channel_axis == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y = F.batch_norm(xin, rm, rv, training=True, momentum=None, channel_axis=channel_axis)
    if channel_axis == -1:
        y = np.moveaxis(y, -1, 1)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ty = TF.batch_norm(_t(x), trm, trv, training=True, momentum=1.0)
    _close(y, ty, np.float32, "y")
    _close(rm, trm, np.float32, "running_mean")
    _close(rv, trv, np.float32, "running_var")
    ye = F.batch_norm(xin, rm, rv, training=False, channel_axis=channel_axis)
    if channel_axis == -1:
        ye = np.moveaxis(ye, -1, 1)
    _close(ye, TF.batch_norm(_t(x), trm, trv, training=False), np.float32, "eval y")


def test_group_instance_and_the_rest_run():
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)
    _close(F.group_norm(x, 2), TF.group_norm(_t(x), 2), np.float32, "group_norm")
    _close(F.instance_norm(x), TF.instance_norm(_t(x)), np.float32, "instance_norm")
    y = F.dyt(x, 0.5, np.ones(6, np.float32), np.zeros(6, np.float32))
    _close(y, torch.tanh(0.5 * _t(x)), np.float32, "dyt")
    v, g = x.reshape(8, 6), rng.standard_normal((8, 1)).astype(np.float32)
    w = F.weight_norm(v, g, dim=0)
    tv = _t(v)
    _close(w, _t(g) * tv / tv.norm(dim=1, keepdim=True), np.float32, "weight_norm")
    s = rng.standard_normal((2, 4, 9)).astype(np.float32)
    y, vjp = F.adain(x, s, with_vjp=True)
    dx, grads = vjp(np.ones_like(y))
    assert dx.shape == x.shape and grads["style"].shape == s.shape


def test_derf_and_signature():
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    y, vjp = F.derf(x, 0.7, 0.2, w, None, with_vjp=True)
    tx, tw = _t(x), _t(w)
    ty = torch.erf(0.7 * tx + 0.2) * tw
    _close(y, ty, np.float32, "derf")
    ty.sum().backward()
    dx, g = vjp(np.ones_like(y))
    _close(dx, tx.grad, np.float32, "derf dx")
    _close(g["weight"], tw.grad, np.float32, "derf dweight")
    assert set(g) == {"alpha", "shift", "weight"}
    import normkit

    assert normkit.signature("derf;channels_last=1;weight=1;bias=0", "contiguous", [3, 8]) == [
        ("alpha", 1), ("shift", 1), ("weight", 8)]
