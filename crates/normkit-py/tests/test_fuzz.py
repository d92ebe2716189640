"""The fuzz suite of the Python package: seeded random calls to every module
of ``normkit.torch`` (torch.nn's constructor arguments, forward and
backward; shapes with zero extents and wrong ranks; float32, bfloat16,
float16, float64 and int64 inputs and parameters; contiguous, transposed,
strided, expanded and channels_last tensors; requires_grad on or off) and to
every function of ``normkit.functional`` (NumPy arrays of wrong dtypes,
non-contiguous, Fortran-ordered; ``with_vjp`` and its ``vjp``).

Contract: every call returns (a norm's output shaped like its input, each
gradient shaped like its tensor) or raises an ``Exception``. A Rust panic
surfaces as pyo3's ``PanicException``, a ``BaseException`` that the cases
do not catch: it fails the batch like a segfault or an abort would.

The cases run in batches in child processes (this file run as a script),
so a crash fails :func:`test_no_crash` naming the seed and the case.
``NORMKIT_FUZZ_CASES`` sets the number of cases (default 3,000),
``NORMKIT_FUZZ_SEED`` the seed; one case reruns alone with
``python tests/test_fuzz.py SEED CASE 1``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

DEFAULT_CASES = 3000
DEFAULT_SEED = 0x6E6B_7079
BATCH = 750
# A batch taking longer than this hangs.
BATCH_LIMIT = 240
# Largest number of values of a generated input.
MAX_VALUES = 2048


# --- The child: the cases themselves --------------------------------------


def _child(seed: int, first: int, count: int) -> None:
    import numpy as np
    import torch
    from torch import nn

    import normkit.torch as nkt
    from normkit import functional as F

    torch.set_num_threads(2)
    calls, oks = Counter(), Counter()

    def note(key, fn):
        """Runs `fn`: its value, or None when it raised an Exception."""
        calls[key] += 1
        try:
            out = fn()
        except Exception:  # noqa: BLE001 - any exception is the contract
            return None
        oks[key] += 1
        return out

    class Gen:
        def __init__(self, seed):
            self.r = random.Random(seed)

        def chance(self, p):
            return self.r.random() < p

        def pick(self, xs):
            return xs[self.r.randrange(len(xs))]

        def extent(self):
            return self.pick([0, 1, 2, 2, 3, 3, 4, 5, 7])

        def features(self, allocates=True):
            if not allocates and self.chance(0.15):
                return self.pick([1 << 20, 1 << 40, 2**62, -1])
            return self.pick([0, 1, 2, 3, 3, 4, 6, -1] if self.chance(0.1) else [1, 2, 3, 4, 6])

        def eps(self):
            if self.chance(0.7):
                return self.pick([1e-5, 1e-6, 1e-3])
            return self.pick([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), None])

        def epsf(self):
            """An eps that is a number."""
            e = self.eps()
            return 1e-5 if e is None else e

        def momentum(self):
            if self.chance(0.6):
                return 0.1
            return self.pick([None, 0.0, 1.0, -0.5, 2.0, float("nan")])

        def dims(self, rank):
            dims = [self.extent() for _ in range(rank)]
            while _prod(dims) > MAX_VALUES:
                i = self.r.randrange(rank)
                dims[i] = max(dims[i] // 2, 1)
            return dims

        def rank(self):
            return self.pick([0, 1, 2, 2, 3, 3, 3, 4, 4, 5])

        def tdtype(self):
            if self.chance(0.8):
                return self.pick([torch.float32, torch.float32, torch.bfloat16, torch.float16])
            return self.pick([torch.float64, torch.int64])

        def tensor(self, dims, dtype=None, grad=None):
            """A tensor of `dims` and its leaf (when it requires grad), in a
            random layout."""
            dtype = dtype if dtype is not None else self.tdtype()
            rank = len(dims)
            layout = self.r.randrange(6) if rank else 0
            base = list(dims)
            a = b = 0
            if layout == 1 and rank >= 2:
                a, b = self.r.randrange(rank), self.r.randrange(rank)
                base[a], base[b] = base[b], base[a]
            elif layout == 2:
                a = self.r.randrange(rank)
                base[a] = 2 * base[a]
            elif layout == 3:
                a = self.r.randrange(rank)
                base[a] = 1
            if dtype.is_floating_point:
                t = torch.randn(base).to(dtype)
                if self.chance(0.1):
                    t.view(-1)[:: max(1, t.numel() // 3)] = self.pick(
                        [float("nan"), float("inf"), 6e4, 0.0])
            else:
                t = torch.randint(-3, 4, base, dtype=dtype)
            grad = self.chance(0.6) if grad is None else grad
            leaf = t.requires_grad_() if grad and dtype.is_floating_point else None
            if layout == 1 and rank >= 2:
                t = t.transpose(a, b)
            elif layout == 2:
                t = t[(slice(None),) * a + (slice(None, None, 2),)]
            elif layout == 3:
                t = t.expand(dims)
            elif layout == 4 and rank in (4, 5):
                fmt = torch.channels_last if rank == 4 else torch.channels_last_3d
                t = t.contiguous(memory_format=fmt)
            assert list(t.shape) == list(dims), (t.shape, dims)
            return t, leaf

        def array(self, dims, dtype=None):
            """A NumPy array of `dims`, of a random dtype and layout."""
            if dtype is None:
                dtype = (self.pick([np.float32, np.float32, np.float16])
                         if self.chance(0.8)
                         else self.pick([np.float64, np.int64, np.uint8, np.bool_]))
            rank = len(dims)
            layout = self.r.randrange(4) if rank else 0
            if layout == 1 and rank >= 2:
                a = np.random.default_rng(self.r.getrandbits(32)).standard_normal(dims[::-1])
                a = a.T
            elif layout == 2:
                a = np.random.default_rng(self.r.getrandbits(32)).standard_normal(
                    [2 * d for d in dims])
                a = a[tuple(slice(None, None, 2) for _ in dims)]
            else:
                a = np.random.default_rng(self.r.getrandbits(32)).standard_normal(dims)
            a = a.astype(dtype, copy=False)
            if layout == 3:
                a = np.asfortranarray(a)
            assert list(a.shape) == list(dims)
            return a

    def input_for(g, features, channel_axis, rank=None):
        """Dims with `features` on the channel axis (1, or -1), mostly."""
        rank = g.rank() if rank is None else rank
        dims = g.dims(rank)
        if g.chance(0.8) and 0 <= features <= MAX_VALUES and rank >= 1:
            at = 1 if channel_axis == 1 and rank >= 2 else rank - 1
            dims[at] = features
            while _prod(dims) > MAX_VALUES:
                i = g.r.randrange(rank)
                if i != at:
                    dims[i] = max(dims[i] // 2, 1)
        return dims

    def backward(key, y, tensors):
        """Backward of a successful forward; each gradient is shaped like
        its tensor."""
        if not y.requires_grad:
            return

        def run():
            dy = torch.randn(y.shape).to(y.dtype)
            y.backward(dy)
            for t in tensors:
                if t is not None and t.grad is not None:
                    assert t.grad.shape == t.shape, (key, t.grad.shape, t.shape)

        note(key + " backward", run)

    def forward(key, module, x, leaf, *extra, same_shape=True):
        y = note(key + " forward", lambda: module(x, *extra))
        if y is None:
            return
        if same_shape:
            assert y.shape == x.shape, (key, y.shape, x.shape)
        backward(key, y, [leaf, *module.parameters()])

    def mod_dtype(g, module):
        if g.chance(0.8):
            return module
        return module.to(g.pick([torch.bfloat16, torch.float16, torch.float64]))

    # Each family: one random case of some modules or functions.

    def layer_norms(g):
        rank = g.r.randrange(3) + (1 if g.chance(0.8) else 0)
        ns = [g.features() for _ in range(rank)] if rank else []
        kind = g.r.randrange(4)
        eps = g.eps()
        if kind == 0:
            m = note("LayerNorm new", lambda: nkt.LayerNorm(
                ns, eps=eps if eps is not None else 1e-5,
                elementwise_affine=g.chance(0.7), bias=g.chance(0.7)))
        elif kind == 1:
            m = note("RMSNorm new", lambda: nkt.RMSNorm(ns, eps=eps,
                                                        elementwise_affine=g.chance(0.7)))
        elif kind == 2:
            m = note("AdaLayerNorm new", lambda: nkt.AdaLayerNorm(
                ns, eps=eps, elementwise_affine=g.chance(0.6), bias=g.chance(0.6)))
        else:
            m = note("AdaRMSNorm new", lambda: nkt.AdaRMSNorm(ns, eps=eps,
                                                              elementwise_affine=g.chance(0.6)))
        if m is None:
            return
        m = mod_dtype(g, m)
        name = type(m).__name__
        dims = g.dims(g.rank())
        k = len(m.normalized_shape)
        if (g.chance(0.7) and len(dims) >= k and min(m.normalized_shape, default=0) >= 0
                and _prod(m.normalized_shape) <= MAX_VALUES):
            dims[len(dims) - k:] = m.normalized_shape
        if _prod(dims) > MAX_VALUES:
            return
        x, leaf = g.tensor(dims)
        if kind < 2:
            forward(name, m, x, leaf)
            return
        n = dims[0] if dims else 1
        d = _prod(m.normalized_shape) if 0 <= _prod(m.normalized_shape) <= MAX_VALUES else 1
        sdims = [n, d] if g.chance(0.85) else g.dims(g.r.randrange(4))
        scale, sleaf = g.tensor(sdims)
        shift, hleaf = g.tensor(sdims)
        y = note(name + " forward", lambda: m(x, scale, shift))
        if y is not None:
            assert y.shape == x.shape
            backward(name, y, [leaf, sleaf, hleaf, *m.parameters()])

    def batch_norms(g):
        cls = g.pick([nkt.BatchNorm1d, nkt.BatchNorm2d, nkt.BatchNorm3d,
                      nkt.InstanceNorm1d, nkt.InstanceNorm2d, nkt.InstanceNorm3d,
                      nkt.SwitchNorm])
        affine, track = g.chance(0.6), g.chance(0.6)
        c = g.features()
        m = note(cls.__name__ + " new", lambda: cls(
            c, eps=g.epsf(), momentum=g.momentum(), affine=affine,
            track_running_stats=track))
        if m is None:
            return
        m = mod_dtype(g, m)
        # The rank each class takes, mostly.
        rank = {"1d": g.pick([2, 3]), "2d": 4, "3d": 5}.get(cls.__name__[-2:])
        for _ in range(1 + g.r.randrange(2)):
            m.train(g.chance(0.6))
            dims = input_for(g, c, 1, rank if g.chance(0.7) else None)
            x, leaf = g.tensor(dims)
            forward(cls.__name__, m, x, leaf)

    def batch_renorm(g):
        c = g.features()
        m = note("BatchRenorm new", lambda: nkt.BatchRenorm(
            c, eps=g.epsf(), momentum=g.momentum(), affine=g.chance(0.6),
            r_max=g.pick([3.0, 1.0, 0.0, -1.0, float("nan"), float("inf")]),
            d_max=g.pick([5.0, 0.0, -1.0, float("nan"), float("inf")])))
        if m is None:
            return
        m = mod_dtype(g, m)
        for _ in range(1 + g.r.randrange(2)):
            m.train(g.chance(0.6))
            x, leaf = g.tensor(input_for(g, c, 1))
            forward("BatchRenorm", m, x, leaf)

    def group_norm(g):
        c = g.features()
        groups = (g.features(allocates=False) if g.chance(0.3)
                  else g.pick([d for d in range(1, max(c, 1) + 1) if c % d == 0] or [1]))
        m = note("GroupNorm new", lambda: nkt.GroupNorm(groups, c, eps=g.epsf(),
                                                        affine=g.chance(0.6)))
        if m is None:
            return
        m = mod_dtype(g, m)
        x, leaf = g.tensor(input_for(g, c, 1))
        forward("GroupNorm", m, x, leaf)

    def pointwise(g):
        channels_last = g.chance(0.5)
        c = g.features()
        if g.chance(0.5):
            m = note("DyT new", lambda: nkt.DyT(c, channels_last=channels_last,
                                                alpha_init_value=g.epsf(),
                                                elementwise_affine=g.chance(0.6)))
        else:
            m = note("Derf new", lambda: nkt.Derf(c, channels_last=channels_last,
                                                  alpha_init_value=g.epsf(),
                                                  shift_init_value=g.epsf(),
                                                  elementwise_affine=g.chance(0.6)))
        if m is None:
            return
        m = mod_dtype(g, m)
        x, leaf = g.tensor(input_for(g, c, -1 if channels_last else 1))
        forward(type(m).__name__, m, x, leaf)

    def adain(g):
        m = nkt.AdaIN(eps=g.epsf(), unbiased=g.chance(0.5))
        dims = g.dims(g.rank())
        x, leaf = g.tensor(dims)
        sdims = list(dims) if g.chance(0.6) else g.dims(g.rank())
        if len(sdims) >= 2 and len(dims) >= 2 and g.chance(0.5):
            sdims[1] = dims[1]
        s, sleaf = g.tensor(sdims)
        y = note("AdaIN forward", lambda: m(x, s))
        if y is not None:
            assert y.shape == x.shape
            backward("AdaIN", y, [leaf, sleaf])

    def weight_norm(g):
        cin, cout = g.features(), g.features()
        kind = g.r.randrange(3)
        if kind == 0:
            base = note("nn.Linear new", lambda: nn.Linear(cin, cout))
        elif kind == 1:
            base = note("nn.Conv1d new", lambda: nn.Conv1d(cin, cout, 1 + g.r.randrange(3)))
        else:
            base = note("nn.Conv2d new", lambda: nn.Conv2d(cin, cout, 1 + g.r.randrange(3)))
        if base is None:
            return
        dim = g.pick([0, 0, 1, -1, None, 2, -3, 5])
        m = note("weight_norm new", lambda: nkt.weight_norm(base, dim=dim))
        if m is None:
            return
        m = mod_dtype(g, m)
        rank = {0: g.pick([1, 2, 3]), 1: g.pick([2, 3, 3]), 2: g.pick([3, 4, 4])}[kind]
        dims = g.dims(rank)
        if g.chance(0.8) and cin >= 0:
            dims[-1 if kind == 0 else (0 if rank == kind + 1 else 1)] = cin
        if _prod(dims) > MAX_VALUES:
            return
        x, leaf = g.tensor(dims)
        forward("weight_norm", m, x, leaf, same_shape=False)

    def replace(g):
        model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.BatchNorm1d(4))
        model = note("replace_norms", lambda: nkt.replace_norms(model))
        if model is None:
            return
        model.train(g.chance(0.5))
        dims = input_for(g, 4, -1)
        x, leaf = g.tensor(dims)
        y = note("replace_norms forward", lambda: model(x))
        if y is not None:
            backward("replace_norms", y, [leaf, *model.parameters()])

    # normkit.functional over NumPy arrays.

    def param(g, n, dtype=None):
        if g.chance(0.1):
            n = g.r.randrange(n + 3)
        if g.chance(0.1):
            return g.array([n, 1] if n > 0 else [0])
        return g.array([n], dtype)

    def vjp_call(g, key, out, x):
        if not isinstance(out, tuple):
            return
        y, vjp = out
        assert _same_shape(y, x), (key, y.shape, x.shape)

        def run():
            dy = g.array(list(y.shape)) if g.chance(0.9) else g.array(g.dims(g.rank()))
            dx, grads = vjp(dy)
            assert _same_shape(dx, x), (key, dx.shape, x.shape)
            return grads

        note(key + " vjp", run)

    def functional(g):
        kind = g.r.randrange(13)
        threads = g.pick([0, 0, 0, 1, 2, 64, -1])
        vjp = g.chance(0.5)
        kw = {"threads": threads, "with_vjp": vjp}
        axis = g.pick([1, 1, -1, 0, 2])
        c = g.features()
        dims = input_for(g, c, -1 if axis == -1 else 1)
        x = g.array(dims)
        cc = c if 0 <= c <= MAX_VALUES else 1
        opt = lambda n: param(g, n) if g.chance(0.5) else None  # noqa: E731
        if kind in (0, 1, 11, 12):
            ns = (list(dims[-1:]) if g.chance(0.6) else
                  [g.features(allocates=False) for _ in range(g.r.randrange(3))])
            d = _prod(ns) if 0 <= _prod(ns) <= MAX_VALUES else 1
            if kind == 0:
                name, call = "layer_norm", lambda: F.layer_norm(
                    x, ns, opt(d), opt(d), g.epsf(), **kw)
            elif kind == 1:
                name, call = "rms_norm", lambda: F.rms_norm(x, ns, opt(d), g.eps(), **kw)
            else:
                n = dims[0] if dims else 1
                sd = [n, d] if g.chance(0.85) else g.dims(g.r.randrange(4))
                s, h = g.array(sd), g.array(sd)
                if kind == 11:
                    name, call = "ada_layer_norm", lambda: F.ada_layer_norm(
                        x, ns, s, h, opt(d), opt(d), g.epsf(), **kw)
                else:
                    name, call = "ada_rms_norm", lambda: F.ada_rms_norm(
                        x, ns, s, h, opt(d), g.eps(), **kw)
        elif kind in (2, 4, 9, 10):
            # Running statistics: mostly what the ops need (dense float32).
            dense = g.chance(0.8)
            rm = ((np.zeros(cc, np.float32) if dense else param(g, cc))
                  if g.chance(0.8) else None)
            rv = (np.ones(cc, np.float32) if dense else param(g, cc)) if rm is not None else None
            common = dict(momentum=g.momentum(), eps=g.epsf(), channel_axis=axis, **kw)
            if kind == 2:
                name, call = "batch_norm", lambda: F.batch_norm(
                    x, rm, rv, opt(cc), opt(cc), training=g.chance(0.6),
                    num_batches_tracked=g.pick([0, 1, 7, -1]), **common)
            elif kind == 4:
                name, call = "instance_norm", lambda: F.instance_norm(
                    x, rm, rv, opt(cc), opt(cc), use_input_stats=g.chance(0.6), **common)
            elif kind == 9:
                name, call = "switch_norm", lambda: F.switch_norm(
                    x, param(g, 3), param(g, 3), rm, rv, opt(cc), opt(cc),
                    training=g.chance(0.6), **common)
            else:
                name, call = "batch_renorm", lambda: F.batch_renorm(
                    x, rm, rv, opt(cc), opt(cc), training=g.chance(0.6),
                    r_max=g.pick([3.0, 3.0, 1.0, -1.0, float("nan")]),
                    d_max=g.pick([5.0, 5.0, 0.0, float("inf")]), **common)
        elif kind == 3:
            groups = (g.features(allocates=False) if g.chance(0.3)
                      else g.pick([dd for dd in range(1, cc + 1) if cc % dd == 0] or [1]))
            name, call = "group_norm", lambda: F.group_norm(
                x, groups, opt(cc), opt(cc), g.epsf(), channel_axis=axis, **kw)
        elif kind == 5:
            name, call = "dyt", lambda: F.dyt(
                x, g.pick([0.5, float("nan"), 0.0]), opt(cc), opt(cc),
                channels_last=axis == -1, **kw)
        elif kind == 6:
            name, call = "derf", lambda: F.derf(
                x, 0.5, g.pick([0.0, 1.0, float("inf")]), opt(cc), opt(cc),
                channels_last=axis == -1, **kw)
        elif kind == 7:
            dim = g.pick([0, 0, 1, -1, None, 3, -4])
            n = (dims[dim] if isinstance(dim, int) and -len(dims) <= dim < len(dims)
                 else 1)
            name, call = "weight_norm", lambda: F.weight_norm(x, param(g, n), dim, **kw)
        else:
            sd = list(dims) if g.chance(0.6) else g.dims(g.rank())
            name, call = "adain", lambda: F.adain(
                x, g.array(sd), g.epsf(), g.chance(0.5), channel_axis=axis, **kw)
        out = note("F." + name, call)
        if out is not None:
            if vjp:
                vjp_call(g, "F." + name, out, x)
            else:
                assert _same_shape(out, x), (name, out.shape, x.shape)

    families = [
        ("layer_norms", layer_norms),
        ("batch_norms", batch_norms),
        ("batch_renorm", batch_renorm),
        ("group_norm", group_norm),
        ("pointwise", pointwise),
        ("adain", adain),
        ("weight_norm", weight_norm),
        ("replace_norms", replace),
        ("functional", functional),
        ("functional", functional),
        ("functional", functional),
    ]
    for i in range(first, first + count):
        name, family = families[i % len(families)]
        print(f"case {i} ({name})", file=sys.stderr, flush=True)
        g = Gen(seed ^ (i * 0x9E3779B97F4A7C15 % 2**64))
        torch.manual_seed(g.r.getrandbits(32))
        family(g)
    print("FUZZ " + json.dumps({k: [calls[k], oks[k]] for k in calls}))


def _same_shape(y, x) -> bool:
    """`y` is shaped like `x`; a 0-d input comes back as one value of
    shape (1,) (np.ascontiguousarray makes it 1-d), a known quirk."""
    return y.shape == x.shape or (x.ndim == 0 and y.shape == (1,))


def _prod(xs) -> int:
    p = 1
    for v in xs:
        p *= v
    return p


# --- The parent: batches in child processes --------------------------------


def _batch(seed: int, first: int, count: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), str(seed), str(first), str(count)]
    rerun = f"rerun one case with `python tests/test_fuzz.py {seed} <case> 1`"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=BATCH_LIMIT)
    except subprocess.TimeoutExpired as e:
        err = e.stderr or ""
        err = err.decode() if isinstance(err, bytes) else err
        last = [l for l in err.splitlines() if l.startswith("case ")][-1:]
        raise AssertionError(
            f"fuzz batch {first}..{first + count} of seed {seed} hung for {BATCH_LIMIT} s; "
            f"{rerun}. Last case: {last}") from None
    lines = p.stderr.splitlines()
    last = next((l for l in reversed(lines) if l.startswith("case ")), "no case started")
    said = [l for l in lines if not l.startswith("case ")][-15:]
    if p.returncode != 0:
        raise AssertionError(
            f"fuzz batch {first}..{first + count} of seed {seed} exited with "
            f"{p.returncode}; {rerun}.\nLast case: {last}\n" + "\n".join(said))
    out = [l for l in p.stdout.splitlines() if l.startswith("FUZZ ")]
    assert out, f"batch {first}..{first + count} printed no tally:\n{p.stdout}"
    return json.loads(out[-1][5:])


def test_no_crash():
    """Every case, in batches of child processes: none may crash (segfault,
    abort, Rust panic) or hang, and each normkit call both succeeds and
    refuses somewhere."""
    cases = int(os.environ.get("NORMKIT_FUZZ_CASES", DEFAULT_CASES))
    seed = int(os.environ.get("NORMKIT_FUZZ_SEED", DEFAULT_SEED))
    start = time.monotonic()
    total: dict = {}
    for first in range(0, cases, BATCH):
        for k, (c, o) in _batch(seed, first, min(BATCH, cases - first)).items():
            t = total.setdefault(k, [0, 0])
            t[0] += c
            t[1] += o
    print(f"fuzz: {cases} cases of seed {seed:#x} in {time.monotonic() - start:.1f} s")
    for k in sorted(total):
        c, o = total[k]
        print(f"{k:<36} {c:>6} {o:>6} {c - o:>6}")
    if cases >= 2000:
        for k, (c, o) in total.items():
            if k.endswith(" forward") or k.startswith("F.") and not k.endswith(" vjp"):
                assert 0 < o < c, f"{k}: {o} of {c} calls succeeded"
        for k in ("LayerNorm forward", "RMSNorm forward", "AdaLayerNorm forward",
                  "AdaRMSNorm forward", "BatchNorm2d forward", "InstanceNorm3d forward",
                  "SwitchNorm forward", "BatchRenorm forward", "GroupNorm forward",
                  "DyT forward", "Derf forward", "AdaIN forward", "weight_norm forward",
                  "F.layer_norm", "F.batch_norm", "F.adain", "F.weight_norm"):
            assert k in total, f"{k}: never called"


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
