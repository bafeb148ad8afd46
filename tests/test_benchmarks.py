"""Structure of benchmarks/bench_pretrain.py's output on its smallest configuration (never its timings)."""

import importlib.util
import json
import math
import os
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
    for name in ("vitmae", "mixedae-mae", "mixedae", "mixedae-logits-hc"):
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
    # The recognition design moves the contrastive term to the attention logits: a different count, same kernels.
    assert rows["mixedae-logits-hc"]["flops_per_step"] != rows["mixedae"]["flops_per_step"]
    # The package ships CAE, so the benchmark must measure it (an "unavailable" row would hide a broken import).
    assert rows["cae"]["status"] == "ok", rows["cae"]["error"]
    assert rows["cae"]["flops_per_step"] > 0 and rows["cae"]["step_time_ratio"] > 0


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


# ---------------------------------------------------------------------------------------------- --official_cae_repo
# A checkout of github.com/Atten4Vis/CAE is not part of the test environment (no network): the full comparison runs
# only where OFFICIAL_CAE_REPO names one; the import machinery and the argument checks are tested everywhere.
OFFICIAL_CAE_REPO = os.environ.get("OFFICIAL_CAE_REPO")
MICRO_COMPARISON = [
    "--sizes", "micro",
    "--precisions", "fp32",
    "--attn", "eager,sdpa",
    "--cae_decoder_widths", "32,64",
    "--batch-size", "2",
    "--repeats", "1",
    "--warmup", "0",
    "--matmul-size", "64",
    "--device", "cpu",
]
# Stand-in for the official files: the same imports (timm helpers, furnace.utils, sibling modules of the `models`
# package) and the same `.cuda(device)` call in the forward, on a one-layer model.
FAKE_OFFICIAL_FILES = {
    "models/__init__.py": "raise RuntimeError('the package __init__ must not run')\n",
    "models/modeling_finetune.py": (
        "import furnace.utils as utils\n"
        "from timm.models.layers import drop_path, to_2tuple, trunc_normal_\n"
        "from timm.models.registry import register_model\n"
    ),
    "models/modeling_cae_helper.py": "from models.modeling_finetune import drop_path, to_2tuple, trunc_normal_\n",
    "models/modeling_cae.py": (
        "import torch\n"
        "from models.modeling_finetune import register_model\n"
        "from models.modeling_cae_helper import *\n"
        "class ContextAutoencoderViT(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.table = torch.nn.Parameter(torch.zeros(1, 4, 2), requires_grad=False)\n"
        "        trunc_normal_(self.table, std=0.02, a=-0.02, b=0.02)\n"
        "    def forward(self, x):\n"
        "        return drop_path(self.table.expand(x.shape[0], 4, 2).cuda(x.device), 0.5, self.training)\n"
        "@register_model\n"
        "def cae_fake(**kwargs):\n"
        "    return ContextAutoencoderViT()\n"
    ),
}


def write_fake_official_checkout(folder: Path) -> Path:
    for name, text in FAKE_OFFICIAL_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_official_cae_repo_must_be_a_checkout(bench, tmp_path):
    with pytest.raises(SystemExit, match=r"--official_cae_repo .*no such folder.*Atten4Vis/CAE"):
        bench.main(["--official_cae_repo", str(tmp_path / "absent"), *MICRO_COMPARISON])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "modeling_cae.py").write_text("")
    with pytest.raises(SystemExit) as raised:
        bench.main(["--official_cae_repo", str(tmp_path), *MICRO_COMPARISON])
    message = str(raised.value)
    assert message.startswith(f"--official_cae_repo {tmp_path}: not a checkout of github.com/Atten4Vis/CAE")
    assert "models/modeling_cae_helper.py, models/modeling_finetune.py" in message
    assert "missing models/modeling_cae.py" not in message


def test_official_cae_options_are_validated_before_the_import(bench, tmp_path):
    checkout = write_fake_official_checkout(tmp_path)  # its models/__init__.py would raise if anything ran it
    for widths in ("30", "0", "abc", "", "32,66"):
        with pytest.raises(SystemExit, match="--cae_decoder_widths .*divisible by 4 and by the decoder heads"):
            bench.main(["--official_cae_repo", str(checkout), *MICRO_COMPARISON, "--cae_decoder_widths", widths])
    with pytest.raises(SystemExit, match="--cae_drop_path_rate 1.0 must be in"):
        bench.main(["--official_cae_repo", str(checkout), *MICRO_COMPARISON, "--cae_drop_path_rate", "1"])


