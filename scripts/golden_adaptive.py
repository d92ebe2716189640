#!/usr/bin/env python3
"""Golden conformance cases for adain, ada_layer_norm, ada_rms_norm,
switch_norm and batch_renorm.

Requirements: Python 3, numpy, autograd (HIPS) and safetensors:

    pip install numpy autograd safetensors

Usage, from the repository root:

    python3 scripts/golden_adaptive.py            # (re)write the cases into tests/golden/
    python3 scripts/golden_adaptive.py --check    # regenerate in memory, compare with the files

Where the numbers come from:

- The inputs are drawn from numpy's default_rng with a fixed seed per case
  and rounded to float32; they are stored as F32.
- The expected values are the reference code below evaluated in float64 on
  those float32 inputs (stored as F64). Each op's reference is the formula
  of its section in the semantics, written once with autograd.numpy; the
  gradients are autograd's derivative of sum(y * dy), never derived by hand.
  Before a case is written, those gradients are compared with central finite
  differences (fourth-order stencil) of the same float64 code.
- The float32 error of a case is the largest difference between the same
  reference code run on float32 arrays (numpy float32 arithmetic throughout,
  forward and autograd backward; the script checks that every result is
  float32, i.e. nothing was widened) and the float64 values. It is stored as
  `f32_err_<name>`, and the tolerance is
  `tol_<name> = max(8 * f32_err_<name>, 1e-6 * max|expected <name>|)`.
- Error cases hold only the inputs and `expect_error = "true"`; the script
  checks that its own validation refuses them.

Files are written by a small writer of the safetensors layout (tensors
ordered by dtype size then name, metadata keys sorted) rather than by
safetensors.numpy.save_file, whose metadata order varies from run to run;
every file is read back with safetensors to check it. The output is
byte-identical from run to run with the same numpy.
"""

import argparse
import json
import math
import os
import struct
import sys
import tempfile

import autograd.numpy as anp
import numpy as np
from autograd import grad
from autograd.tracer import getval
from safetensors import safe_open
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "golden")
MAX_FILE_BYTES = 200 * 1024


class Invalid(Exception):
    """The inputs are outside an op's domain; the op must refuse them."""


# ---------------------------------------------------------------------------
# Layout helpers. channel_axis 1: [N, C, *]; -1: [N, *, C]. "Spatial" is
# every dimension but N and C.


def channel_dim(ndim, channel_axis):
    return 1 if channel_axis == 1 else ndim - 1


def spatial_axes(ndim, channel_axis):
    c = channel_dim(ndim, channel_axis)
    return tuple(a for a in range(1, ndim) if a != c)


def count(shape, axes):
    return int(np.prod([shape[a] for a in axes], dtype=np.int64))


def per_channel(v, ndim, channel_axis):
    """A [C] vector shaped to broadcast against an [N, C, *] / [N, *, C] input."""
    shape = [1] * ndim
    shape[channel_dim(ndim, channel_axis)] = -1
    return anp.reshape(v, shape)


def moments(v, axes):
    """Mean and biased variance over `axes`, kept for broadcasting."""
    mu = anp.mean(v, axis=axes, keepdims=True)
    var = anp.mean((v - mu) ** 2, axis=axes, keepdims=True)
    return mu, var


# ---------------------------------------------------------------------------
# Written references. Each takes the case's tensors (float64 or float32
# arrays) and metadata and returns (outputs, aux): outputs["y"] plus the
# running statistics after a training step; aux holds values the checks use.


def adain(t, meta):
    """y = sigma(style) * (x - mu(x)) / sigma(x) + mu(style), per (n, c);
    sigma(v) = sqrt(var(v) + eps), var dividing by M - 1 if unbiased else M."""
    x, style = t["x"], t["style"]
    eps, ca, unbiased = meta["eps"], meta["channel_axis"], meta["unbiased"]

    def mu_sigma(v):
        axes = spatial_axes(v.ndim, ca)
        m = count(v.shape, axes)
        mu = anp.mean(v, axis=axes, keepdims=True)
        ss = anp.sum((v - mu) ** 2, axis=axes, keepdims=True)
        var = ss / (m - 1) if unbiased else ss / m
        return mu, anp.sqrt(var + eps)

    mu_x, sigma_x = mu_sigma(x)
    mu_s, sigma_s = mu_sigma(style)
    return {"y": sigma_s * (x - mu_x) / sigma_x + mu_s}, {}


def modulation(v, x_ndim, normalized_shape):
    """scale / shift [N, *normalized_shape] broadcast over x's middle dims."""
    k = len(normalized_shape)
    return anp.reshape(v, (v.shape[0],) + (1,) * (x_ndim - 1 - k) + tuple(normalized_shape))


