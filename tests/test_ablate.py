"""experiments/ablate.py: a two-arm, one-seed, two-step grid at the tiny size; structure of its CSV/Markdown output,
the top-k curve, resuming, and the arms' configurations (never a timing or an accuracy)."""

import csv
import functools
import importlib
import json
import os
import shutil
import signal
from pathlib import Path

import datasets
import pytest
import torch

from helpers import tiny_mixedae_config
from transformers_mixedae import CAEConfig, MixedAEConfig, MixedAEForPreTraining
from transformers_mixedae.evaluation.homologous_probe import homologous_probe
from transformers_mixedae.training.arguments import parse_config_overrides

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
ABLATE_PATH = Path(__file__).resolve().parents[1] / "experiments" / "ablate.py"


@pytest.fixture(scope="module")
def ablate():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ABLATE_PATH.parent))
        yield importlib.import_module("ablate")


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_two_arm_grid_writes_tables_plots_curve_and_resumes(ablate, tmp_path, monkeypatch):
    argv = ["--size", "tiny", "--arms", "mae,full", "--seeds", "1", "--steps", "2", "--output_dir", str(tmp_path)]
    result = ablate.main(argv)
    assert result["trained"] == 2
    assert [(record["arm"], record["seed"]) for record in result["records"]] == [("mae", 0), ("full", 0)]

    columns, rows = read_csv(tmp_path / "runs.csv")
    assert tuple(columns) == ablate.RUN_COLUMNS
    assert [(row["arm"], row["seed"], row["steps"], row["images_seen"]) for row in rows] == [
        ("mae", "0", "2", "16"), ("full", "0", "2", "16"),
    ]
    for row in rows:
        for metric in ("eval_knn_accuracy", "eval_linear_probe_accuracy"):
            assert 0.0 <= float(row[metric]) <= 1.0
    assert rows[0]["final_homologous_topk_accuracy"] == ""  # MAE has no homologous attention
    assert 0.0 <= float(rows[1]["final_homologous_topk_accuracy"]) <= 1.0
    assert float(rows[1]["final_homologous_topk_accuracy_foreground"]) == pytest.approx(
        result["records"][1]["topk_curve"][-1]["homologous_topk_accuracy_foreground"])

    columns, summary = read_csv(tmp_path / "summary.csv")
    assert tuple(columns) == ablate.SUMMARY_COLUMNS
    assert [(row["arm"], row["num_seeds"]) for row in summary] == [("mae", "1"), ("full", "1")]
    assert summary[0]["eval_knn_accuracy_std"] == ""  # one seed: no standard deviation

    table = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(ablate.MARKDOWN_COLUMNS) + " |"
    assert table[1].count("---") == len(ablate.MARKDOWN_COLUMNS)
    assert [line.split(" | ")[0] for line in table[2:]] == ["| `mae`", "| `full`"]
    for line in table[2:]:
        assert line.count(" | ") == len(ablate.MARKDOWN_COLUMNS) - 1
    assert (tmp_path / ablate.ACCURACY_PLOT).stat().st_size > 0
    assert (tmp_path / ablate.TOPK_CURVE_PLOT).stat().st_size > 0

    full = result["records"][1]
    assert [point["step"] for point in full["topk_curve"]] == [0, 1, 2]  # before training, then every logged step
    assert all(0.0 <= point["homologous_topk_accuracy"] <= 1.0 for point in full["topk_curve"])
    assert result["records"][0]["topk_curve"] == []
    assert full["command"].startswith("python examples/run_mim.py --model_type mixedae")

    # The same command again trains nothing; other settings in the same folder are refused.
    result_file = tmp_path / "runs" / "full" / "seed_0" / ablate.RESULT_FILENAME
    written = result_file.stat().st_mtime_ns
    again = ablate.main(argv)
    assert again["trained"] == 0 and len(again["records"]) == 2
    assert result_file.stat().st_mtime_ns == written
    # A record from before the foreground field existed gets it from its curve.
    old_record = json.loads(result_file.read_text())
    del old_record["final_homologous_topk_accuracy_foreground"]
    result_file.write_text(json.dumps(old_record))
    loaded = ablate.main(argv)["records"][1]
    assert loaded["final_homologous_topk_accuracy_foreground"] == full["topk_curve"][-1][
        "homologous_topk_accuracy_foreground"]

    # --dense_probe scores the finished runs (without training) and the tables gain its column (here on 16 training
    # scenes at 32 px, to keep the test short).
    monkeypatch.setattr(ablate, "dense_benchmark_tensors",
                        functools.partial(ablate.dense_benchmark_tensors, image_size=32, max_train_images=16))
    probed = ablate.main([*argv, "--report_only", "--dense_probe"])
    assert probed["trained"] == 0
    for record in probed["records"]:
        assert 0.0 <= record["dense_probe_mean_iou"] <= 1.0
        assert json.loads((tmp_path / "runs" / record["arm"] / "seed_0" / ablate.RESULT_FILENAME).read_text())[
            "dense_probe_mean_iou"] == record["dense_probe_mean_iou"]
    _, rows = read_csv(tmp_path / "runs.csv")
    assert [float(row["dense_probe_mean_iou"]) for row in rows] == [
        record["dense_probe_mean_iou"] for record in probed["records"]]
    with pytest.raises(SystemExit, match="other settings"):
        ablate.main([*argv[:-4], "--steps", "3", "--output_dir", str(tmp_path)])


