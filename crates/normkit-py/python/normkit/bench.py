"""``python -m normkit.bench``: torch.nn against normkit.torch on
``normlab bench``'s ops, shapes and passes, interleaved in one process on
the same threads.

For each op, shape and pass it times ``pytorch`` (the ``torch.nn`` module;
DyT, which torch.nn lacks, composed from torch ops as in its paper),
``normkit`` (the ``normkit.torch`` module) and ``copy`` (the roofline: a
torch copy of the same size, 1-read-1-write for forward passes,
2-read-1-write for backward). Each round runs one iteration of each in
turn, so they see the same load on a shared machine. Output: JSON lines
in ``normlab bench``'s schema (``--json``), or a table.

Passes: ``forward_train`` is a training-mode forward recording autograd's
graph (as in training); ``forward_eval`` a no-grad evaluation forward
(BatchNorm, InstanceNorm: running statistics); ``backward`` the gradients
of the input and parameters from a recorded forward
(``torch.autograd.grad`` with the graph retained); ``forward_backward``
both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import normkit
import normkit.torch as nkt

ROW_OPS = ("layer_norm", "rms_norm", "dyt")
OPS = ("layer_norm", "rms_norm", "dyt", "batch_norm", "group_norm", "instance_norm")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
ESIZE = {"f32": 4, "bf16": 2, "f16": 2}

#: normlab bench's case lists (crates/normlab/src/bench/shapes.rs).
MODES = {
    "full": ([[16, 768], [8192, 1024], [64, 65536]], [[16, 32, 8, 8], [32, 64, 56, 56]]),
    "quick": ([[16, 768], [2048, 1024]], [[8, 64, 28, 28]]),
    "smoke": ([[4, 64]], [[2, 8, 4, 4]]),
}

#: normlab bench's budgets: warmup s, min iters, min time s, max time s, floor iters.
BUDGETS = {
    "full": (0.05, 10, 0.4, 2.0, 3),
    "quick": (0.005, 5, 0.03, 0.15, 2),
    "smoke": (0.0, 2, 0.0, 0.0, 2),
}


@dataclass
class Case:
    op: str
    shape: List[int]
    layout: str  # rows, nchw, nhwc

    def extents(self) -> Tuple[int, int, int, int]:
        """numel, n, c, s as normlab's Extents."""
        numel = 1
        for d in self.shape:
            numel *= d
        if self.layout == "rows":
            return numel, self.shape[0], self.shape[1], 1
        if self.layout == "nchw":
            return numel, self.shape[0], self.shape[1], self.shape[2] * self.shape[3]
        return numel, self.shape[0], self.shape[3], self.shape[1] * self.shape[2]

    def groups(self) -> Optional[int]:
        if self.op != "group_norm":
            return None
        c = self.extents()[2]
        cap = max(1, min(c // 2, 32))
        return next(g for g in range(cap, 0, -1) if c % g == 0)

    def passes(self) -> List[str]:
        if self.op in ("batch_norm", "instance_norm"):
            return ["forward_train", "forward_eval", "backward", "forward_backward"]
        return ["forward_train", "backward", "forward_backward"]


def cases(mode: str, ops) -> List[Case]:
    rows, channels = MODES[mode]
    out = []
    for op in OPS:
        if op not in ops:
            continue
        if op in ROW_OPS:
            out += [Case(op, s, "rows") for s in rows]
        else:
            for n, c, h, w in channels:
                out += [Case(op, [n, c, h, w], "nchw"), Case(op, [n, h, w, c], "nhwc")]
    return out


def model_bytes(case: Case, pas: str, esize: int) -> int:
    """normlab bench's minimum-bytes model (shapes.rs, `bytes`)."""
    numel, n, c, s = case.extents()
    g = {"batch_norm": c, "layer_norm": n, "rms_norm": n, "instance_norm": n * c,
         "group_norm": n * (case.groups() or 1), "dyt": 0}[case.op]
    per = 1 if case.op == "rms_norm" else 2
    fparams = {"rms_norm": c, "dyt": 2 * c + 1, "batch_norm": 6 * c}.get(case.op, 2 * c)
    fwd = 2 * numel * esize + 4 * (fparams + per * g)
    pgrads = {"rms_norm": c, "dyt": 2 * c + 2}.get(case.op, 2 * c)
    bwd = 3 * numel * esize + 4 * (c + per * g + pgrads)
    return {"forward_train": fwd, "forward_eval": 2 * numel * esize + 16 * c,
            "backward": bwd, "forward_backward": fwd + bwd}[pas]


class TorchDyT(nn.Module):
    """DyT as its paper writes it, in torch ops."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), 0.5))
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return torch.tanh(self.alpha * x) * self.weight + self.bias


def modules(case: Case) -> Dict[str, nn.Module]:
    _, _, c, _ = case.extents()
    if case.op == "layer_norm":
        t = nn.LayerNorm(c)
    elif case.op == "rms_norm":
        t = nn.RMSNorm(c)
    elif case.op == "dyt":
        t = TorchDyT(c)
        return {"pytorch": t, "normkit": nkt.DyT(c)}
    elif case.op == "batch_norm":
        t = nn.BatchNorm2d(c)
    elif case.op == "group_norm":
        t = nn.GroupNorm(case.groups(), c)
    else:
        t = nn.InstanceNorm2d(c, affine=True, track_running_stats=True)
    return {"pytorch": t, "normkit": nkt.replace_norms(_clone(t))}


def _clone(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)


def _input(case: Case, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(42)
    if case.layout == "nhwc":
        n, h, w, c = case.shape
        x = torch.randn(n, h, w, c, generator=g).permute(0, 3, 1, 2)  # channels_last
    else:
        x = torch.randn(*case.shape, generator=g)
    return (x * 1.7 + 0.3).to(dtype)


def _timer(mod: nn.Module, x: torch.Tensor, pas: str) -> Callable[[], float]:
    """One iteration of `pas`; returns its own duration in seconds."""
    params = [p for p in mod.parameters()]
    dy = torch.randn_like(x)
    if pas == "forward_eval":
        mod.eval()

        def it():
            with torch.no_grad():
                t = time.perf_counter()
                mod(x)
                return time.perf_counter() - t

        return it
    mod.train()
    xg = x.detach().requires_grad_()
    if pas == "forward_train":

        def it():
            t = time.perf_counter()
            y = mod(xg)
            d = time.perf_counter() - t
            del y
            return d

        return it
    if pas == "backward":
        y = mod(xg)

        def it():
            t = time.perf_counter()
            torch.autograd.grad(y, [xg] + params, dy, retain_graph=True)
            return time.perf_counter() - t

        return it

    def it():
        t = time.perf_counter()
        y = mod(xg)
        torch.autograd.grad(y, [xg] + params, dy)
        return time.perf_counter() - t

    return it


def _copy_timer(x: torch.Tensor, pas: str) -> Callable[[], float]:
    a, b, out = x.detach().clone(), x.detach().clone(), torch.empty_like(x)

    def fwd():
        t = time.perf_counter()
        out.copy_(a)
        return time.perf_counter() - t

    def bwd():
        t = time.perf_counter()
        torch.add(a, b, out=out)
        return time.perf_counter() - t

    if pas == "backward":
        return bwd
    if pas == "forward_backward":
        return lambda: fwd() + bwd()
    return fwd


def measure(iters: Dict[str, Callable[[], float]], budget) -> Dict[str, List[float]]:
    """Round-robin: each round runs one iteration of every implementation."""
    warmup, min_iters, min_time, max_time, floor = budget
    start = time.perf_counter()
    while True:
        for it in iters.values():
            it()
        if time.perf_counter() - start >= warmup:
            break
    times = {k: [] for k in iters}
    while True:
        for k, it in iters.items():
            times[k].append(it())
        done = all(len(t) >= min_iters and sum(t) >= min_time for t in times.values())
        capped = all(len(t) >= floor for t in times.values()) and any(
            sum(t) >= max_time for t in times.values())
        if done or capped:
            return times


def median(v: List[float]) -> float:
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


NOTES = {
    "pytorch": "torch.nn module, eager",
    "normkit": "normkit.torch module (torch.autograd.Function over normkit's Rust kernels)",
    "copy": "torch copy_ (forward), torch.add (backward: 2 reads, 1 write)",
}


def run(mode: str, ops, dtype: str, progress: bool) -> List[dict]:
    threads = torch.get_num_threads()
    records = []
    for case in cases(mode, ops):
        x = _input(case, DTYPES[dtype])
        mods = {k: m.to(DTYPES[dtype]) for k, m in modules(case).items()}
        for pas in case.passes():
            iters = {k: _timer(m, x, pas) for k, m in mods.items()}
            iters["copy"] = _copy_timer(x, pas)
            times = measure(iters, BUDGETS[mode])
            nbytes = model_bytes(case, pas, ESIZE[dtype])
            copy_bytes = {"backward": 3, "forward_backward": 5}.get(pas, 2) * x.numel() * ESIZE[dtype]
            copy_gbps = copy_bytes / (median(times["copy"]) * 1e9)
            for impl in ("pytorch", "normkit", "copy"):
                med = median(times[impl]) * 1e9
                b = copy_bytes if impl == "copy" else nbytes
                gbps = b / med
                note = NOTES[impl]
                if impl == "pytorch" and case.op == "dyt":
                    note = "composed from torch ops (torch.nn has no DyT): tanh(alpha*x)*weight+bias"
                rec = {
                    "op": case.op, "pass": pas, "shape": case.shape, "layout": case.layout,
                    "dtype": dtype, "threads": threads, "impl": impl, "median_ns": med,
                    "min_ns": min(times[impl]) * 1e9, "iters": len(times[impl]), "bytes": b,
                    "gbps": gbps, "copy_gbps": copy_gbps, "roofline_pct": 100 * gbps / copy_gbps,
                    "groups": case.groups(), "note": note,
                }
                records.append(rec)
                if progress:
                    print(f"{case.op} {case.shape} {case.layout} {pas} {impl}: "
                          f"{duration(med)}", file=sys.stderr)
    return records


def duration(ns: float) -> str:
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.3f} s"


def table(records: List[dict], mode: str, dtype: str) -> str:
    threads = records[0]["threads"] if records else torch.get_num_threads()
    lines = [
        f"normkit.bench: {mode} mode, {threads} threads, {dtype}, torch {torch.__version__}, "
        f"normkit SIMD {normkit.simd_level()}",
        "- one process; torch.nn, normkit and the copy interleaved round by round",
    ]
    notes: List[str] = []
    groups: Dict[tuple, List[dict]] = {}
    for r in records:
        groups.setdefault((r["op"], tuple(r["shape"]), r["layout"]), []).append(r)
    for (op, shape, layout), rs in groups.items():
        g = rs[0]["groups"]
        lines.append(f"\n{op} {list(shape)} {layout}" + (f", {g} groups" if g else ""))
        lines.append(f"  {'pass':<17}{'impl':<9}{'median':>11}{'GB/s':>9}{'% copy':>8}{'normkit x':>11}  note")
        for pas in dict.fromkeys(r["pass"] for r in rs):
            first = True
            nk = next(r for r in rs if r["pass"] == pas and r["impl"] == "normkit")
            for r in (r for r in rs if r["pass"] == pas):
                if r["note"] not in notes:
                    notes.append(r["note"])
                x = "" if r["impl"] != "pytorch" else f"{r['median_ns'] / nk['median_ns']:.2f}x"
                lines.append(
                    f"  {pas if first else '':<17}{r['impl']:<9}{duration(r['median_ns']):>11}"
                    f"{r['gbps']:>9.1f}{r['roofline_pct']:>7.0f}%{x:>11}  [{notes.index(r['note']) + 1}]"
                )
                first = False
    lines.append("\nnotes:")
    lines += [f"  [{i + 1}] {n}" for i, n in enumerate(notes)]
    lines.append("\nnormkit x: torch.nn's median time over normkit's (above 1: normkit is faster).")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m normkit.bench", description=__doc__.split("\n\n")[0])
    m = ap.add_mutually_exclusive_group()
    m.add_argument("--quick", action="store_true", help="fewer, smaller shapes; short timings")
    m.add_argument("--smoke", action="store_true", help="one tiny shape per op; checks every path")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--op", action="append", choices=OPS, help="only these ops (repeatable)")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    ap.add_argument("--json-out", metavar="PATH", help="also write the JSON lines to PATH")
    ap.add_argument("--progress", action="store_true", help="one line per measurement on stderr")
    a = ap.parse_args(argv)
    if a.threads is not None:
        if a.threads < 1:
            ap.error("--threads must be at least 1")
        torch.set_num_threads(a.threads)
    mode = "quick" if a.quick else "smoke" if a.smoke else "full"
    records = run(mode, a.op or OPS, a.dtype, a.progress)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    if a.json:
        for r in records:
            print(json.dumps(r))
    else:
        print(table(records, mode, a.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