def ada_layer_norm(t, meta):
    """y = LN(x; weight, bias) * (1 + scale[n]) + shift[n], LN over the
    trailing normalized_shape with the biased variance."""
    x, ns, eps = t["x"], meta["normalized_shape"], meta["eps"]
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    mu, var = moments(x, axes)
    ln = (x - mu) / anp.sqrt(var + eps)
    if "weight" in t:
        ln = ln * t["weight"]
    if "bias" in t:
        ln = ln + t["bias"]
    y = ln * (1 + modulation(t["scale"], x.ndim, ns)) + modulation(t["shift"], x.ndim, ns)
    return {"y": y}, {}


def ada_rms_norm(t, meta):
    """y = (x / sqrt(mean(x^2) + eps) * weight) * (1 + scale[n]) + shift[n]."""
    x, ns, eps = t["x"], meta["normalized_shape"], meta["eps"]
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    rms = x / anp.sqrt(anp.mean(x**2, axis=axes, keepdims=True) + eps)
    if "weight" in t:
        rms = rms * t["weight"]
    y = rms * (1 + modulation(t["scale"], x.ndim, ns)) + modulation(t["shift"], x.ndim, ns)
    return {"y": y}, {}


def softmax(z):
    e = anp.exp(z)
    return e / anp.sum(e)


def switch_norm(t, meta):
    """mu = wm0 mu_in + wm1 mu_ln + wm2 mu_bn, var likewise with wv;
    wm = softmax(mean_weight), wv = softmax(var_weight) (order IN, LN, BN);
    y = (x - mu) / sqrt(var + eps) * weight + bias. In eval mu_bn, var_bn
    are the running statistics."""
    x, eps, ca = t["x"], meta["eps"], meta["channel_axis"]
    nd, c = x.ndim, channel_dim(x.ndim, meta["channel_axis"])
    mu_in, var_in = moments(x, spatial_axes(nd, ca))
    mu_ln, var_ln = moments(x, tuple(range(1, nd)))
    bn_axes = tuple(a for a in range(nd) if a != c)
    if meta["training"]:
        mu_bn, var_bn = moments(x, bn_axes)
    else:
        mu_bn = per_channel(t["running_mean"], nd, ca)
        var_bn = per_channel(t["running_var"], nd, ca)
    wm, wv = softmax(t["mean_weight"]), softmax(t["var_weight"])
    mu = wm[0] * mu_in + wm[1] * mu_ln + wm[2] * mu_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = (x - mu) / anp.sqrt(var + eps)
    if "weight" in t:
        y = y * per_channel(t["weight"], nd, ca)
    if "bias" in t:
        y = y + per_channel(t["bias"], nd, ca)
    out = {"y": y}
    if meta["training"]:
        m, n = meta["momentum"], count(x.shape, bn_axes)
        out["running_mean_out"] = (1 - m) * t["running_mean"] + m * anp.reshape(mu_bn, (-1,))
        out["running_var_out"] = (1 - m) * t["running_var"] + m * anp.reshape(var_bn, (-1,)) * n / (n - 1)
    return out, {}


def batch_renorm(t, meta, rd=None):
    """Training: y = ((x - mu_B) / sigma_B * r + d) * weight + bias with
    r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - running_mean) / sigma, -d_max, d_max),
    sigma = sqrt(running_var + eps), r and d constants. Eval: BatchNorm's.
    `rd` fixes (r, d), for the finite-difference check."""
    x, eps, ca = t["x"], meta["eps"], meta["channel_axis"]
    nd, c = x.ndim, channel_dim(x.ndim, meta["channel_axis"])
    rm, rv = t["running_mean"], t["running_var"]
    sigma = anp.sqrt(per_channel(rv, nd, ca) + eps)
    aux = {}
    if meta["training"]:
        bn_axes = tuple(a for a in range(nd) if a != c)
        mu_b, var_b = moments(x, bn_axes)
        sigma_b = anp.sqrt(var_b + eps)
        if rd is None:
            # Constants: no gradient flows through r and d.
            r_raw = getval(sigma_b) / sigma
            d_raw = (getval(mu_b) - per_channel(rm, nd, ca)) / sigma
            r = np.clip(r_raw, 1 / meta["r_max"], meta["r_max"])
            d = np.clip(d_raw, -meta["d_max"], meta["d_max"])
            aux = {"r_raw": r_raw.ravel(), "d_raw": d_raw.ravel(), "r": r, "d": d}
        else:
            r, d = rd
        y = (x - mu_b) / sigma_b * r + d
        m, n = meta["momentum"], count(x.shape, bn_axes)
        out = {
            "running_mean_out": (1 - m) * rm + m * anp.reshape(mu_b, (-1,)),
            "running_var_out": (1 - m) * rv + m * anp.reshape(var_b, (-1,)) * n / (n - 1),
        }
    else:
        y = (x - per_channel(rm, nd, ca)) / sigma
        out = {}
    if "weight" in t:
        y = y * per_channel(t["weight"], nd, ca)
    if "bias" in t:
        y = y + per_channel(t["bias"], nd, ca)
    out = {"y": y, **out}
    return out, aux


