"""Semantic segmentation (tasks/semantic_segmentation*.py, examples/run_semantic_segmentation.py): UperNet on our
backbones, the command line on an ADE-layout folder, exact resume, the pipeline on the saved folder, reduce_labels,
sliding-window evaluation, two ranks agreeing with one, and flag errors."""

import json
from types import SimpleNamespace
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation, pipeline

import transformers_mixedae  # noqa: F401
from transformers_mixedae import MixedAEForPreTraining, MixedAEImageProcessorPil
from transformers_mixedae.evaluation.segmentation_metrics import confusion_matrix, segmentation_scores
from transformers_mixedae.tasks.semantic_segmentation import (
    SemanticSegmentationTask,
    build_segmentation_model,
    default_out_indices,
    run_semantic_segmentation,
    segmentation_image_processor,
    synchronises_batch_norm,
    with_synchronised_batch_norm,
)
from transformers_mixedae.tasks.semantic_segmentation_args import SegmentationArguments, parse_segmentation_arguments
from transformers_mixedae.tasks.semantic_segmentation_data import SegmentationData, read_label_map

from helpers import TORCHRUN_TWO_PROCESSES, tiny_mixedae_config
from segmentation_data import SETTINGS, TINY_CAE_BACKBONE, arguments, command_line, make_ade_folder
from tiny_runs import folder_fingerprint

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY / "examples" / "run_semantic_segmentation.py"
METRICS = ("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy")


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def ade_folder(tmp_path_factory) -> Path:
    return make_ade_folder(tmp_path_factory.mktemp("ade"))


@pytest.fixture(scope="module")
def launched_run(tmp_path_factory, ade_folder) -> Path:
    """`accelerate launch --cpu examples/run_semantic_segmentation.py --data_dir D --num_labels 4 ...` (3 steps)."""
    output = tmp_path_factory.mktemp("launched") / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
         *command_line(output, ade_folder, eval_steps=2, save_steps=1)],
        env=environment(), capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("model_type", ["mixedae", "cae"])
def test_upernet_forward_and_backward_on_both_backbones(model_type):
    overrides = {"model_type": model_type, **({"config_overrides": TINY_CAE_BACKBONE} if model_type == "cae" else {})}
    model_args, _, _, segmentation_args = arguments("unused", ".", **overrides)
    model = build_segmentation_model(model_args, segmentation_args, model_type, {0: "a", 1: "b", 2: "c"})
    assert type(model.backbone).__name__ == ("MixedAEBackbone" if model_type == "mixedae" else "CAEBackbone")
    assert model.config.backbone_config.out_indices == [1, 2, 3, 4] and model.config.auxiliary_loss_weight == 0.4
    outputs = model(torch.randn(2, 3, 16, 24), labels=torch.randint(0, 3, (2, 16, 24)))
    assert outputs.logits.shape == (2, 3, 16, 24)
    outputs.loss.backward()
    without_gradient = [name for name, parameter in model.named_parameters()
                        if parameter.requires_grad and parameter.grad is None]
    assert without_gradient == []


def test_a_micro_batch_without_labelled_pixels_has_a_zero_loss_that_reaches_every_parameter(tmp_path, ade_folder):
    model_args, data_args, training_args, segmentation_args = arguments(tmp_path, ade_folder)
    task = SemanticSegmentationTask(model_args, data_args, training_args, segmentation_args)
    model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b", 2: "c"})
    pixel_values = torch.randn(2, 3, 16, 24)
    assert torch.isnan(model(pixel_values, labels=torch.full((2, 16, 24), 255)).loss)  # UperNet's own: mean of none
    loss = task.loss(model, {"pixel_values": pixel_values, "labels": torch.full((2, 16, 24), 255)})
    assert loss.item() == 0.0
    loss.backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.requires_grad]
    assert all(gradient is not None and not gradient.any() for gradient in gradients)  # DDP reduces every one
    labels = torch.randint(0, 3, (2, 16, 24))
    labels[0] = 255  # one labelled image is enough: UperNet's loss as it is
    torch.manual_seed(0)  # the same stochastic depth in both forwards
    expected = model(pixel_values, labels=labels).loss
    torch.manual_seed(0)
    assert task.loss(model, {"pixel_values": pixel_values, "labels": labels}) == expected


def test_backbone_starts_from_a_pretraining_checkpoint(tmp_path):
    pretraining = MixedAEForPreTraining(tiny_mixedae_config(num_hidden_layers=4))
    pretraining.save_pretrained(tmp_path)
    model_args, _, _, segmentation_args = arguments("unused", ".", model_type=None, config_overrides=None,
                                                    image_size=None, patch_size=None, model_name_or_path=str(tmp_path))
    model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b"})
    encoder = pretraining.state_dict()
    backbone = model.backbone.state_dict()
    blocks = [key for key in backbone if key.startswith("vit.layers.")]
    assert blocks and all(torch.equal(backbone[key], encoder[key]) for key in blocks)
    assert torch.equal(backbone["vit.embeddings.patch_embeddings.projection.weight"],
                       encoder["vit.embeddings.patch_embeddings.projection.weight"])
    assert model.config.backbone_config.drop_path_rate == 0.1


