"""normkit's layers without a torch.nn namesake, against their formulas
composed from torch ops in float64 (and in the test dtype, for the
accuracy yardstick): DyT, AdaIN, modulated LayerNorm/RMSNorm, Switchable
Normalization, Batch Renormalization, weight normalization."""

import copy

import pytest
import torch
from torch import nn

import normkit.torch as nkt
from conftest import DTYPES, assert_accurate, to_layout


def _check(nk_fn, ref_fn, inputs, params, dtype, channels_last=False):
    """Runs `nk_fn` on `inputs` (cast to dtype) and `ref_fn` in float64 (and
    in dtype, as the yardstick); compares outputs and all gradients."""
    xs = [to_layout(t.to(dtype), channels_last).detach().clone().requires_grad_() for t in inputs]
    x64 = [t.to(dtype).double().detach().requires_grad_() for t in inputs]
    xd = [t.to(dtype).detach().clone().requires_grad_() for t in inputs]
    p64 = {n: p.detach().double().requires_grad_() for n, p in params.items()}
    pd = {n: p.detach().to(dtype).requires_grad_() for n, p in params.items()}
    y = nk_fn(*xs)
    y64 = ref_fn(*x64, **p64)
    try:
        yd = ref_fn(*xd, **pd)
    except RuntimeError:
        yd = None
    dy = torch.randn(y64.shape).to(dtype)
    y.backward(to_layout(dy, channels_last))
    y64.backward(dy.double())
    if yd is not None:
        yd.backward(dy)
    assert_accurate(y, yd, y64, dtype, "y")
    for i, (a, b) in enumerate(zip(xs, x64)):
        assert_accurate(a.grad, yd is not None and xd[i].grad, b.grad, dtype, f"dx{i}")
    return p64, pd if yd is not None else None