REFERENCES = {
    "adain": adain,
    "ada_layer_norm": ada_layer_norm,
    "ada_rms_norm": ada_rms_norm,
    "switch_norm": switch_norm,
    "batch_renorm": batch_renorm,
}

# Inputs each op is differentiated with respect to (those a case has).
DIFFERENTIABLE = {
    "adain": ["x", "style"],
    "ada_layer_norm": ["x", "scale", "shift", "weight", "bias"],
    "ada_rms_norm": ["x", "scale", "shift", "weight"],
    "switch_norm": ["x", "weight", "bias", "mean_weight", "var_weight"],
    "batch_renorm": ["x", "weight", "bias"],
}


# ---------------------------------------------------------------------------
# Validation: the domain each op must accept, as the semantics state it.


def validate(op, t, meta):
    x = t["x"]
    if op == "adain":
        s = t["style"]
        c = channel_dim(x.ndim, meta["channel_axis"])
        if x.ndim < 3 or s.ndim != x.ndim or s.shape[0] != x.shape[0] or s.shape[c] != x.shape[c]:
            raise Invalid(f"adain: style {s.shape} does not match x {x.shape}")
        if meta["unbiased"]:
            for name, v in (("x", x), ("style", s)):
                if count(v.shape, spatial_axes(v.ndim, meta["channel_axis"])) < 2:
                    raise Invalid(f"adain: unbiased variance of {name} {v.shape} needs two positions")
    elif op in ("ada_layer_norm", "ada_rms_norm"):
        ns = tuple(meta["normalized_shape"])
        if x.ndim <= len(ns) or tuple(x.shape[x.ndim - len(ns):]) != ns:
            raise Invalid(f"{op}: x {x.shape} does not end with {list(ns)}")
        for name in ("scale", "shift"):
            if t[name].shape != (x.shape[0],) + ns:
                raise Invalid(f"{op}: {name} {t[name].shape} is not {(x.shape[0],) + ns}")
        for name in ("weight", "bias"):
            if name in t and t[name].shape != ns:
                raise Invalid(f"{op}: {name} {t[name].shape} is not {ns}")
    else:
        ca = meta["channel_axis"]
        if x.ndim < 2:
            raise Invalid(f"{op}: x {x.shape} has no channel dimension")
        C = x.shape[channel_dim(x.ndim, ca)]
        for name in ("weight", "bias", "running_mean", "running_var"):
            if name in t and t[name].shape != (C,):
                raise Invalid(f"{op}: {name} {t[name].shape} is not ({C},)")
        if op == "switch_norm":
            for name in ("mean_weight", "var_weight"):
                if t[name].shape != (3,):
                    raise Invalid(f"switch_norm: {name} {t[name].shape} is not (3,)")
        if op == "batch_renorm":
            r_max, d_max = meta["r_max"], meta["d_max"]
            if not (math.isfinite(r_max) and math.isfinite(d_max)) or r_max < 1 or d_max < 0:
                raise Invalid(f"batch_renorm: r_max {r_max} / d_max {d_max} out of range")
        if meta["training"] and x.size // C < 2:
            raise Invalid(f"{op}: training with one value per channel, x {x.shape}")
    if "dy" in t and t["dy"].shape != x.shape:
        raise Invalid(f"{op}: dy {t['dy'].shape} is not {x.shape}")


# ---------------------------------------------------------------------------
# Evaluation: forward, then autograd's gradient of sum(y * dy).


def evaluate(op, t, meta):
    ref = REFERENCES[op]
    names = [n for n in DIFFERENTIABLE[op] if n in t]
    const = {k: v for k, v in t.items() if k not in names}

    def objective(diff):
        out, _ = ref({**const, **diff}, meta)
        return anp.sum(out["y"] * t["dy"])

    out, aux = ref(t, meta)
    grads = grad(objective)({n: t[n] for n in names})
    out.update({"d" + n: grads[n] for n in names})
    return {k: np.asarray(v) for k, v in out.items()}, aux