def test_official_import_uses_stand_ins_only_while_importing(bench, tmp_path):
    checkout = write_fake_official_checkout(tmp_path)
    before = {name: sys.modules.get(name) for name in bench.OFFICIAL_CAE_STAND_IN_MODULES + bench.OFFICIAL_CAE_MODULES}
    module = bench.import_official_cae(str(checkout))
    after = {name: sys.modules.get(name) for name in before}
    assert after == before  # nothing left behind, nothing that was there replaced
    assert module.__file__ == str(checkout / "models" / "modeling_cae.py")
    assert module.cae_fake.__name__ == "cae_fake"  # register_model returns the function itself
    assert module.to_2tuple(3) == (3, 3) and module.to_2tuple((2, 5)) == (2, 5)
    official = module.ContextAutoencoderViT()
    assert official.table.abs().max() <= 0.02 and official.table.abs().sum() > 0  # truncated normal, bounds kept

    # Without CUDA, `.cuda(x.device)` in the official forward runs only inside the stand-in, which is then removed.
    original_cuda = torch.Tensor.cuda
    x = torch.ones(64, 3)
    with bench.cuda_call_stand_in(x.device):
        kept = official.train()(x)
        assert torch.equal(official.eval()(x), official.table.expand(64, 4, 2))  # no drop path in eval mode
    assert torch.Tensor.cuda is original_cuda
    per_sample = kept.flatten(1)
    dropped = (per_sample == 0).all(1)
    assert 0 < int(dropped.sum()) < 64  # whole samples dropped at rate 0.5 ...
    assert torch.equal(per_sample[~dropped], 2 * official.table.flatten(1).expand(int((~dropped).sum()), -1))  # ... others / 0.5

    with pytest.raises(SystemExit, match="--official_cae_repo .*has no ContextAutoencoderViT"):
        (checkout / "models" / "modeling_cae.py").write_text("VALUE = 1\n")
        bench.import_official_cae(str(checkout))
    with pytest.raises(SystemExit, match="--official_cae_repo .*could not be imported .*No module named 'einops_not_installed'"):
        (checkout / "models" / "modeling_cae.py").write_text("import einops_not_installed as einops\n")
        bench.import_official_cae(str(checkout))
    assert {name: sys.modules.get(name) for name in before} == before


@pytest.mark.skipif(not OFFICIAL_CAE_REPO, reason="set OFFICIAL_CAE_REPO to a checkout of github.com/Atten4Vis/CAE")
def test_ours_against_the_official_cae(bench, tmp_path, capsys):
    json_path = tmp_path / "official.json"
    result = bench.main(["--official_cae_repo", OFFICIAL_CAE_REPO, *MICRO_COMPARISON, "--json", str(json_path)])
    assert "## CAE: ours / official" in capsys.readouterr().out
    assert result["rows"] == [] and json.loads(json_path.read_text())["official_cae"]["rows"]
    rows = result["official_cae"]["rows"]
    commit = result["official_cae"]["repo_commit"]
    assert commit is None or len(commit) == 40
    assert [(row["decoder_width"], row["model"]) for row in rows] == [
        (width, model) for width in (32, 64) for model in ("official-cae", "cae-eager", "cae-sdpa")
    ]
    by_width = {width: [row for row in rows if row["decoder_width"] == width] for width in (32, 64)}
    for width_rows in by_width.values():
        official = width_rows[0]
        for row in width_rows:
            assert row["status"] == "ok", row["error"]
            # Same weights, inputs and masks: the same loss and the same work.
            assert row["loss_matches_official"], (row["loss"], official["loss"])
            assert row["flops_per_step"] == official["flops_per_step"] > 0
            assert row["step_time_ratio"] > 0 and row["memory_ratio"] > 0
        assert official["step_time_ratio"] == official["memory_ratio"] == 1.0


def test_main_job_size_is_the_main_job_configs_model(bench, tmp_path):
    job = json.loads(Path(bench.MAIN_JOB_CONFIG).read_text())
    size = bench.SIZES["main-job"]
    assert (size["encoder"].image_size, size["encoder"].patch_size) == (job["image_size"], job["patch_size"])
    overrides = dict(item.split("=") for item in job["config_overrides"].split(","))
    assert size["encoder"].hidden_size == int(overrides["hidden_size"])
    assert size["encoder"].num_hidden_layers == int(overrides["num_hidden_layers"])
    assert size["decoder"] == {name: int(value) for name, value in overrides.items() if name.startswith("decoder_")}
    # Another main job gives another row: the size follows the file, not a copy of its numbers.
    other = dict(job, image_size=64, config_overrides=job["config_overrides"].replace("num_hidden_layers=6",
                                                                                       "num_hidden_layers=3"))
    path = tmp_path / "job.json"
    path.write_text(json.dumps(other))
    changed = bench.main_job_size(str(path))
    assert (changed["encoder"].image_size, changed["encoder"].num_hidden_layers) == (64, 3)
