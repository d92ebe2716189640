"""Every drop-in module against its torch.nn namesake: random shapes, both
memory layouts, float32/bfloat16/float16; outputs, input and parameter
gradients, running statistics and num_batches_tracked over two training
steps (or two evaluation steps), each against torch.nn in float64."""

import copy
import random

import pytest
import torch
from torch import nn

import normkit.torch as nkt
from conftest import DTYPES, assert_accurate, to_layout


def _randomize(m: nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1.0)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)


def _cases():
    """(id, torch.nn factory, normkit class, input shape, channel op)."""
    rng = random.Random(7)
    out = []
    for i in range(3):
        d = rng.choice([1, 7, 64, 333])
        lead = [rng.randint(1, 5) for _ in range(rng.randint(1, 2))]
        for kw in [{}, {"elementwise_affine": False}, {"bias": False}]:
            out.append((f"layer_norm{i}{kw}", lambda d=d, kw=kw: nn.LayerNorm(d, **kw),
                        nkt.LayerNorm, lead + [d], False))
        ns = [rng.randint(2, 5), d]
        out.append((f"layer_norm_2d{i}", lambda ns=ns: nn.LayerNorm(ns), nkt.LayerNorm,
                    lead + ns, False))
        for kw in [{}, {"eps": 1e-6}, {"elementwise_affine": False}]:
            out.append((f"rms_norm{i}{kw}", lambda d=d, kw=kw: nn.RMSNorm(d, **kw),
                        nkt.RMSNorm, lead + [d], False))
    for dims, tcls, ncls in [(0, nn.BatchNorm1d, nkt.BatchNorm1d), (1, nn.BatchNorm1d, nkt.BatchNorm1d),
                             (2, nn.BatchNorm2d, nkt.BatchNorm2d), (3, nn.BatchNorm3d, nkt.BatchNorm3d)]:
        c = rng.choice([1, 3, 16])
        shape = [rng.randint(2, 4), c] + [rng.randint(1, 6) for _ in range(dims)]
        for kw in [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}]:
            out.append((f"{tcls.__name__}_{dims}{kw}", lambda c=c, t=tcls, kw=kw: t(c, **kw),
                        ncls, shape, True))
    for g, c in [(1, 4), (2, 6), (4, 4), (3, 12)]:
        shape = [rng.randint(1, 3), c] + [rng.randint(1, 5) for _ in range(rng.randint(1, 3))]
        for kw in [{}, {"affine": False}]:
            out.append((f"group_norm{g}_{c}{kw}", lambda g=g, c=c, kw=kw: nn.GroupNorm(g, c, **kw),
                        nkt.GroupNorm, shape, True))
    for dims, tcls, ncls in [(1, nn.InstanceNorm1d, nkt.InstanceNorm1d),
                             (2, nn.InstanceNorm2d, nkt.InstanceNorm2d),
                             (3, nn.InstanceNorm3d, nkt.InstanceNorm3d)]:
        c = rng.choice([2, 5])
        shape = [rng.randint(1, 3), c] + [rng.randint(2, 6) for _ in range(dims)]
        for kw in [{}, {"affine": True}, {"track_running_stats": True},
                   {"affine": True, "track_running_stats": True, "momentum": None}]:
            out.append((f"{tcls.__name__}{kw}", lambda c=c, t=tcls, kw=kw: t(c, **kw),
                        ncls, shape, True))
    return out


CASES = _cases()

# Channel ops of rank >= 3 run in both layouts; the rest have one.
LAYOUTS = [(c, cl) for c in CASES for cl in ([False, True] if c[4] and len(c[3]) >= 3 else [False])]


def _grads(m):
    return {n: p.grad for n, p in m.named_parameters()}


