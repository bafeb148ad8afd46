"""Structure of benchmarks/bench_pretrain.py's output on its smallest configuration (never its timings)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pretrain.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_pretrain", BENCHMARK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_main_prints_table_and_writes_json(bench, tmp_path, capsys):
    json_path = tmp_path / "out.json"
    result = bench.main(
        [
            "--sizes", "micro",
            "--precisions", "fp32",
            "--attn", "eager",
            "--batch-size", "4",
            "--repeats", "1",
            "--warmup", "0",
            "--matmul-size", "64",
            "--device", "cpu",
            "--json", str(json_path),
        ]
    )
    printed = capsys.readouterr().out
    table_lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert table_lines[0] == "| " + " | ".join(bench.TABLE_COLUMNS) + " |"
    assert table_lines[1].count("---") == len(bench.TABLE_COLUMNS)
    body = table_lines[2:]
    assert [line.split(" | ")[3] for line in body] == list(bench.MODELS)
    for line in body:
        assert line.count(" | ") == len(bench.TABLE_COLUMNS) - 1

    on_disk = json.loads(json_path.read_text())
    assert on_disk["table"] == result["table"]
    assert on_disk["settings"]["anchor"] == "vitmae"
    assert {"cpu_model", "torch", "torch_threads"} <= set(on_disk["machine"])
    peak = on_disk["matmul_peak"]["fp32"]
    assert peak["matmul_size"] == 64 and peak["flops_per_second"] > 0

    rows = {row["model"]: row for row in on_disk["rows"]}
    assert set(rows) == set(bench.MODELS)
    for name in ("vitmae", "mixedae-mae", "mixedae"):
        row = rows[name]
        assert row["status"] == "ok", row["error"]
        assert (row["size"], row["precision"], row["attn"], row["batch_size"]) == ("micro", "fp32", "eager", 4)
        assert len(row["step_seconds"]) == 1
        assert row["images_per_second"] > 0 and row["flops_per_step"] > 0 and row["peak_memory_bytes"] > 0
        assert 0 < row["fraction_of_matmul_peak"] and math.isfinite(row["fraction_of_matmul_peak"])
        assert row["step_time_ratio"] > 0 and row["memory_ratio"] > 0
    assert rows["vitmae"]["step_time_ratio"] == 1.0 and rows["vitmae"]["memory_ratio"] == 1.0
    # MAE mode does MAE's work exactly; the full model adds the contrastive similarity and top-k attention.
    assert rows["mixedae-mae"]["flops_per_step"] == rows["vitmae"]["flops_per_step"]
    assert rows["mixedae"]["flops_per_step"] > rows["vitmae"]["flops_per_step"]
    # CAE is measured once the package has it, and is otherwise a reported gap, not a crash.
    assert rows["cae"]["status"] in ("ok", "unavailable")
    if rows["cae"]["status"] == "unavailable":
        assert rows["cae"]["error"] and "unavailable" in table_lines[-1]


def test_sdpa_and_eager_count_the_same_model_flops(bench):
    pixel_values = torch.randn(4, 3, 32, 32)
    counts = {}
    for attn in bench.ATTENTION:
        torch.manual_seed(0)
        model = bench.build_vitmae("micro", attn)
        counts[attn] = bench.count_flops(model, {"pixel_values": pixel_values}, torch.device("cpu"), "fp32")
    assert counts["eager"] == counts["sdpa"] > 0


def test_batch_size_must_suit_mixing(bench):
    with pytest.raises(SystemExit, match="multiple of 4"):
        bench.main(["--sizes", "micro", "--batch-size", "6", "--repeats", "1"])
    with pytest.raises(SystemExit, match="unknown"):
        bench.main(["--sizes", "huge", "--repeats", "1"])