def finite_difference_check(op, t, meta, expected, aux, h=1e-3):
    """Largest relative difference between autograd's gradients and a
    fourth-order central difference of sum(y * dy) in float64."""
    ref = REFERENCES[op]
    rd = (aux["r"], aux["d"]) if "r" in aux else None

    def objective(tt):
        out, _ = ref(tt, meta, rd) if rd is not None else ref(tt, meta)
        return float(np.sum(out["y"] * tt["dy"]))

    worst = 0.0
    for n in DIFFERENTIABLE[op]:
        if n not in t:
            continue
        base = t[n]
        fd = np.empty_like(base)
        for i in np.ndindex(base.shape):
            vals = []
            for step in (2, 1, -1, -2):
                p = base.copy()
                p[i] += step * h
                vals.append(objective({**t, n: p}))
            fd[i] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)
        ad = expected["d" + n]
        rel = np.max(np.abs(ad - fd)) / max(np.max(np.abs(ad)), 1e-300)
        worst = max(worst, rel)
    return worst


# ---------------------------------------------------------------------------
# Input generation.


def f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def nc_shaped(v, ndim, ca):
    """An [N, C] array shaped to broadcast against the input."""
    shape = [1] * ndim
    shape[0] = v.shape[0]
    shape[channel_dim(ndim, ca)] = v.shape[1]
    return v.reshape(shape)


def adain_inputs(x_shape, s_shape, ca=1, x_loc=0.0, with_dy=True):
    def make(rng):
        N = x_shape[0]
        C = x_shape[channel_dim(len(x_shape), ca)]
        t = {}
        # Content: means around x_loc, spreads 0.5..2; style: wider ranges.
        for name, shape, loc, spread, sd_range in (
            ("x", x_shape, x_loc, 1.0, (0.5, 2.0)),
            ("style", s_shape, 0.0, 2.0, (0.3, 3.0)),
        ):
            mu = loc + spread * rng.standard_normal((N, C))
            sd = rng.uniform(*sd_range, (N, C))
            z = rng.standard_normal(shape)
            t[name] = f32(nc_shaped(mu, len(shape), ca) + nc_shaped(sd, len(shape), ca) * z)
        if with_dy:
            t["dy"] = f32(rng.standard_normal(x_shape))
        return t

    return make


def ada_inputs(x_shape, ns, weight=True, bias=True, loc=0.0, scale_shape=None, with_dy=True):
    ns = tuple(ns)

    def make(rng):
        N = x_shape[0]
        t = {}
        # Rows with their own offset and spread around `loc`.
        rows = x_shape[: len(x_shape) - len(ns)] + (1,) * len(ns)
        mu = loc + rng.standard_normal(rows)
        sd = rng.uniform(0.5, 2.0, rows)
        t["x"] = f32(mu + sd * rng.standard_normal(x_shape))
        t["scale"] = f32(0.5 * rng.standard_normal(scale_shape or (N,) + ns))
        t["shift"] = f32(0.5 * rng.standard_normal((N,) + ns))
        if weight:
            t["weight"] = f32(1 + 0.3 * rng.standard_normal(ns))
        if bias:
            t["bias"] = f32(0.2 * rng.standard_normal(ns))
        if with_dy:
            t["dy"] = f32(rng.standard_normal(x_shape))
        return t

    return make


def channel_stats(rng, x_shape, ca, loc=0.0):
    """An input whose channels have their own mean and spread, and whose
    samples are shifted a little (so IN, LN and BN statistics all differ)."""
    nd = len(x_shape)
    N, C = x_shape[0], x_shape[channel_dim(nd, ca)]
    mu_c = loc + rng.standard_normal(C) if np.isscalar(loc) else loc + 0.0
    sd_c = rng.uniform(0.5, 2.0, C)
    shift_n = 0.3 * rng.standard_normal((N, C))
    z = rng.standard_normal(x_shape)
    x = nc_shaped(mu_c[None, :] + shift_n, nd, ca) + nc_shaped(np.broadcast_to(sd_c, (N, C)), nd, ca) * z
    return x, mu_c, sd_c


