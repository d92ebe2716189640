"""Bad input raises a Python exception naming the op and the shapes; never
a crash, and nothing is written."""

import numpy as np
import pytest
import torch

import normkit
import normkit.torch as nkt
from normkit import functional as F


def test_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"layer_norm.*\[3, 4\].*\[5\]"):
        nkt.LayerNorm(5)(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"group_norm"):
        nkt.GroupNorm(2, 4)(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match=r"num_groups = 4.*6 channels"):
        gn = nkt.GroupNorm(4, 4, affine=False)
        gn(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match=r"rms_norm"):
        nkt.RMSNorm([2, 3])(torch.randn(4, 3, 2))


@pytest.mark.parametrize("eps", [-1.0, float("nan"), float("inf")])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match=r"layer_norm: eps"):
        nkt.LayerNorm(4, eps=eps)(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"batch_norm: eps"):
        nkt.BatchNorm1d(4, eps=eps)(torch.randn(2, 4))


def test_bad_dtype_is_a_type_error():
    with pytest.raises(TypeError, match=r"layer_norm.*torch.float64"):
        nkt.LayerNorm(4).double()(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"batch_norm.*torch.int64"):
        nkt.BatchNorm1d(4)(torch.ones(2, 4, dtype=torch.int64))


def test_other_device_names_it():
    x = torch.randn(2, 4, device="meta")
    with pytest.raises(ValueError, match=r"layer_norm.*device meta"):
        nkt.LayerNorm(4)(x)
    with pytest.raises(ValueError, match=r"batch_norm.*device meta"):
        nkt.BatchNorm1d(4).to("meta")(x)


def test_failed_training_step_leaves_running_statistics_alone():
    bn = nkt.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.fill_(0.25)
    before = (bn.running_mean.clone(), bn.running_var.clone())
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel"):
        bn(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"batch_norm"):
        bn(torch.randn(2, 4, 3, 3))  # 4 channels for 3
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])


def test_raw_entry_point_refuses_aliasing_and_bad_arrays():
    spec = "layer_norm;shape=4;eps=1e-05;weight=0;bias=0"
    x = np.random.rand(3, 4).astype(np.float32)
    p = np.empty(0, np.float32)
    with pytest.raises(ValueError, match=r"share memory"):
        normkit.forward(spec, "contiguous", 0, x, x, p)
    with pytest.raises(ValueError, match=r"not contiguous"):
        strided = np.empty((3, 8), np.float32)[:, ::2]
        normkit.forward(spec, "contiguous", 0, np.empty((3, 4), np.float32), strided, p)
    ro = np.empty((3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"read-only"):
        normkit.forward(spec, "contiguous", 0, ro, x, p)
    with pytest.raises(TypeError, match=r"float64"):
        normkit.forward(spec, "contiguous", 0, x.astype(np.float64), x.astype(np.float64), p)
    with pytest.raises(TypeError, match=r"y.*float16.*float32"):
        normkit.forward(spec, "contiguous", 0, x.astype(np.float16), x, p)
    with pytest.raises(TypeError, match=r"__dlpack__"):
        normkit.forward(spec, "contiguous", 0, [1.0], x, p)
    with pytest.raises(ValueError, match=r"unknown op"):
        normkit.forward("nope;eps=1", "contiguous", 0, np.empty_like(x), x, p)
    y = np.zeros_like(x)
    with pytest.raises(ValueError, match=r"params"):
        normkit.forward("layer_norm;shape=4;eps=1e-05;weight=1;bias=0", "contiguous", 0, y, x, p)
    assert not y.any(), "a refused call wrote its output"


def test_backward_refuses_a_foreign_or_freed_state():
    spec = "layer_norm;shape=4;eps=1e-05;weight=0;bias=0"
    x = np.random.rand(3, 4).astype(np.float32)
    p = np.empty(0, np.float32)
    saved = normkit.forward(spec, "contiguous", 0, np.empty_like(x), x, p)
    dx = np.zeros_like(x)
    other = "rms_norm;shape=4;eps=1e-05;weight=0"
    with pytest.raises(ValueError, match=r"comes from a layer_norm forward"):
        normkit.backward(other, "contiguous", 0, dx, None, x, x, p, saved)
    forged = np.array([10**12], dtype=np.int64)
    with pytest.raises(ValueError, match=r"no saved forward state"):
        normkit.backward(spec, "contiguous", 0, dx, None, x, x, p, forged)
    handle = np.from_dlpack(saved)
    normkit.backward(spec, "contiguous", 0, dx, None, x, x, p, handle)
    assert dx.any()
    sid = saved.id
    del saved, handle
    with pytest.raises(ValueError, match=r"no saved forward state"):
        normkit.backward(spec, "contiguous", 0, dx, None, x, x, p, np.array([sid]))


def test_functional_errors():
    with pytest.raises(ValueError, match=r"group_norm"):
        F.group_norm(np.ones((2, 6, 3), np.float32), 4)
    with pytest.raises(ValueError, match=r"batch_norm"):
        F.batch_norm(np.ones((2, 3, 4), np.float32), np.zeros(2, np.float32),
                     np.ones(2, np.float32))