def test_segmentation_stage_fine_tunes_every_run_and_reports_the_mean_iou_over_its_seeds(ablate, tmp_path):
    config = tmp_path / "segment.json"
    config.write_text(json.dumps({
        "crop_size": 16, "head_hidden_size": 8, "auxiliary_channels": 8, "max_steps": 1, "max_train_samples": 8,
        "max_eval_samples": 4, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
        "dataloader_num_workers": 0, "logging_steps": 1, "out_indices": [0, 1, 2], "multi_scale_neck": False,
    }))
    grid = tmp_path / "grid"
    argv = ["--size", "tiny", "--arms", "random_init,mae", "--seeds", "1", "--steps", "1", "--output_dir", str(grid),
            "--segmentation_config", str(config), "--segmentation_seeds", "2"]
    result = ablate.main(argv)
    for record in result["records"]:
        runs = record["segmentation"]
        assert sorted(runs) == ["0", "1"]
        for key in ablate.SEGMENTATION_METRICS:
            assert record[key] == pytest.approx((runs["0"][key] + runs["1"][key]) / 2, abs=0)
        run_dir = grid / "runs" / record["arm"] / "seed_0"
        for seed in "01":
            assert json.loads((run_dir / "segmentation" / f"seed_{seed}" / "all_results.json").read_text())[
                "eval_mean_iou"] == runs[seed]["eval_mean_iou"]
        assert runs["1"]["command"].endswith(f"--seed 1")
    _, summary = read_csv(grid / "summary.csv")
    assert [float(row["eval_mean_iou_mean"]) for row in summary] == [
        record["eval_mean_iou"] for record in result["records"]]
    assert "dense mIoU (%)" in (grid / "summary.md").read_text()

    # Complete: nothing runs again. A third seed runs only that seed; another segmentation recipe is refused.
    assert ablate.main(argv)["trained"] == 0
    assert ablate.main([*argv[:-1], "3"])["trained"] == 2
    config.write_text(config.read_text().replace('"max_steps": 1', '"max_steps": 2'))
    with pytest.raises(SystemExit, match="segmented with other settings"):
        ablate.main(argv)


def _stop_with_sigterm_at(patch, ablate, runner: str, step: int) -> None:
    """`ablate.<runner>` (`run_pretraining` or `run_semantic_segmentation`) gets one more training callback, which
    sends this process SIGTERM once, when step `step` is logged."""
    from transformers_mixedae.training import TrainingCallback

    class SigtermAtStep(TrainingCallback):
        sent = False

        def on_log(self, state, logs):
            if state.progress.completed_steps == step and not SigtermAtStep.sent:
                SigtermAtStep.sent = True
                os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes this step, checkpoints and stops

    original = getattr(ablate, runner)

    def with_signal(*args, callbacks=(), **kwargs):
        return original(*args, callbacks=[*callbacks, SigtermAtStep()], **kwargs)

    patch.setattr(ablate, runner, with_signal)