def sn_inputs(x_shape, ca=1, affine=True, mean_logits=(1.0, 1.0, 1.0), var_logits=(1.0, 1.0, 1.0), with_dy=True):
    def make(rng):
        C = x_shape[channel_dim(len(x_shape), ca)]
        x, mu_c, sd_c = channel_stats(rng, x_shape, ca)
        t = {"x": f32(x)}
        if affine:
            t["weight"] = f32(1 + 0.3 * rng.standard_normal(C))
            t["bias"] = f32(0.2 * rng.standard_normal(C))
        t["mean_weight"] = f32(mean_logits)
        t["var_weight"] = f32(var_logits)
        t["running_mean"] = f32(mu_c + 0.3 * rng.standard_normal(C))
        t["running_var"] = f32(sd_c**2 * rng.uniform(0.6, 1.6, C))
        if with_dy:
            t["dy"] = f32(rng.standard_normal(x_shape))
        return t

    return make


def brn_inputs(x_shape, ca=1, affine=True, loc=0.0, rd_targets=None, eps=1e-5, with_dy=True):
    """rd_targets: per channel (r, d) that the running statistics are
    solved for, from the batch's own statistics; otherwise the running
    statistics are drawn near the batch's."""

    def make(rng):
        nd = len(x_shape)
        C = x_shape[channel_dim(nd, ca)]
        x, mu_c, sd_c = channel_stats(rng, x_shape, ca, loc)
        x = f32(x)
        t = {"x": x}
        if affine:
            t["weight"] = f32(1 + 0.3 * rng.standard_normal(C))
            t["bias"] = f32(0.2 * rng.standard_normal(C))
        if rd_targets is None:
            t["running_mean"] = f32(mu_c + 0.5 * sd_c * rng.standard_normal(C))
            t["running_var"] = f32(sd_c**2 * rng.uniform(0.6, 1.6, C))
        else:
            axes = tuple(a for a in range(nd) if a != channel_dim(nd, ca))
            xd = x.astype(np.float64)
            mu_b = xd.mean(axis=axes)
            sigma_b = np.sqrt(xd.var(axis=axes) + eps)
            r, d = np.asarray(rd_targets, dtype=np.float64).T
            sigma = sigma_b / r
            t["running_var"] = f32(sigma**2 - eps)
            t["running_mean"] = f32(mu_b - d * sigma)
        if with_dy:
            t["dy"] = f32(rng.standard_normal(x_shape))
        return t

    return make


def const_inputs(**tensors):
    return lambda rng: {k: f32(v) for k, v in tensors.items()}


# ---------------------------------------------------------------------------
# The cases.


def case(name, op, meta, make, seed, expect_error=False, covers=""):
    return {"name": name, "op": op, "meta": meta, "make": make, "seed": seed,
            "expect_error": expect_error, "covers": covers}


def adain_meta(ca=1, unbiased=True, eps=1e-5):
    return {"eps": eps, "unbiased": unbiased, "channel_axis": ca}


def ada_meta(ns, eps=1e-5):
    return {"eps": eps, "normalized_shape": list(ns)}


def sn_meta(training=True, ca=1, momentum=0.1, eps=1e-5):
    return {"eps": eps, "momentum": momentum, "training": training, "channel_axis": ca}


def brn_meta(training=True, ca=1, momentum=0.1, r_max=3.0, d_max=5.0, eps=1e-5):
    return {"eps": eps, "momentum": momentum, "training": training, "r_max": r_max, "d_max": d_max,
            "channel_axis": ca}


NON_UNIFORM = dict(mean_logits=(0.5, -1.0, 1.5), var_logits=(-0.3, 1.2, 0.1))

# Batch renorm with r_max = 2, d_max = 1.5: per channel the (r, d) the
# running statistics are solved for; clipped values are far outside the
# range, kept ones far inside it.
CLIP_TARGETS = [
    (3.0, 0.5),    # r clipped to r_max, d kept
    (0.3, -0.7),   # r clipped to 1 / r_max, d kept
    (1.4, 2.5),    # r kept, d clipped to d_max
    (0.8, -3.0),   # r kept, d clipped to -d_max
    (1.1, 0.3),    # both kept
    (2.6, -2.0),   # both clipped
]

LARGE_MEAN_C = np.array([2e3, 5e3, 8e3, 1e4])