def test_freeze_position_embeddings_keeps_the_loaded_table_out_of_training(tmp_path, ade_folder):
    pretraining = MixedAEForPreTraining(tiny_mixedae_config(num_hidden_layers=4))
    with torch.no_grad():  # a table that is not the sin-cos one a new backbone starts from
        pretraining.vit.embeddings.position_embeddings.add_(torch.randn(1, 1, 1))
    pretraining.save_pretrained(tmp_path / "pretrained")
    loaded = pretraining.vit.embeddings.position_embeddings
    for freeze in (False, True):
        model_args, data_args, training_args, segmentation_args = arguments(
            tmp_path, ade_folder, model_type=None, config_overrides=None, image_size=None, patch_size=None,
            model_name_or_path=str(tmp_path / "pretrained"), freeze_position_embeddings=freeze)
        model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b", 2: "c"})
        table = model.backbone.vit.embeddings.position_embeddings
        assert torch.equal(table, loaded)
        model(torch.randn(2, 3, 16, 24), labels=torch.randint(0, 3, (2, 16, 24))).loss.backward()
        # MAE's fine-tuning trains the table (the default); frozen, it gets no gradient and no optimizer slot.
        assert table.requires_grad is not freeze and (table.grad is None) is freeze
        task = SemanticSegmentationTask(model_args, data_args, training_args, segmentation_args)
        optimised = {id(parameter) for group in task.build_optimizer(model, 1e-3).param_groups
                     for parameter in group["params"]}
        assert (id(table) in optimised) is not freeze
        assert model.backbone.vit.embeddings.patch_embeddings.projection.weight.grad is not None


@pytest.mark.parametrize("frozen_first", [False, True])
def test_resuming_with_the_position_table_frozen_otherwise_is_refused(tmp_path, ade_folder, frozen_first):
    settings = dict(max_steps=2, save_steps=1, save_total_limit=None, max_train_samples=8, max_eval_samples=2)
    finished = tmp_path / "finished"
    run_semantic_segmentation(*arguments(finished, ade_folder, freeze_position_embeddings=frozen_first, **settings))
    run = tmp_path / "run"
    shutil.copytree(finished / "checkpoints" / "step_1", run / "checkpoints" / "step_1")
    before = folder_fingerprint(run)
    table = r"backbone\.vit\.embeddings\.position_embeddings"
    moved = rf"frozen there, trained now: {table}; trained there, frozen now: none" if frozen_first else \
        rf"frozen there, trained now: none; trained there, frozen now: {table}"
    for allow_recipe_change in (False, True):  # the optimizer's state fits the trained parameters only
        with pytest.raises(ValueError, match=rf"trained other parameters than this run \({moved}\), and its "
                                             r"optimizer state only fits the same ones, even with "
                                             r"--allow_recipe_change\. Resume with the settings"):
            run_semantic_segmentation(*arguments(run, ade_folder, resume_from_checkpoint="latest",
                                                 freeze_position_embeddings=not frozen_first,
                                                 allow_recipe_change=allow_recipe_change, **settings))
        assert folder_fingerprint(run) == before


def test_an_older_checkpoint_that_trained_other_parameters_is_refused_with_a_hint(tmp_path, ade_folder):
    # Checkpoints written before the recipe recorded its frozen parameters: the mismatch only shows in the
    # optimizer's state, and the message must say which settings to check.
    settings = dict(max_steps=2, save_steps=1, save_total_limit=None, max_train_samples=8, max_eval_samples=2)
    finished, run = tmp_path / "finished", tmp_path / "run"
    run_semantic_segmentation(*arguments(finished, ade_folder, **settings))
    shutil.copytree(finished / "checkpoints" / "step_1", run / "checkpoints" / "step_1")
    run_state = run / "checkpoints" / "step_1" / "run_state.json"
    state = json.loads(run_state.read_text())
    frozen = state["recipe"].pop("frozen_parameters")
    run_state.write_text(json.dumps(state))
    before = folder_fingerprint(run)
    with pytest.raises(ValueError, match=r"step_1 failed \(ValueError: .*parameter group.*\)\. It is damaged, or was "
                                         r"written by another model or version, or trained other parameters than this "
                                         r"run \(its run state does not say which: it was written before checkpoints "
                                         r"recorded them\), then resume with the settings that chose them in its run "
                                         r"\(such as --mode, --freeze_position_embeddings"):
        run_semantic_segmentation(*arguments(run, ade_folder, resume_from_checkpoint="latest",
                                             freeze_position_embeddings=True, **settings))
    assert folder_fingerprint(run) == before
    # A checkpoint that records its trained parameters and fails to load for another reason gets no such hint.
    run_state.write_text(json.dumps({**state, "recipe": {**state["recipe"], "frozen_parameters": frozen}}))
    optimizer_state = run / "checkpoints" / "step_1" / "optimizer.bin"
    optimizer_state.write_bytes(bytes(optimizer_state.stat().st_size))  # same size, unreadable
    with pytest.raises(ValueError, match=r"step_1 failed \(.*\)\. It is damaged, or was written by another model or "
                                         r"version; resume from another checkpoint"):
        run_semantic_segmentation(*arguments(run, ade_folder, resume_from_checkpoint="latest", **settings))