def test_a_grid_stopped_by_sigterm_resumes_the_run_from_its_checkpoint_with_its_curve(ablate, tmp_path, monkeypatch):
    argv = ["--size", "tiny", "--arms", "full", "--seeds", "1", "--steps", "4"]
    uninterrupted = ablate.main([*argv, "--output_dir", str(tmp_path / "uninterrupted")])["records"][0]

    grid = tmp_path / "grid"
    run_dir = grid / "runs" / "full" / "seed_0"
    with monkeypatch.context() as patch:
        _stop_with_sigterm_at(patch, ablate, "run_pretraining", step=2)
        with pytest.raises(SystemExit):
            ablate.main([*argv, "--output_dir", str(grid)])
    progress = json.loads((run_dir / ablate.PROGRESS_FILENAME).read_text())
    assert progress["step"] == 2 and [point["step"] for point in progress["topk_curve"]] == [0, 1, 2]
    assert (run_dir / "checkpoints" / "step_2").is_dir() and not (run_dir / ablate.RESULT_FILENAME).exists()

    with pytest.raises(SystemExit, match="interrupted run with other settings"):  # never continued with others
        ablate.main([*argv[:-1], "5", "--output_dir", str(grid)])

    resumed = ablate.main([*argv, "--output_dir", str(grid)])
    assert resumed["trained"] == 1
    record = resumed["records"][0]
    assert record["resumed_from_steps"] == [2] and uninterrupted["resumed_from_steps"] == []
    assert record["topk_curve"] == uninterrupted["topk_curve"]  # steps 0-2 from the file, 3-4 measured after resuming
    for key in ("steps", "images_seen", *ablate.RUN_METRICS):
        assert record[key] == uninterrupted[key], key
    assert record["wall_seconds"] > progress["wall_seconds"]