CASES = [
    # adain
    case("037_adain_basic", "adain", adain_meta(), adain_inputs((2, 4, 6, 5), (2, 4, 6, 5)), 37,
         covers="channels-first, unbiased, same spatial size"),
    case("038_adain_channels_last", "adain", adain_meta(ca=-1), adain_inputs((2, 6, 5, 4), (2, 6, 5, 4), ca=-1), 38,
         covers="channels-last"),
    case("039_adain_style_size", "adain", adain_meta(), adain_inputs((2, 3, 8, 8), (2, 3, 5, 7)), 39,
         covers="style spatial 5x7 against content 8x8"),
    case("040_adain_biased", "adain", adain_meta(unbiased=False), adain_inputs((2, 4, 6, 5), (2, 4, 3, 2)), 40,
         covers="unbiased = false; style 3x2 against content 6x5, so the two conventions differ"),
    case("041_adain_large_mean", "adain", adain_meta(), adain_inputs((2, 4, 8, 8), (2, 4, 8, 8), x_loc=1e4), 41,
         covers="content mean ~1e4, std ~1"),
    case("042_adain_odd", "adain", adain_meta(), adain_inputs((3, 3, 5, 7), (3, 3, 7, 5)), 42,
         covers="odd sizes: C = 3, content 5x7, style 7x5"),
    # ada_layer_norm
    case("043_adaln_basic", "ada_layer_norm", ada_meta([16]), ada_inputs((4, 16), [16]), 43,
         covers="[N, D] rows, weight and bias"),
    case("044_adaln_tokens", "ada_layer_norm", ada_meta([32]), ada_inputs((2, 6, 32), [32]), 44,
         covers="[N, T, D] tokens, scale/shift broadcast over T"),
    case("045_adaln_noaffine", "ada_layer_norm", ada_meta([24]), ada_inputs((2, 5, 24), [24], weight=False, bias=False), 45,
         covers="no weight, no bias"),
    case("046_adaln_weight_only", "ada_layer_norm", ada_meta([24]), ada_inputs((2, 5, 24), [24], bias=False), 46,
         covers="weight without bias"),
    case("047_adaln_2dshape", "ada_layer_norm", ada_meta([4, 6]), ada_inputs((2, 3, 4, 6), [4, 6]), 47,
         covers="normalized_shape [4, 6], scale/shift [N, 4, 6]"),
    case("048_adaln_large_mean", "ada_layer_norm", ada_meta([64]), ada_inputs((2, 8, 64), [64], loc=1e4), 48,
         covers="rows with mean ~1e4, std ~1"),
    case("049_adaln_odd", "ada_layer_norm", ada_meta([33], eps=1e-6), ada_inputs((3, 5, 33), [33]), 49,
         covers="odd sizes: D = 33, N = 3, T = 5; eps 1e-6"),
    # ada_rms_norm
    case("050_adarms_basic", "ada_rms_norm", ada_meta([16]), ada_inputs((4, 16), [16], bias=False), 50,
         covers="[N, D] rows with weight"),
    case("051_adarms_tokens", "ada_rms_norm", ada_meta([32], eps=1e-6), ada_inputs((2, 6, 32), [32], bias=False), 51,
         covers="[N, T, D] tokens with weight; eps 1e-6"),
    case("052_adarms_noaffine", "ada_rms_norm", ada_meta([24]), ada_inputs((2, 5, 24), [24], weight=False, bias=False), 52,
         covers="no weight"),
    case("053_adarms_2dshape", "ada_rms_norm", ada_meta([4, 6]), ada_inputs((2, 3, 4, 6), [4, 6], bias=False), 53,
         covers="normalized_shape [4, 6] with weight"),
    case("054_adarms_odd", "ada_rms_norm", ada_meta([33]), ada_inputs((3, 5, 33), [33], bias=False), 54,
         covers="odd sizes: D = 33 with weight"),
    # switch_norm
    case("055_sn_train", "switch_norm", sn_meta(), sn_inputs((4, 6, 5, 7)), 55,
         covers="channels-first training, uniform logits"),
    case("056_sn_channels_last", "switch_norm", sn_meta(ca=-1), sn_inputs((4, 5, 7, 6), ca=-1, **NON_UNIFORM), 56,
         covers="channels-last training, non-uniform logits"),
    case("057_sn_eval", "switch_norm", sn_meta(training=False), sn_inputs((4, 6, 5, 7), **NON_UNIFORM), 57,
         covers="eval: BN part from the running statistics, non-uniform logits"),
    case("058_sn_noaffine", "switch_norm", sn_meta(), sn_inputs((4, 6, 5, 7), affine=False), 58,
         covers="training without weight and bias"),
    case("059_sn_logits", "switch_norm", sn_meta(),
         sn_inputs((4, 6, 5, 7), mean_logits=(1.5, -0.5, 0.2), var_logits=(-1.0, 0.8, 0.3)), 59,
         covers="training, distinct non-uniform mean/var logits"),
    case("060_sn_odd", "switch_norm", sn_meta(momentum=0.3), sn_inputs((3, 3, 5, 7), **NON_UNIFORM), 60,
         covers="odd sizes: N = 3, C = 3, 5x7; momentum 0.3"),
    # batch_renorm
    case("061_brn_train", "batch_renorm", brn_meta(), brn_inputs((4, 6, 5, 7)), 61,
         covers="channels-first training, r and d inside their range"),
    case("062_brn_channels_last", "batch_renorm", brn_meta(ca=-1), brn_inputs((4, 5, 7, 6), ca=-1), 62,
         covers="channels-last training"),
    case("063_brn_eval", "batch_renorm", brn_meta(training=False), brn_inputs((4, 6, 5, 7)), 63,
         covers="eval (BatchNorm eval)"),
    case("064_brn_noaffine", "batch_renorm", brn_meta(), brn_inputs((4, 6, 5, 7), affine=False), 64,
         covers="training without weight and bias"),
    case("065_brn_clip", "batch_renorm", brn_meta(r_max=2.0, d_max=1.5),
         brn_inputs((4, 6, 5, 7), rd_targets=CLIP_TARGETS), 65,
         covers="r_max 2, d_max 1.5: r and d clipped on some channels, kept on others"),
    case("066_brn_is_bn", "batch_renorm", brn_meta(r_max=1.0, d_max=0.0), brn_inputs((4, 6, 5, 7)), 66,
         covers="r_max 1, d_max 0: BatchNorm training exactly"),
    case("067_brn_large_mean", "batch_renorm", brn_meta(),
         brn_inputs((4, 4, 6, 6), loc=LARGE_MEAN_C,
                    rd_targets=[(1.2, 0.7), (0.9, -1.5), (1.05, 8.0), (0.8, 0.4)]), 67,
         covers="channel means 2e3..1e4, std ~1; d clipped on one channel"),
    case("068_brn_odd", "batch_renorm", brn_meta(momentum=0.2), brn_inputs((3, 3, 5, 7)), 68,
         covers="odd sizes: N = 3, C = 3, 5x7; momentum 0.2"),
    # errors
    case("069_err_adain_one_position", "adain", adain_meta(),
         adain_inputs((2, 3, 1, 1), (2, 3, 4, 4), with_dy=False), 69, expect_error=True,
         covers="unbiased with one content position (M = 1)"),
    case("070_err_adain_style_one_position", "adain", adain_meta(),
         adain_inputs((2, 3, 4, 4), (2, 3, 1, 1), with_dy=False), 70, expect_error=True,
         covers="unbiased with one style position (M' = 1)"),
    case("071_err_sn_one_value", "switch_norm", sn_meta(), sn_inputs((1, 4), with_dy=False), 71, expect_error=True,
         covers="training with one value per channel (x [1, 4])"),
    case("072_err_brn_rmax", "batch_renorm", brn_meta(r_max=0.5), brn_inputs((4, 3, 5), with_dy=False), 72,
         expect_error=True, covers="r_max = 0.5 < 1"),
    case("073_err_adaln_scale_shape", "ada_layer_norm", ada_meta([8]),
         ada_inputs((2, 5, 8), [8], scale_shape=(2, 7), with_dy=False), 73, expect_error=True,
         covers="scale [2, 7] where [2, 8] is needed"),
]