def test_cae_resumes_with_the_flag_toggled_because_its_table_is_always_fixed(tmp_path, ade_folder):
    settings = dict(max_steps=2, save_steps=1, save_total_limit=None, max_train_samples=8, max_eval_samples=2,
                    model_type="cae", config_overrides=TINY_CAE_BACKBONE)
    uninterrupted = tmp_path / "uninterrupted"
    run_semantic_segmentation(*arguments(uninterrupted, ade_folder, freeze_position_embeddings=False, **settings))
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    run_semantic_segmentation(*arguments(resumed, ade_folder, resume_from_checkpoint="latest",
                                         freeze_position_embeddings=True, **settings))
    # Resumed, not trained again from the start (which would end with the same weights, the flag being a no-op):
    logged = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged if "loss" in entry] == [2]
    expected, actual = load_file(str(uninterrupted / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys() and all(torch.equal(expected[key], actual[key]) for key in expected)


def test_default_out_indices_are_the_papers_blocks_for_vit_base():
    assert default_out_indices(12) == [4, 6, 8, 12]  # blocks 3, 5, 7, 11 counted from 0
    assert default_out_indices(6) == [2, 3, 4, 6]


def test_default_out_indices_stay_four_distinct_stages_on_shallow_backbones(tmp_path, ade_folder):
    # 1/3, 1/2, 2/3 of 4 layers would repeat stage 2: the last four stages instead.
    assert default_out_indices(4) == [1, 2, 3, 4] and default_out_indices(3) == [0, 1, 2, 3]
    assert default_out_indices(5) == [1, 2, 3, 5]
    model_args, _, _, segmentation_args = arguments("unused", ".", out_indices=None)
    model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b"})
    assert model.config.backbone_config.out_indices == [1, 2, 3, 4]  # the tiny backbone has 4 layers
    with pytest.raises(ValueError, match=r"--out_indices \[0, 1, 2\] is not valid: the multi-scale neck takes 4 "
                                         r"stages, a 2-layer backbone has 3 \(0..2\): pass --multi_scale_neck false"):
        run_semantic_segmentation(*arguments(tmp_path / "run", ade_folder, out_indices=None,
                                             config_overrides=SETTINGS["config_overrides"] + ",num_hidden_layers=2"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "processes, device, flag, synchronised",
    [(2, "cuda", True, True), (1, "cuda", True, False), (2, "cpu", True, False), (2, "cuda", False, False)],
)
def test_batch_norm_is_synchronised_on_several_accelerators_only(processes, device, flag, synchronised, tmp_path):
    model_args, _, _, segmentation_args = arguments("unused", ".", sync_batch_norm=flag)
    model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b"})
    batch_norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert len(batch_norms) > 0
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    accelerator = SimpleNamespace(num_processes=processes, device=torch.device(device))
    converted = with_synchronised_batch_norm(model, segmentation_args, accelerator)
    assert synchronises_batch_norm(segmentation_args, accelerator) is synchronised
    kinds = {type(module) for name, module in converted.named_modules() if name in batch_norms}
    assert kinds == {torch.nn.SyncBatchNorm if synchronised else torch.nn.BatchNorm2d}
    # Same names and values: the saved folder loads as a plain UperNet.
    assert {name: tensor for name, tensor in converted.state_dict().items()}.keys() == state.keys()
    assert all(torch.equal(converted.state_dict()[name], tensor) for name, tensor in state.items())
    converted.save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    assert type(reloaded.get_submodule(batch_norms[0])) is torch.nn.BatchNorm2d


def test_layer_decay_groups_backbone_and_full_rate_heads():
    model_args, data_args, training_args, segmentation_args = arguments("unused", ".", layer_decay=0.5)
    task = SemanticSegmentationTask(model_args, data_args, training_args, segmentation_args)
    model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b"})
    optimizer = task.build_optimizer(model, lr=1.0)
    lr_of = {id(parameter): group["lr"] for group in optimizer.param_groups for parameter in group["params"]}
    assert len(lr_of) == sum(1 for parameter in model.parameters() if parameter.requires_grad)
    assert lr_of[id(model.backbone.vit.embeddings.patch_embeddings.projection.weight)] == 0.5 ** 5  # L = 4
    assert lr_of[id(model.backbone.vit.layers[3].attention.q_proj.weight)] == 0.5
    assert lr_of[id(next(model.decode_head.parameters()))] == 1.0
    assert lr_of[id(next(model.auxiliary_head.parameters()))] == 1.0


# ---------------------------------------------------------------------------------------------- runs
def test_launched_run_reports_the_metrics_pictures_and_a_pipeline_ready_folder(launched_run, ade_folder):
    results = json.loads((launched_run / "all_results.json").read_text())
    for name in METRICS:
        assert 0.0 <= results[name] <= 1.0
    assert results["train_steps"] == 3 and results["eval_samples"] == 5
    assert {f"eval_iou_{index}" for index in range(4)} <= set(results)
    assert (launched_run / "visualizations" / "step_2_segmentation.png").is_file()
    assert (launched_run / "visualizations" / "step_3_segmentation.png").is_file()
    card = (launched_run / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "type: mean_iou" in card

    model = AutoModelForSemanticSegmentation.from_pretrained(launched_run).eval()
    assert type(model.backbone).__name__ == "MixedAEBackbone"
    segmenter = pipeline("image-segmentation", model=str(launched_run))
    image = Image.open(ade_folder / "images" / "validation" / "ADE_validation_00000002.png")
    segments = segmenter(image)
    assert segments and all(segment["mask"].size == image.size for segment in segments)
    assert {segment["label"] for segment in segments} <= set(model.config.id2label.values())
    # The masks partition the image: every pixel belongs to exactly one predicted class.
    coverage = sum(np.array(segment["mask"]) // 255 for segment in segments)
    assert (coverage == 1).all()


def test_final_metrics_are_those_of_one_confusion_matrix_over_the_validation_set(launched_run, ade_folder):
    """The saved model, evaluated image by image here, gives the run's numbers exactly (whole-image mode)."""
    model = AutoModelForSemanticSegmentation.from_pretrained(launched_run, attn_implementation="eager").eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    confusion = torch.zeros(4, 4, dtype=torch.int64)
    for path in sorted((ade_folder / "images" / "validation").iterdir()):
        labels = torch.from_numpy(np.array(Image.open(ade_folder / "annotations" / "validation" / path.name))).long()
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        # The evaluation rescale of crop 16: short side 16 (keep ratio), bilinear antialiased.
        from transformers_mixedae.data import SegmentationEvaluationTransform

        transformed = SegmentationEvaluationTransform(scale=(64, 16), normalize=False)(pixels.permute(1, 2, 0).numpy())
        normalised = ((transformed["pixel_values"].float() / 255 - mean) / std)[None]
        height, width = normalised.shape[-2:]
        padded = torch.nn.functional.pad(normalised, (0, -width % 4, 0, -height % 4))
        with torch.no_grad():
            logits = model(pixel_values=padded).logits[..., :height, :width]
        logits = torch.nn.functional.interpolate(logits, size=tuple(labels.shape), mode="bilinear", align_corners=False)
        confusion += confusion_matrix(logits.argmax(dim=1)[0], labels, 4)
    expected = segmentation_scores(confusion)
    results = json.loads((launched_run / "all_results.json").read_text())
    assert results["eval_overall_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-12)
    assert results["eval_mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert results["eval_mean_accuracy"] == pytest.approx(expected["mean_accuracy"], abs=1e-12)


@pytest.mark.parametrize(("workers", "frozen_table"), [(0, False), (1, False), (0, True)])
def test_resumed_run_ends_with_the_same_weights(tmp_path, ade_folder, workers, frozen_table):
    # 3 steps of 4 images from 8: the resumed part crosses an epoch boundary.
    settings = dict(max_steps=3, save_steps=1, save_total_limit=None, max_train_samples=8, max_eval_samples=2,
                    dataloader_num_workers=workers, freeze_position_embeddings=frozen_table)
    uninterrupted = tmp_path / "uninterrupted"
    run_semantic_segmentation(*arguments(uninterrupted, ade_folder, **settings))
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    before = folder_fingerprint(resumed / "checkpoints" / "step_1")
    run_semantic_segmentation(*arguments(resumed, ade_folder, resume_from_checkpoint="latest", **settings))
    assert folder_fingerprint(resumed / "checkpoints" / "step_1") == before  # resumed from it, not run again
    expected, actual = load_file(str(uninterrupted / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    first, second = (json.loads((folder / "all_results.json").read_text()) for folder in (uninterrupted, resumed))
    assert [first[name] for name in METRICS] == [second[name] for name in METRICS]


def test_two_ranks_give_the_metrics_of_one(tmp_path, ade_folder):
    """torchrun (gloo) with 2 processes, each evaluating its half of the validation set: the summed confusion matrix
    gives exactly the single-process numbers (max_steps 0: the same weights, rank 0's, in both runs)."""
    single = run_semantic_segmentation(*arguments(tmp_path / "single", ade_folder, max_steps=0))
    completed = subprocess.run(
        [*TORCHRUN_TWO_PROCESSES, str(SCRIPT), *command_line(tmp_path / "double", ade_folder, max_steps=0)],
        env=environment(), capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    double = json.loads((tmp_path / "double" / "all_results.json").read_text())
    assert double["eval_samples"] == single["eval_samples"] == 5
    for name in (*METRICS, *(f"eval_iou_{index}" for index in range(4))):
        assert double[name] == pytest.approx(single[name], abs=1e-12, nan_ok=True), name


# ---------------------------------------------------------------------------------------------- evaluation
class PointwiseModel(torch.nn.Module):
    """Logits that depend on each pixel alone: sliding windows must give the whole image's logits exactly."""

    def forward(self, pixel_values):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.cat([pixel_values, -pixel_values[:, :1]], dim=1))


def test_sliding_windows_average_to_the_whole_image(tmp_path, ade_folder):
    from accelerate import Accelerator

    _, data_args, training_args, segmentation_args = arguments(tmp_path, ade_folder, eval_mode="slide", eval_stride=5)
    data = SegmentationData(data_args, training_args, segmentation_args, Accelerator(cpu=True))
    data.num_labels, data.patch_size = 4, 4
    pixel_values = torch.randn(1, 3, 23, 37)
    slid = data.segment(PointwiseModel(), pixel_values)
    segmentation_args.eval_mode = "whole"
    whole = data.segment(PointwiseModel(), pixel_values)
    assert slid.shape == whole.shape == (1, 4, 23, 37)
    torch.testing.assert_close(slid, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rescale_size, expected", [(None, 16), (32, 32)])
def test_rescale_size_sets_the_scale_of_training_evaluation_and_the_saved_processor(tmp_path, ade_folder,
                                                                                     rescale_size, expected):
    from accelerate import Accelerator

    model_args, data_args, training_args, segmentation_args = arguments(tmp_path, ade_folder, crop_size=16,
                                                                        rescale_size=rescale_size)
    model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b", 2: "c", 3: "d"})
    data = SegmentationData(data_args, training_args, segmentation_args, Accelerator(cpu=True))
    processor = segmentation_image_processor(model.config.backbone_config, segmentation_args)
    data.build_loaders(model.config, 4, processor)
    # mmseg's img_scale: the short side (4x for the long side), before the random ratio in training.
    assert data.train_transform.transform.transform.scale == (4 * expected, expected)
    assert data.evaluation_transform.scale == (4 * expected, expected)
    assert processor.size == {"height": expected, "width": expected}
    image = Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8))
    assert data.evaluation_transform(image, np.zeros((20, 24), dtype=np.uint8))["pixel_values"].shape[1] == expected


@pytest.mark.parametrize("crop_padding", ["mean", "black"])
def test_crop_padding_fills_the_training_crops(tmp_path, ade_folder, crop_padding):
    from accelerate import Accelerator

    model_args, data_args, training_args, segmentation_args = arguments(tmp_path, ade_folder, crop_size=16,
                                                                        crop_padding=crop_padding)
    model = build_segmentation_model(model_args, segmentation_args, "mixedae", {0: "a", 1: "b", 2: "c", 3: "d"})
    data = SegmentationData(data_args, training_args, segmentation_args, Accelerator(cpu=True))
    data.build_loaders(model.config, 4, segmentation_image_processor(model.config.backbone_config, segmentation_args))
    augmentation = data.train_transform.transform.transform
    small = np.full((8, 8, 3), 200, dtype=np.uint8)  # rescaled to at most 8 x 8 by the ratio, then padded to 16
    augmentation.ratio_range = (0.5, 0.5)
    padded = augmentation(small, np.ones((8, 8), dtype=np.uint8))["pixel_values"]
    border = {"mean": torch.tensor([124, 116, 104], dtype=torch.uint8), "black": torch.zeros(3, dtype=torch.uint8)}
    assert torch.equal(padded[:, -1, -1], border[crop_padding])


def test_reduce_labels_in_data_and_processor(tmp_path):
    annotation = Image.fromarray(np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8), mode="L")
    reduced = read_label_map(annotation, reduce_labels=True, num_labels=3)
    assert reduced.tolist() == [[255, 0, 1], [2, 255, 0]]
    assert read_label_map(annotation, reduce_labels=False, num_labels=4).tolist() == [[0, 1, 2], [3, 255, 1]]
    with pytest.raises(ValueError, match="--num_labels 3.*--reduce_labels"):
        read_label_map(annotation, reduce_labels=False, num_labels=3)
    processor = MixedAEImageProcessorPil(do_reduce_labels=True)
    processor.save_pretrained(tmp_path)
    loaded = MixedAEImageProcessorPil.from_pretrained(tmp_path)
    assert loaded.do_reduce_labels is True
    assert loaded.reduce_label(annotation).tolist() == reduced.tolist()
    assert MixedAEImageProcessorPil().reduce_label(annotation).tolist() == [[0, 1, 2], [3, 255, 1]]


def test_label_maps_as_integer_arrays_or_one_bit_images():
    labels = [[0, 1, 2], [3, 255, 1]]  # an Array2D column or nested lists
    for value in (labels, np.array(labels, dtype=np.uint8), torch.tensor(labels)):
        assert read_label_map(value, reduce_labels=False, num_labels=4).tolist() == labels
    assert read_label_map(np.array(labels), reduce_labels=True, num_labels=3).tolist() == [[255, 0, 1], [2, 255, 0]]
    with pytest.raises(ValueError, match="annotation <list>: expected a label map of shape \\(height, width\\)"):
        read_label_map([[[0, 1]]], reduce_labels=False, num_labels=4)
    one_bit = Image.fromarray(np.array([[0, 255, 255]], dtype=np.uint8)).convert("1")
    assert read_label_map(one_bit, reduce_labels=False, num_labels=2).tolist() == [[0, 1, 1]]


def test_label_map_errors_name_the_file(tmp_path):
    path = tmp_path / "ADE_val_7.png"
    Image.fromarray(np.array([[0, 9]], dtype=np.uint8), mode="L").save(path)
    with pytest.raises(ValueError, match=f"the label map {path} holds class id 9"):
        read_label_map(str(path), reduce_labels=False, num_labels=4)
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match=f"annotation {path}: expected a label map as a single-channel PIL image"):
        read_label_map({"path": str(path), "bytes": None}, reduce_labels=False, num_labels=4)


def test_a_pair_of_other_sizes_is_named(tmp_path):
    from transformers_mixedae.data import SegmentationEvaluationTransform
    from transformers_mixedae.tasks.semantic_segmentation_data import PairedTransform, SegmentationStream

    image, annotation = tmp_path / "scene.png", tmp_path / "scene_labels.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    Image.fromarray(np.zeros((8, 6), dtype=np.uint8), mode="L").save(annotation)
    stream = SegmentationStream([], PairedTransform(SegmentationEvaluationTransform(scale=(32, 8))), "image",
                                "annotation", skip_undecodable=False, reduce_labels=False, num_labels=2)
    example = {"image": {"path": str(image), "bytes": None}, "annotation": {"path": str(annotation), "bytes": None}}
    from transformers_mixedae.data.images import load_rgb_image

    with pytest.raises(ValueError, match=f"image {image} with annotation {annotation}: the image is 8x8 .* label map "
                                         "is 8x6"):
        stream.decode_example(example, load_rgb_image)


def test_a_label_map_turns_with_its_own_exif_orientation(tmp_path):
    """An annotation saved with an orientation tag is turned as its image is (here 180 degrees)."""
    labels = np.array([[1, 0, 0], [0, 0, 0]], dtype=np.uint8)
    path = tmp_path / "rotated.png"
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    Image.fromarray(labels, mode="L").save(path, exif=exif)
    assert read_label_map(str(path), reduce_labels=False, num_labels=2).tolist() == np.rot90(labels, 2).tolist()
    untagged = tmp_path / "plain.png"
    Image.fromarray(labels, mode="L").save(untagged)
    assert read_label_map(str(untagged), reduce_labels=False, num_labels=2).tolist() == labels.tolist()


def test_dataset_class_names_shift_with_reduce_labels():
    names = {0: "background", 1: "shirt", 2: "bag"}
    for reduce_labels, expected in ((False, names), (True, {0: "shirt", 1: "bag"})):
        task = SemanticSegmentationTask(*arguments("unused", ".", num_labels=None, reduce_labels=reduce_labels))
        task.data = SimpleNamespace(datasets=SimpleNamespace(id2label=names), source="the data")
        task.accelerator = SimpleNamespace(is_main_process=True)
        assert task.label_names() == expected


def test_post_process_semantic_segmentation_resizes_to_each_image():
    from types import SimpleNamespace

    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 2, :, :2] = 1.0  # left half class 2, right half class 0
    logits[1, 1] = 1.0
    maps = MixedAEImageProcessorPil().post_process_semantic_segmentation(
        SimpleNamespace(logits=logits), target_sizes=[(8, 6), (3, 5)]
    )
    assert [tuple(item.shape) for item in maps] == [(8, 6), (3, 5)]
    assert maps[0][:, :2].eq(2).all() and maps[0][:, 4:].eq(0).all() and maps[1].eq(1).all()
    with pytest.raises(ValueError, match="2 target sizes for 1 images"):
        MixedAEImageProcessorPil().post_process_semantic_segmentation(
            SimpleNamespace(logits=logits[:1]), target_sizes=[(8, 6), (3, 5)])


# ---------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval_mode", "sliding"], r"--eval_mode 'sliding' is not valid: choose one of \('whole', 'slide'\)"),
        (["--crop_padding", "grey"], r"--crop_padding 'grey' is not valid: choose one of \('mean', 'black'\)"),
        (["--crop_size", "0"], "--crop_size 0 is not valid"),
        (["--rescale_size", "-64"], "--rescale_size -64 is not valid: a short side in pixels >= 1"),
        (["--eval_stride", "600"], "--eval_stride 600 is not valid: at most --crop_size 512"),
        (["--out_indices", "3", "5", "7"], "--multi_scale_neck takes exactly 4 stages"),
        (["--out_indices", "5", "3", "7", "9"], "increasing, distinct stage indices"),
        (["--layer_decay", "1.5"], "--layer_decay 1.5 is not valid"),
        (["--auxiliary_loss_weight", "-1"], "--auxiliary_loss_weight -1.0 is not valid"),
        (["--num_labels", "2", "--id2label", '{"0": "a", "1": "b", "2": "c"}'], "names 3 classes but --num_labels is 2"),
        (["--id2label", '{"0": "a", "2": "c"}'], "the ids must be 0..1 without gaps"),
        (["--id2label", "{not json"], "is not JSON"),
        (["--id2label", "missing_labels.json"], "--id2label 'missing_labels.json' is not valid: no such file"),
        (["--train_dir", "."], "--train_dir '.' is not valid: semantic segmentation reads image/annotation pairs"),
        (["--data_dir", "/no/such/folder"], "--data_dir '/no/such/folder' is not valid: no such folder"),
    ],
)
def test_bad_flags_are_named(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_segmentation_arguments(flags)


def test_id2label_from_a_json_file_json_text_or_a_config_value(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"0": "background", "1": "shirt"}))
    assert SegmentationArguments(id2label=str(path)).id2label_map == {0: "background", 1: "shirt"}
    # ADE20K's 150 names as text run past the longest file name: read as JSON, never tried as a path.
    names = [f"class number {index}" for index in range(150)]
    assert SegmentationArguments(id2label=json.dumps(names)).id2label_map == dict(enumerate(names))
    assert SegmentationArguments(id2label=json.dumps(dict(enumerate(names)))).id2label_map == dict(enumerate(names))
    # A JSON config gives the object or list itself.
    assert SegmentationArguments(id2label={"0": "a", "1": "b"}).id2label_map == {0: "a", 1: "b"}
    assert SegmentationArguments(id2label=["a", "b"]).id2label_map == {0: "a", 1: "b"}
    with pytest.raises(ValueError, match="--id2label 'missing.json' is not valid: no such file"):
        SegmentationArguments(id2label="missing.json")
    with pytest.raises(ValueError, match="--id2label .* is not valid: the text given is not JSON"):
        SegmentationArguments(id2label='{"0": "a",')


def test_task_errors_before_training(tmp_path, ade_folder):
    with pytest.raises(ValueError, match="--crop_size 18 is not valid: a multiple of the backbone's patch size 4"):
        run_semantic_segmentation(*arguments(tmp_path / "a", ade_folder, crop_size=18))
    with pytest.raises(ValueError, match="--rescale_size 30 is not valid: a multiple of the backbone's patch size 4, "
                                         "e.g. 28"):
        run_semantic_segmentation(*arguments(tmp_path / "g", ade_folder, rescale_size=30))
    assert not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match=r"--out_indices \[1, 2, 3, 6\] is not valid: stages of a 4-layer backbone"):
        run_semantic_segmentation(*arguments(tmp_path / "b", ade_folder, out_indices=[1, 2, 3, 6]))
    with pytest.raises(ValueError, match=r"--out_indices \[1, 2\] is not valid: the auxiliary head reads the third"):
        run_semantic_segmentation(*arguments(tmp_path / "e", ade_folder, out_indices=[1, 2], multi_scale_neck=False))
    run_semantic_segmentation(*arguments(tmp_path / "f", ade_folder, out_indices=[1, 2], multi_scale_neck=False,
                                         auxiliary_head=False, max_steps=1))
    with pytest.raises(ValueError, match="--per_device_train_batch_size 1 is not valid: UperNet's BatchNorm layers "
                                         "need at least 2 images per batch"):
        run_semantic_segmentation(*arguments(tmp_path / "h", ade_folder, per_device_train_batch_size=1))
    assert not (tmp_path / "h").exists()
    with pytest.raises(ValueError, match="names no classes: pass --num_labels"):
        run_semantic_segmentation(*arguments(tmp_path / "c", ade_folder, num_labels=None))
    with pytest.raises(ValueError, match="class id 3, outside \\[0, --num_labels 3\\)"):
        run_semantic_segmentation(*arguments(tmp_path / "d", ade_folder, num_labels=3))
    with pytest.raises(ValueError, match="--num_labels 300 is not valid: at most 255 classes: class id 255 is the "
                                         "ignore index"):
        run_semantic_segmentation(*arguments(tmp_path / "i", ade_folder, num_labels=300))
    # A finished segmentation run (run "f" above) is not a backbone checkpoint: named, with what to pass instead.
    with pytest.raises(ValueError, match=r"holds a 'upernet' model, a finished segmentation run; segmentation starts "
                                         r"from a mixedae or cae pre-training or classification checkpoint.*"
                                         r"--resume_from_checkpoint latest"):
        run_semantic_segmentation(*arguments(tmp_path / "j", ade_folder, model_type=None,
                                             model_name_or_path=str(tmp_path / "f")))


@pytest.mark.parametrize(
    "name", ["ade20k_upernet_mae.json", "segment_fashion_mnist_dense.json", "segment_fashion_mnist_dense_64px.json"]
)
def test_presets_parse(name, ade_folder):
    model_args, data_args, training_args, segmentation_args = parse_segmentation_arguments(
        [str(REPOSITORY / "examples" / "configs" / name), "--data_dir", str(ade_folder), "--model_type", "mixedae"]
    )
    assert training_args.lr_scheduler_type == "polynomial" and segmentation_args.multi_scale_neck
    if name.startswith("ade20k"):
        assert (segmentation_args.crop_size, segmentation_args.layer_decay, training_args.learning_rate) == (512, 0.65, 1e-4)
        assert (training_args.warmup_steps, training_args.max_steps, training_args.weight_decay) == (1500, 160000, 0.05)
        assert segmentation_args.out_indices == [4, 6, 8, 12] and segmentation_args.auxiliary_loss_weight == 0.4
        assert segmentation_args.reduce_labels and segmentation_args.num_labels == 150
    if name.endswith("_64px.json"):  # the bundled scenes at their own size, long enough to learn item classes
        assert (segmentation_args.crop_size, segmentation_args.rescale_size, training_args.num_train_epochs) == (64, 64, 8)
        # the protocol of the recorded comparisons: black padding, a fixed position table
        assert segmentation_args.crop_padding == "black" and segmentation_args.freeze_position_embeddings
    else:  # mmseg's padding and MAE's trained table
        assert segmentation_args.crop_padding == "mean" and not segmentation_args.freeze_position_embeddings


def test_the_cards_usage_snippet_runs_on_the_saved_folder(launched_run, ade_folder, tmp_path, monkeypatch):
    from test_model_cards import localise, python_blocks, run_snippet

    Image.open(ade_folder / "images" / "validation" / "ADE_validation_00000000.png").convert("RGB").save(
        tmp_path / "example.jpg")
    monkeypatch.chdir(tmp_path)
    (snippet,) = python_blocks((launched_run / "README.md").read_text())
    assert "AutoModelForSemanticSegmentation" in snippet and "post_process_semantic_segmentation" in snippet
    run_snippet(localise(snippet, launched_run), "segmentation card snippet")


@pytest.mark.parametrize("model_type", ["mixedae", "cae"])
def test_saved_processor_resizes_to_the_crop_and_keeps_reduce_labels(model_type, tmp_path):
    from transformers import AutoImageProcessor

    from transformers_mixedae.tasks.semantic_segmentation import segmentation_image_processor

    overrides = {"model_type": model_type, **({"config_overrides": TINY_CAE_BACKBONE} if model_type == "cae" else {})}
    model_args, _, _, segmentation_args = arguments("unused", ".", reduce_labels=True, crop_size=24, **overrides)
    model = build_segmentation_model(model_args, segmentation_args, model_type, {0: "a", 1: "b"})
    segmentation_image_processor(model.config.backbone_config, segmentation_args).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.do_reduce_labels is True and processor.resample == 2  # bilinear, as the run's evaluation
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 24, 24)
    # Label maps as BEiT's processor takes them, reduced as the run read them (1 -> 0, 0 -> ignored).
    annotation = np.ones((30, 50), dtype=np.uint8)
    annotation[:, :25] = 0
    labels = processor(images=image, segmentation_maps=annotation, return_tensors="pt")["labels"]
    assert labels.shape == (1, 24, 24) and set(labels.unique().tolist()) == {0, 255}
    with torch.no_grad():
        (class_map,) = processor.post_process_semantic_segmentation(model.eval()(pixel_values), target_sizes=[(30, 50)])
    assert class_map.shape == (30, 50)


