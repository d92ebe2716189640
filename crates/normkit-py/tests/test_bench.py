"""python -m normkit.bench in smoke mode: every op and pass of normlab
bench is timed for torch.nn, normkit and the copy, and the records follow
normlab bench's JSON schema."""

import json

from normkit import bench

KEYS = {"op", "pass", "shape", "layout", "dtype", "threads", "impl", "median_ns", "min_ns",
        "iters", "bytes", "gbps", "copy_gbps", "roofline_pct", "groups", "note"}


def test_smoke_run_covers_every_op_and_pass(capsys):
    assert bench.main(["--smoke", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    seen = {(r["op"], r["layout"], r["pass"], r["impl"]) for r in records}
    for case in bench.cases("smoke", bench.OPS):
        for p in case.passes():
            for impl in ("pytorch", "normkit", "copy"):
                assert (case.op, case.layout, p, impl) in seen, (case, p, impl)
    for r in records:
        assert set(r) == KEYS
        assert r["median_ns"] > 0 and r["iters"] >= 2 and r["bytes"] > 0
    assert {r["layout"] for r in records} == {"rows", "nchw", "nhwc"}
    gn = next(r for r in records if r["op"] == "group_norm")
    assert gn["groups"] == 4  # 8 channels: the largest divisor <= min(32, C/2)


def test_table_lists_the_ratio():
    records = bench.run("smoke", ["layer_norm"], "f32", False)
    t = bench.table(records, "smoke", "f32")
    assert "layer_norm [4, 64] rows" in t and "normkit x" in t
    assert t.count("x  [") == 3  # one ratio per pass, on the pytorch rows


def test_bytes_model_matches_normlab():
    # normlab: forward_train = 2 n esize + 4 (2c + 2g); layer_norm rows g = n.
    c = bench.Case("layer_norm", [16, 768], "rows")
    assert bench.model_bytes(c, "forward_train", 4) == 2 * 16 * 768 * 4 + 4 * (2 * 768 + 2 * 16)
    b = bench.Case("batch_norm", [2, 8, 4, 4], "nchw")
    assert bench.model_bytes(b, "forward_eval", 4) == 2 * 256 * 4 + 4 * (4 * 8)