def run_pair(make, ncls, shape, dtype, channels_last, training, steps=2):
    base = make()
    _randomize(base)
    nk = ncls.__new__(ncls)
    nk.__dict__.update(copy.deepcopy(base).__dict__)
    assert type(nk) is ncls
    tr, ref = copy.deepcopy(base).to(dtype), copy.deepcopy(base).double()
    nk = nk.to(dtype)
    if getattr(ref, "eps", 0) is None:  # RMSNorm: machine eps of the tested dtype
        ref.eps = torch.finfo(dtype).eps
    for m in (nk, tr, ref):
        m.train(training)
    for step in range(steps):
        x = (torch.randn(shape) * 2 + 0.5).to(dtype)
        dy = torch.randn(shape).to(dtype)
        xs = [to_layout(x, channels_last).detach().clone().requires_grad_() for _ in range(2)]
        x64 = x.double().requires_grad_()
        for m in (nk, tr, ref):
            m.zero_grad()
        y_nk = nk(xs[0])
        try:
            y_tr = tr(xs[1])
        except RuntimeError:  # torch.nn lacks this dtype on the CPU
            y_tr, tr = None, None
        y_ref = ref(x64)
        y_nk.backward(to_layout(dy, channels_last))
        if y_tr is not None:
            y_tr.backward(to_layout(dy, channels_last))
        y_ref.backward(dy.double())
        what = f"step {step}"
        assert y_nk.dtype == dtype
        assert_accurate(y_nk, y_tr, y_ref, dtype, f"{what} y")
        assert_accurate(xs[0].grad, tr and xs[1].grad, x64.grad, dtype, f"{what} dx")
        g_tr = _grads(tr) if tr is not None else {}
        for name, g in _grads(ref).items():
            g_nk = dict(nk.named_parameters())[name].grad
            assert_accurate(g_nk, g_tr.get(name), g, dtype, f"{what} d{name}")
        b_tr = dict(tr.named_buffers()) if tr is not None else {}
        for name, b in ref.named_buffers():
            b_nk = dict(nk.named_buffers())[name]
            if name.endswith("num_batches_tracked"):
                assert b_nk.item() == b.item(), f"{what}: num_batches_tracked"
            else:
                assert_accurate(b_nk, b_tr.get(name), b, dtype, f"{what} {name}")
    return nk


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "case,channels_last", LAYOUTS,
    ids=[f"{c[0]}-{'channels_last' if cl else 'contiguous'}" for c, cl in LAYOUTS])
def test_module_matches_torch_nn(case, channels_last, dtype):
    _, make, ncls, shape, _ = case
    for training in (True, False):
        run_pair(make, ncls, shape, dtype, channels_last, training)


def test_channels_last_is_read_in_place():
    """A channels_last input reaches the kernel without a copy: the output
    keeps its memory format, and no contiguous copy is made."""
    bn = nkt.BatchNorm2d(8)
    x = torch.randn(4, 8, 5, 6).to(memory_format=torch.channels_last)
    from normkit.torch._ops import layout_of

    same, layout = layout_of(x, channel_op=True)
    assert same is x and layout == "channels_last"
    y = bn(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = nn.BatchNorm2d(8)(x.contiguous())
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_rms_norm_eps_none_is_the_dtype_machine_eps():
    """PyTorch's RMSNorm(eps=None) uses torch.finfo(input.dtype).eps: on an
    input whose mean square is tiny, eps dominates and shows."""
    for dtype in DTYPES:
        x = torch.full((2, 4), 1e-2).to(dtype)
        eps = torch.finfo(dtype).eps
        y = nkt.RMSNorm(4, eps=None).to(dtype)(x)
        ms = x.double().pow(2).mean()
        expect = x.double() / torch.sqrt(ms + eps)
        assert torch.allclose(y.double(), expect, rtol=2e-2), (dtype, y, expect)
        if dtype != torch.float32:
            wrong = x.double() / torch.sqrt(ms + 1e-9)
            assert not torch.allclose(y.double(), wrong, rtol=1e-2)


def test_threads_follow_torch():
    """Results are bitwise identical for any thread count (normkit's
    kernels split work by shape), and the call honours the setting."""
    x = torch.randn(64, 4096)
    m = nkt.LayerNorm(4096)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = m(x)
        torch.set_num_threads(2)
        y2 = m(x)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)