# ---------------------------------------------------------------------------
# Metadata and file writing.


def meta_string(key, value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if key == "normalized_shape":
        return json.dumps([int(v) for v in value])
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def encode(tensors, metadata):
    """The safetensors layout, deterministic: tensors by dtype size (largest
    first) then name, metadata keys sorted, header padded with spaces."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
    order = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for n in order:
        a = np.ascontiguousarray(tensors[n])
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[n] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def check_file(path, tensors, metadata):
    """Reads a written file back with safetensors."""
    with safe_open(path, "np") as f:
        assert f.metadata() == metadata, path
    loaded = load_file(path)
    assert sorted(loaded) == sorted(tensors), path
    for n, v in tensors.items():
        assert loaded[n].dtype == v.dtype and np.array_equal(loaded[n], v, equal_nan=True), (path, n)


def max_abs(a):
    return float(np.max(np.abs(a))) if a.size else 0.0


def check_clipping(name, meta, aux64, aux32):
    """r and d are clipped on the same channels in float32 and float64, and
    no value sits near a clip bound (where float32 could decide otherwise)."""
    for key in ("r", "d"):
        assert np.array_equal(aux64[key] != aux64[key + "_raw"].reshape(aux64[key].shape),
                              aux32[key] != aux32[key + "_raw"].reshape(aux32[key].shape)), (name, key)
    r_raw, d_raw = aux64["r_raw"], aux64["d_raw"]
    r_max, d_max = meta["r_max"], meta["d_max"]
    if r_max > 1:
        for bound in (r_max, 1 / r_max):
            assert np.all(np.abs(r_raw / bound - 1) > 0.05), (name, "r near a bound", r_raw)
    if d_max > 0:
        assert np.all(np.abs(np.abs(d_raw) - d_max) > 0.05 * d_max), (name, "d near a bound", d_raw)
    clipped_r = (r_raw > r_max) | (r_raw < 1 / r_max)
    clipped_d = np.abs(d_raw) > d_max
    return int(clipped_r.sum()), int(clipped_d.sum()), r_raw.size


def build(c, log):
    """Returns (tensors, metadata) of one case after its checks."""
    rng = np.random.default_rng(c["seed"])
    inputs = c["make"](rng)
    op, meta = c["op"], c["meta"]
    metadata = {"op": op, **{k: meta_string(k, v) for k, v in meta.items()}}
    assert all(v.dtype == np.float32 for v in inputs.values())

    if c["expect_error"]:
        try:
            validate(op, inputs, meta)
        except Invalid as e:
            log(f"{c['name']}: refused as expected ({e})")
        else:
            raise AssertionError(f"{c['name']}: the reference accepts an error case")
        metadata["expect_error"] = "true"
        return inputs, metadata

    validate(op, inputs, meta)
    t64 = {k: v.astype(np.float64) for k, v in inputs.items()}
    exp64, aux64 = evaluate(op, t64, meta)
    exp32, aux32 = evaluate(op, inputs, meta)
    for k, v in exp32.items():
        assert v.dtype == np.float32, (c["name"], k, v.dtype)
    for k, v in exp64.items():
        assert v.dtype == np.float64 and np.all(np.isfinite(v)), (c["name"], k)

    fd = finite_difference_check(op, t64, meta, exp64, aux64)
    assert fd < 1e-6, f"{c['name']}: autograd and finite differences differ by {fd:.2e} (relative)"

    note = ""
    if op == "batch_renorm" and meta["training"]:
        nr, nd, C = check_clipping(c["name"], meta, aux64, aux32)
        note = f", clipped r on {nr}/{C} and d on {nd}/{C} channels"
        if meta["r_max"] == 1 and meta["d_max"] == 0:
            # The semantics say this is BatchNorm exactly.
            x, ca = t64["x"], meta["channel_axis"]
            axes = tuple(a for a in range(x.ndim) if a != channel_dim(x.ndim, ca))
            bn = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + meta["eps"])
            bn = bn * per_channel(t64["weight"], x.ndim, ca) + per_channel(t64["bias"], x.ndim, ca)
            assert np.max(np.abs(bn - exp64["y"])) < 1e-12, c["name"]
            note += " (equal to BatchNorm)"

    tensors = dict(inputs)
    errs = []
    for k, v in exp64.items():
        err = float(np.max(np.abs(exp32[k].astype(np.float64) - v)))
        tol = max(8 * err, 1e-6 * max_abs(v))
        assert tol > 0, (c["name"], k)
        metadata[f"f32_err_{k}"] = f"{err:.3e}"
        metadata[f"tol_{k}"] = f"{tol:.3e}"
        tensors[k] = v
        errs.append(f"{k} {err:.1e}")
    log(f"{c['name']}: finite differences agree to {fd:.1e}{note}; f32 error: {', '.join(errs)}")
    return tensors, metadata


def generate(out_dir, log):
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for c in CASES:
        tensors, metadata = build(c, log)
        blob = encode(tensors, metadata)
        assert len(blob) < MAX_FILE_BYTES, (c["name"], len(blob))
        path = os.path.join(out_dir, c["name"] + ".safetensors")
        with open(path, "wb") as f:
            f.write(blob)
        check_file(path, tensors, metadata)
        written.append(path)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory to write the cases into")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary directory and compare with --out byte for byte")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    log = (lambda s: None) if args.quiet else print

    if not args.check:
        written = generate(args.out, log)
        log(f"wrote {len(written)} cases into {args.out}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(tmp, log)
        differ = []
        for path in fresh:
            name = os.path.basename(path)
            committed = os.path.join(args.out, name)
            with open(path, "rb") as a:
                new = a.read()
            old = open(committed, "rb").read() if os.path.exists(committed) else None
            if new != old:
                differ.append(name)
        for name in differ:
            print(f"differs from a fresh generation: {name}", file=sys.stderr)
        log(f"{len(fresh) - len(differ)} of {len(fresh)} cases byte-identical to a fresh generation")
        return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
