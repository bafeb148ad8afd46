"""Structure of benchmarks/bench_data.py's output on a tiny setting (never its timings)."""

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

BENCHMARK_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_data.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_data", BENCHMARK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_fixtures_are_jpegs_of_the_asked_size(bench, tmp_path):
    source = bench.write_jpeg_fixtures(tmp_path, 3, size=(40, 30), seed=1)
    assert source
    jpegs = bench.read_jpegs(tmp_path)
    assert len(jpegs) == 3
    for data in jpegs:
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.size == (40, 30) and image.mode == "RGB"


def test_main_prints_table_and_writes_json(bench, tmp_path, capsys):
    jpeg_dir = tmp_path / "jpegs"
    jpeg_dir.mkdir()
    bench.write_jpeg_fixtures(jpeg_dir, 4, size=(64, 48))
    json_path = tmp_path / "out.json"
    threads = torch.get_num_threads()
    result = bench.main(
        [
            "--jpeg-dir", str(jpeg_dir),
            "--image-size", "32",
            "--passes", "1",
            "--check-images", "2",
            "--workers", "0",
            "--loader-modes", "arrow",
            "--loader-batches", "1",
            "--shuffle-buffer-size", "4",
            "--shards", "2",
            "--batch-size", "4",
            "--threads", str(threads),
            "--json", str(json_path),
        ]
    )
    assert torch.get_num_threads() == threads

    printed = capsys.readouterr().out
    table_lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert table_lines[0] == "| " + " | ".join(bench.TABLE_COLUMNS) + " |"
    assert table_lines[1].count("---") == len(bench.TABLE_COLUMNS)
    body = table_lines[2:]
    assert len(body) == len(bench.VARIANTS) + 1  # every pipeline, then one loader row per worker count
    assert body[-1].startswith("| run_mim DataLoader (arrow), 0 workers |")

    on_disk = json.loads(json_path.read_text())
    assert on_disk["table"] == result["table"]
    assert on_disk["command"].split()[0] and on_disk["date"]
    assert {"cpu_model", "cpu_count", "torch", "transformers", "package_versions"} <= set(on_disk["machine"])
    assert on_disk["fixtures"]["count"] == 4 and on_disk["fixtures"]["sizes"] == ["64x48"]
    assert on_disk["settings"]["image_size"] == 32 and on_disk["settings"]["workers"] == [0]

    rows = {row["pipeline"]: row for row in on_disk["rows"]}
    assert set(rows) == set(bench.VARIANTS)
    for name, row in rows.items():
        if name == "vit-torchvision" and row["status"] == "unavailable":
            assert "torchvision" in row["error"]
            continue
        assert row["status"] == "ok", row["error"]
        assert len(row["seconds_by_clock"]["cpu"]) == len(row["seconds_by_clock"]["wall"]) == 1
        assert row["images_per_second_cpu"] > 0 and row["images_per_second_wall"] > 0
        assert row["ours_ratio_cpu"] > 0 and row["ours_ratio_wall"] > 0
    assert rows[bench.OURS]["ours_ratio_cpu"] == 1.0

    headline = on_disk["headline"]
    assert headline["reference"] in bench.REFERENCES and headline["ours_over_reference_cpu"] > 0
    # Ours and the reference crop the same boxes with the same flips: outputs agree to a uint8 level or so.
    check = on_disk["output_check"]
    assert check["images"] == 2 and check["shape"] == [3, 32, 32]
    assert check["max_abs_difference"] <= 3 * check["one_uint8_level"]

    (loader,) = on_disk["loader"]
    assert loader["status"] == "ok", loader["error"]
    assert (loader["mode"], loader["workers"], loader["batch_shape"]) == ("arrow", 0, [4, 3, 32, 32])
    assert loader["timed_images"] == 4 and loader["timed_batches"] == 1
    assert loader["images_per_second_wall"] > 0 and loader["images_per_second_cpu"] > 0


def test_arguments_are_checked(bench):
    with pytest.raises(SystemExit, match="--workers"):
        bench.main(["--workers", "one"])
    with pytest.raises(SystemExit, match="multiple of 4"):
        bench.main(["--batch-size", "6"])
    with pytest.raises(SystemExit, match="--loader-modes"):
        bench.main(["--loader-modes", "ftp"])