def _param_grads(module, p64, pd, dtype):
    for name, p in module.named_parameters():
        ref = p64[name].grad
        assert_accurate(p.grad, pd[name].grad if pd else None, ref.reshape(p.shape), dtype, f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("kind", ["dyt", "derf"])
def test_elementwise(kind, dtype, channels_last):
    """DyT and Derf against their papers' formulas."""
    c = 24
    if kind == "dyt":
        m = nkt.DyT(c, channels_last=channels_last, alpha_init_value=0.7)
    else:
        m = nkt.Derf(c, channels_last=channels_last, alpha_init_value=0.7, shift_init_value=0.2)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    shape = (3, 5, c) if channels_last else (2, c, 3, 4)

    def ref(x, alpha, weight, bias, shift=None):
        if not channels_last:
            b = (slice(None),) + (None,) * (x.dim() - 2)
            weight, bias = weight[b], bias[b]
        if kind == "dyt":
            return torch.tanh(alpha * x) * weight + bias
        return torch.erf(alpha * x + shift) * weight + bias

    m = m.to(dtype)
    params = dict(m.named_parameters())
    p64, pd = _check(m, ref, [torch.randn(shape) * 2], params, dtype)
    _param_grads(m, p64, pd, dtype)
    if not channels_last:  # [N, C, *] stored channels last is read in place
        m.zero_grad()
        _check(m, ref, [torch.randn(shape) * 2], params, dtype, channels_last=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("unbiased", [True, False])
def test_adain(dtype, unbiased):
    m = nkt.AdaIN(eps=1e-5, unbiased=unbiased)

    def ref(x, s):
        dims = tuple(range(2, x.dim()))
        mx, vx = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, unbiased=unbiased)
        ms, vs = s.mean(dims, keepdim=True), s.var(dims, keepdim=True, unbiased=unbiased)
        return (x - mx) / torch.sqrt(vx + 1e-5) * torch.sqrt(vs + 1e-5) + ms

    content, style = torch.randn(2, 3, 4, 5) * 2 + 1, torch.randn(2, 3, 6, 3) * 3 - 1
    _check(m, ref, [content, style], {}, dtype)
    _check(m, ref, [content, style], {}, dtype, channels_last=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rms", [False, True])
def test_ada_norm(dtype, rms):
    d = 16
    m = (nkt.AdaRMSNorm(d, eps=1e-6) if rms else nkt.AdaLayerNorm(d, eps=1e-6)).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    params = dict(m.named_parameters())

    def ref(x, scale, shift, weight, bias=None):
        if rms:
            h = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
        else:
            h = nn.functional.layer_norm(x, (d,), weight, bias, 1e-6)
        return h * (1 + scale[:, None]) + shift[:, None]

    x, scale, shift = torch.randn(3, 5, d), torch.randn(3, d) * 0.3, torch.randn(3, d)
    p64, pd = _check(m, ref, [x, scale, shift], params, dtype)
    _param_grads(m, p64, pd, dtype)


def _switch_ref(x, mean_weight, var_weight, weight, bias, rm, rv, training, eps=1e-5):
    c = x.shape[1]
    dims = tuple(range(2, x.dim()))
    m_in, v_in = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, unbiased=False)
    m_ln = x.mean((1,) + dims, keepdim=True)
    v_ln = (v_in + m_in.pow(2)).mean(1, keepdim=True) - m_ln.pow(2)
    if training:
        m_bn = m_in.mean(0, keepdim=True)
        v_bn = (v_in + m_in.pow(2)).mean(0, keepdim=True) - m_bn.pow(2)
    else:
        shape = (1, c) + (1,) * len(dims)
        m_bn, v_bn = rm.reshape(shape), rv.reshape(shape)
    wm, wv = torch.softmax(mean_weight, 0), torch.softmax(var_weight, 0)
    mean = wm[0] * m_in + wm[1] * m_ln + wm[2] * m_bn
    var = wv[0] * v_in + wv[1] * v_ln + wv[2] * v_bn
    b = (slice(None),) + (None,) * len(dims)
    return (x - mean) / torch.sqrt(var + eps) * weight[b] + bias[b]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_switch_norm(dtype, training):
    m = nkt.SwitchNorm(4).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 1.5)
    m.train(training)
    rm, rv = m.running_mean.double().clone(), m.running_var.double().clone()
    x = torch.randn(3, 4, 5, 2) * 2 + 1

    def ref(x, mean_weight, var_weight, weight, bias):
        return _switch_ref(x, mean_weight, var_weight, weight, bias, rm, rv, training)

    p64, pd = _check(m, ref, [x], dict(m.named_parameters()), dtype)
    _param_grads(m, p64, pd, dtype)
    if training:  # the running statistics follow the BN part, as BatchNorm's
        xd = x.to(dtype).double()
        mean, var = xd.mean((0, 2, 3)), xd.var((0, 2, 3), unbiased=True)
        assert_accurate(m.running_mean, None, 0.9 * rm + 0.1 * mean, dtype, "running_mean")
        assert_accurate(m.running_var, None, 0.9 * rv + 0.1 * var, dtype, "running_var")
        assert m.num_batches_tracked.item() == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batch_renorm(dtype):
    m = nkt.BatchRenorm(5, r_max=1.5, d_max=0.5).to(dtype)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 1.5)
    rm, rv = m.running_mean.double().clone(), m.running_var.double().clone()
    x = torch.randn(4, 5, 3) * 2 + 1

    def ref(x, weight, bias):
        dims = (0, 2)
        mb = x.mean(dims, keepdim=True)
        sb = torch.sqrt(x.var(dims, keepdim=True, unbiased=False) + 1e-5)
        sr = torch.sqrt(rv + 1e-5)[None, :, None]
        r = (sb.detach() / sr).clamp(1 / 1.5, 1.5)
        d = ((mb.detach() - rm[None, :, None]) / sr).clamp(-0.5, 0.5)
        return ((x - mb) / sb * r + d) * weight[None, :, None] + bias[None, :, None]

    p64, pd = _check(m, ref, [x], dict(m.named_parameters()), dtype)
    _param_grads(m, p64, pd, dtype)
    assert m.num_batches_tracked.item() == 1
    # Evaluation is BatchNorm's with the running statistics.
    m.eval()
    bn = nn.BatchNorm1d(5).to(dtype)
    bn.load_state_dict(m.state_dict(), strict=False)
    bn.eval()
    xe = torch.randn(4, 5, 3).to(dtype)
    with torch.no_grad():
        assert_accurate(m(xe), None, bn.double()(xe.double()), dtype, "eval y")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_matches_torch_parametrization(dtype, dim):
    torch.manual_seed(3)
    ref = nn.utils.parametrizations.weight_norm(nn.Linear(6, 5), dim=dim).to(dtype)
    nk = nkt.weight_norm(nn.Linear(6, 5), dim=dim).to(dtype)
    nk.load_state_dict(ref.state_dict())
    assert nk.state_dict().keys() == ref.state_dict().keys()
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(3, 6).to(dtype)
    y, yt, y64 = nk(x), ref(x), ref64(x.double())
    assert_accurate(y, yt, y64, dtype, "y")
    y.sum().backward()
    yt.sum().backward()
    y64.sum().backward()
    for (n, a), (_, b), (_, c) in zip(nk.named_parameters(), ref.named_parameters(),
                                      ref64.named_parameters()):
        assert_accurate(a.grad, b.grad, c.grad, dtype, f"d{n}")