def test_reduce_labels_run_ignores_label_zero(tmp_path, ade_folder):
    """The ADE folder's maps hold 0..3: with --reduce_labels 0 is ignored and 1..3 become the 3 classes."""
    results = run_semantic_segmentation(*arguments(tmp_path, ade_folder, reduce_labels=True, num_labels=3,
                                                   max_steps=1))
    assert {key for key in results if key.startswith("eval_iou_")} == {"eval_iou_0", "eval_iou_1", "eval_iou_2"}
    assert 0.0 <= results["eval_mean_iou"] <= 1.0
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["do_reduce_labels"] is True and saved["size"] == {"height": 16, "width": 16}


def test_run_from_a_pretraining_checkpoint_folder(tmp_path, ade_folder):
    checkpoint = tmp_path / "pretrained"
    MixedAEForPreTraining(tiny_mixedae_config(num_hidden_layers=4)).save_pretrained(checkpoint)
    results = run_semantic_segmentation(*arguments(
        tmp_path / "run", ade_folder, model_type=None, config_overrides=None, image_size=None, patch_size=None,
        model_name_or_path=str(checkpoint), max_steps=1, max_eval_samples=1,
    ))
    assert results["train_steps"] == 1 and "eval_mean_iou" in results
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_type"] == "upernet" and config["backbone_config"]["model_type"] == "mixedae"
    assert config["backbone_config"]["out_indices"] == [1, 2, 3, 4]


def test_streamed_run(tmp_path, ade_folder):
    results = run_semantic_segmentation(*arguments(tmp_path, ade_folder, streaming=True, max_steps=2,
                                                   max_eval_samples=3, dataloader_num_workers=1))
    assert results["train_steps"] == 2 and results["train_loaded_samples"] == 8 and results["eval_samples"] == 3


def test_per_class_iou_leaves_out_absent_classes_and_keeps_classes_of_one_name_apart():
    data = SimpleNamespace(config=SimpleNamespace(id2label={0: "road", 1: "car", 2: "car", 3: "sky"}))
    # rows: true class, columns: predicted; class 3 is neither labelled nor predicted
    confusion = torch.tensor([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]])
    results = SegmentationData.scores(data, confusion, num_images=1)
    assert results["eval_iou_road"] == 0.75 and results["eval_iou_car"] == 2 / 3 and results["eval_iou_car_2"] == 1.0
    assert not any(key.endswith("sky") for key in results)
    assert results["eval_mean_iou"] == pytest.approx((0.75 + 2 / 3 + 1.0) / 3)