def test_a_segmentation_fine_tune_stopped_by_sigterm_resumes_from_its_checkpoint(ablate, tmp_path, monkeypatch):
    config = tmp_path / "segment.json"
    config.write_text(json.dumps({
        "crop_size": 16, "head_hidden_size": 8, "auxiliary_channels": 8, "max_steps": 3, "max_train_samples": 8,
        "max_eval_samples": 4, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
        "dataloader_num_workers": 0, "logging_steps": 1, "out_indices": [0, 1, 2], "multi_scale_neck": False,
    }))
    argv = ["--size", "tiny", "--arms", "random_init", "--seeds", "1", "--steps", "1", "--segmentation_config",
            str(config)]
    uninterrupted = ablate.main([*argv, "--output_dir", str(tmp_path / "uninterrupted")])["records"][0]

    grid = tmp_path / "grid"
    folder = grid / "runs" / "random_init" / "seed_0" / ablate.SEGMENTATION_FOLDER / "seed_0"
    with monkeypatch.context() as patch:
        _stop_with_sigterm_at(patch, ablate, "run_semantic_segmentation", step=2)
        with pytest.raises(SystemExit):
            ablate.main([*argv, "--output_dir", str(grid)])
    assert (folder / "checkpoints" / "step_2").is_dir() and not (folder / "all_results.json").exists()

    record = ablate.main([*argv, "--output_dir", str(grid)])["records"][0]
    assert record["segmentation"]["0"]["resumed"] is True
    assert uninterrupted["segmentation"]["0"]["resumed"] is False
    for key in ablate.SEGMENTATION_METRICS:
        assert record[key] == uninterrupted[key], key
    assert [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]

    # A stopped fine-tune is not continued with another recipe.
    shutil.rmtree(folder)
    with monkeypatch.context() as patch:
        _stop_with_sigterm_at(patch, ablate, "run_semantic_segmentation", step=1)
        record_file = grid / "runs" / "random_init" / "seed_0" / ablate.RESULT_FILENAME
        stored = json.loads(record_file.read_text())
        for key in ("segmentation", *ablate.SEGMENTATION_METRICS):
            stored.pop(key)
        record_file.write_text(json.dumps(stored))
        with pytest.raises(SystemExit):
            ablate.main([*argv, "--output_dir", str(grid)])
    config.write_text(config.read_text().replace('"max_steps": 3', '"max_steps": 4'))
    with pytest.raises(SystemExit, match="segmented with other settings"):
        ablate.main([*argv, "--output_dir", str(grid)])

    # A grid of an older version recorded no settings before its first fine-tune ended: that one starts afresh.
    stored = json.loads(record_file.read_text())
    del stored["segmentation_settings"]
    record_file.write_text(json.dumps(stored))
    record = ablate.main([*argv, "--output_dir", str(grid)])["records"][0]
    assert record["segmentation"]["0"]["resumed"] is False
    assert [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_a_missing_segmentation_config_is_refused_before_any_run(ablate, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablate.main(["--size", "tiny", "--output_dir", str(tmp_path), "--segmentation_config", "nope.json"])
    assert "--segmentation_config nope.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("size_name", ["tiny", "doc", "main"])
def test_every_arm_is_a_valid_config_and_round_trips_through_config_overrides(ablate, size_name):
    size = ablate.SIZES[size_name]
    for arm in ablate.ARMS.values():
        overrides = ablate.arm_config_overrides(arm, size)
        assert parse_config_overrides(ablate.format_config_overrides(overrides)) == overrides, arm.name
        config_class = CAEConfig if arm.model_type == "cae" else MixedAEConfig
        config = config_class(image_size=size.image_size, patch_size=size.patch_size, **overrides)
        if arm.model_type == "mixedae":
            assert config.segment_embedding == arm.segment_embedding
            assert (config.homologous_contrastive_weight > 0) == (arm.contrastive_weight > 0)


def test_arms_differ_from_the_full_model_only_where_named(ablate):
    size = ablate.SIZES["doc"]
    full = ablate.arm_config_overrides(ablate.ARMS["full"], size)
    num_patches = (size.image_size // size.patch_size) ** 2
    expected = {
        "full_no_segment": {"segment_embedding": "none"},
        "full_ha_last_half": {"homologous_attention_layers": [2, 3]},
        "full_topk_2x": {"homologous_topk": 2 * num_patches // 4 + 1},
        "full_hc0.03": {"homologous_contrastive_weight": 0.03},
        "full_hc0.3": {"homologous_contrastive_weight": 0.3},
    }
    for name, changed in expected.items():
        overrides = ablate.arm_config_overrides(ablate.ARMS[name], size)
        assert {key: value for key, value in overrides.items() if full[key] != value} == changed, name
    mae = ablate.arm_config_overrides(ablate.ARMS["mae"], size)
    assert (mae["mixing_ratio"], mae["mask_ratio"], mae["homologous_attention_layers"]) == (1.0, 0.75, [])


def test_recognition_arms_set_only_their_fields_and_run_with_max_steps(ablate):
    size = ablate.SIZES["doc"]
    full = ablate.arm_config_overrides(ablate.ARMS["full"], size)
    assert not any(key in full for key in ("homologous_contrastive_target", "homologous_projection_dim",
                                           "homologous_topk_schedule"))  # earlier arms' settings unchanged
    expected = {
        "full_decoder_segment": {"segment_embedding": "decoder"},
        "full_projection": {"homologous_projection_dim": 64},
        "full_topk_anneal": {"homologous_topk_schedule": "linear", "homologous_topk_anneal_steps": 50},
        "logits_hc": {"homologous_contrastive_target": "attention_logits"},
        "logits_hc_no_segment": {"homologous_contrastive_target": "attention_logits", "segment_embedding": "none"},
        "qk_hc_no_segment": {"homologous_contrastive_target": "queries_keys", "segment_embedding": "none"},
        "logits_hc3_no_segment": {"homologous_contrastive_target": "attention_logits", "segment_embedding": "none",
                                  "homologous_contrastive_weight": 3.0},
        "logits_hc_no_segment_last_half": {"homologous_contrastive_target": "attention_logits",
                                           "segment_embedding": "none", "homologous_attention_layers": [2, 3]},
        "logits_hc1_no_segment_last_half": {"homologous_contrastive_target": "attention_logits",
                                            "segment_embedding": "none", "homologous_contrastive_weight": 1.0,
                                            "homologous_attention_layers": [2, 3]},
        "logits_hc_no_segment_anneal": {"homologous_contrastive_target": "attention_logits",
                                        "segment_embedding": "none", "homologous_topk_schedule": "linear",
                                        "homologous_topk_anneal_steps": 50},
        "logits_hc1_no_segment_last": {"homologous_contrastive_target": "attention_logits",
                                       "segment_embedding": "none", "homologous_contrastive_weight": 1.0,
                                       "homologous_attention_layers": [3]},
        "logits_hc1_no_segment_head_mean": {"homologous_contrastive_target": "attention_logits",
                                            "segment_embedding": "none", "homologous_contrastive_weight": 1.0,
                                            "homologous_selection": "head_mean"},
        "logits_hc1_no_segment_last_half_head_mean": {
            "homologous_contrastive_target": "attention_logits", "segment_embedding": "none",
            "homologous_contrastive_weight": 1.0, "homologous_attention_layers": [2, 3],
            "homologous_selection": "head_mean"},
    }
    for name, changed in expected.items():
        overrides = ablate.arm_config_overrides(ablate.ARMS[name], size, steps=100)
        assert {key: value for key, value in overrides.items() if full.get(key, "absent") != value} == changed, name
        assert parse_config_overrides(ablate.format_config_overrides(overrides)) == overrides, name
        MixedAEConfig(image_size=size.image_size, patch_size=size.patch_size, **overrides)
    assert set(ablate.DEFAULT_ARMS) == set(ablate.ARMS) - set(expected) - {"logits_hc1_no_segment",
                                                                           "logits_hc_decoder_segment"}
    argv = ablate.run_arguments(ablate.ARMS["full"], size, 7, 0, Path("out"))
    assert argv[argv.index("--max_steps") + 1] == "7" and "--max_train_steps" not in argv


def test_topk_probe_records_the_package_probes_accuracies(ablate):
    torch.manual_seed(0)
    model = MixedAEForPreTraining(tiny_mixedae_config()).train()
    pixel_values = torch.randn(8, 3, 32, 32)
    probe = ablate.TopkProbe(pixel_values, probe_seed=6)
    probe.measure(model, step=3, logs={"train/loss": 1.5})
    expected = homologous_probe(model, pixel_values, seed=6)
    (point,) = probe.curve
    assert point == {
        "step": 3,
        "homologous_topk_accuracy": expected["homologous_topk_accuracy"],
        "homologous_topk_accuracy_foreground": expected["homologous_topk_accuracy_foreground"],
        "homologous_topk_accuracy_other_keys": expected["homologous_topk_accuracy_other_keys"],
        "homologous_topk_accuracy_other_keys_foreground": expected["homologous_topk_accuracy_other_keys_foreground"],
        "homologous_own_key_kept": expected["homologous_own_key_kept"],
        "homologous_contrastive_loss": expected["homologous_contrastive_loss"],
        "reconstruction_loss": expected["reconstruction_loss"],
        "train_loss": 1.5,
    }


def test_a_grid_whose_workers_failed_exits_with_an_error(ablate, tmp_path, monkeypatch):
    class FailedWorker:  # a worker process whose runs failed (it exits 1, as `--shard` does)
        def __init__(self, command, *args, **kwargs):
            self.command = command

        def wait(self):
            return 1

        def send_signal(self, signum):
            pass

    monkeypatch.setattr(ablate.subprocess, "Popen", FailedWorker)
    with pytest.raises(SystemExit, match=r"failed runs: \['worker 0 exited with 1', 'worker 1 exited with 1'\]"):
        ablate.main(["--size", "tiny", "--arms", "mae", "--seeds", "1", "--jobs", "2",
                     "--output_dir", str(tmp_path / "grid")])


def test_a_failed_segmentation_of_a_finished_run_does_not_stop_the_grid(ablate, tmp_path, monkeypatch):
    size = ablate.SIZES["tiny"]
    run_dir = tmp_path / "grid" / "runs" / "mae" / "seed_0"
    run_dir.mkdir(parents=True)
    settings = ablate._without_output_dir(ablate.run_arguments(ablate.ARMS["mae"], size, size.steps, 0, run_dir))
    ablate.save_record(run_dir, {"arm": "mae", "label": "MAE", "seed": 0, "settings": settings, "topk_curve": []})
    config = tmp_path / "segment.json"
    config.write_text("{}")
    trained = []

    def failing_segmentation(*args, **kwargs):
        raise RuntimeError("segmentation fine-tune failed")

    def record_and_fail(arm, *args, **kwargs):
        trained.append(arm.name)
        raise RuntimeError("not trained in this test")

    monkeypatch.setattr(ablate, "run_semantic_segmentation", failing_segmentation)
    monkeypatch.setattr(ablate, "parse_segmentation_arguments", lambda argv: ())
    monkeypatch.setattr(ablate, "run_one", record_and_fail)
    monkeypatch.setattr(ablate, "probe_batch", lambda size: None)
    with pytest.raises(SystemExit, match=r"failed runs: \[\('mae', 0\), \('full', 0\)\]"):
        ablate.main(["--size", "tiny", "--arms", "mae,full", "--seeds", "1", "--output_dir", str(tmp_path / "grid"),
                     "--segmentation_config", str(config)])
    assert trained == ["full"]  # the grid went on past the failed segmentation


def test_tables_say_how_many_runs_a_mean_is_over_when_some_lack_the_metric(ablate):
    records = [dict(arm="full", label="full", seed=seed, eval_knn_accuracy=accuracy, eval_loss=loss)
               for seed, accuracy, loss in ((0, 0.80, 0.5), (1, 0.82, 0.6), (2, 0.78, float("nan")))]
    (row,) = ablate.summarize(records, ["full"])
    assert (row["num_seeds"], row["eval_loss_count"], row["eval_knn_accuracy_count"]) == (3, 2, 3)
    cells = ablate.markdown_table([row]).splitlines()[-1].split(" | ")
    assert cells[3] == "80.0 ± 2.0" and cells[8] == "0.550 ± 0.071 (2 of 3 runs)"
