"""evaluation.homologous_probe: the model's own top-k accuracy, the foreground split on hand-built images, chance,
no side effect on the RNG or the train/eval mode, the evaluation keys of a tiny run, and the CLI."""

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch

from helpers import tiny_mixedae_config
from tiny_runs import REPOSITORY, TINY_MIXEDAE, arguments
from transformers_mixedae import MixedAEForPreTraining
from transformers_mixedae.models import modeling_mixedae
from transformers_mixedae.evaluation.homologous_probe import (
    IMAGENET_DEFAULT_STD,
    can_probe,
    constant_patch_values,
    content_ceiling,
    foreground_patches,
    homologous_probe,
    main,
    validation_batch,
)
from transformers_mixedae.tasks.masked_image_modeling import run_pretraining

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
PROBE_KEYS = ("eval_homologous_topk_accuracy", "eval_homologous_topk_accuracy_foreground",
              "eval_homologous_topk_accuracy_other_keys", "eval_homologous_contrastive_loss")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MixedAEForPreTraining(tiny_mixedae_config()).train()


def noise_for(seed: int, batch_size: int, model) -> torch.Tensor:
    return torch.rand(batch_size // model.config.group_size, 64, generator=torch.Generator().manual_seed(seed))


def test_all_query_accuracy_is_the_models_own_for_the_same_noise(model):
    pixel_values = torch.randn(8, 3, 32, 32)
    result = homologous_probe(model, pixel_values, seed=5)
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, noise=noise_for(5, 8, model))
    model.train()
    assert result["homologous_topk_accuracy"] == float(outputs.homologous_topk_accuracy)
    assert result["homologous_contrastive_loss"] == float(outputs.homologous_contrastive_loss)
    assert result["reconstruction_loss"] == float(outputs.reconstruction_loss)
    assert result["homologous_topk_chance"] == 1 / model.config.group_size == 0.25
    # Random pixels: no constant patch, so the foreground split is every query and gives the same accuracy.
    assert result["num_foreground_queries"] == result["num_queries"] == 2 * 64
    assert result["homologous_topk_accuracy_foreground"] == pytest.approx(result["homologous_topk_accuracy"], abs=1e-6)
    # Every source is readable from content: a content recogniser could keep only homologous keys.
    assert result["homologous_topk_ceiling"] == result["homologous_topk_ceiling_foreground"] == 1.0


def test_content_ceiling_on_a_hand_computed_sequence():
    # g = 2, four tokens owned by images 0, 1, 0, 1 (share 2 each). Token 0 is foreground; tokens 1 and 2 are
    # constant with one value (class a: one token of each image), token 3 constant with another (class b: image 1).
    slots = torch.tensor([0, 1, 0, 1])
    foreground = torch.tensor([True, False, False, False])
    values = torch.tensor([[7], [0], [0], [5]])
    bound = content_ceiling(slots, foreground, values, group_size=2)
    # Token 0 keeps itself, then one key of class a, which is image 0's with probability 1/2: (1 + 1/2) / 2.
    # Class a queries: half of them are image 0's, half image 1's, so 1/2; the only class b query: 1.
    assert bound.tolist() == [0.75, 0.5, 0.5, 1.0]


def test_constant_patch_values_are_equal_exactly_for_equal_constant_patches():
    std = IMAGENET_DEFAULT_STD
    pixel_values = torch.full((1, 3, 8, 8), -0.3)
    pixel_values[0, 2, 4:, 4:] += (1 / 255) / std[2]  # one uint8 level brighter in the blue channel
    values = constant_patch_values(pixel_values, 4)
    assert torch.equal(values[0, 0], values[0, 1]) and torch.equal(values[0, 0], values[0, 2])
    assert torch.equal(values[0, 3] - values[0, 0], torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("overrides", [dict(homologous_contrastive_target="attention_logits"),
                                       dict(homologous_topk_schedule="linear", homologous_topk_anneal_steps=4)])
def test_probe_reports_the_recognition_designs_own_values(overrides):
    torch.manual_seed(0)
    design = MixedAEForPreTraining(tiny_mixedae_config(**overrides)).train()
    design.set_homologous_training_step(2)  # halfway along a linear schedule: 41 of 65 keys kept
    pixel_values = torch.randn(8, 3, 32, 32)
    result = homologous_probe(design, pixel_values, seed=5)
    design.eval()
    with torch.no_grad():
        outputs = design(pixel_values=pixel_values, noise=noise_for(5, 8, design))
    assert result["homologous_topk_accuracy"] == float(outputs.homologous_topk_accuracy)
    assert result["homologous_contrastive_loss"] == float(outputs.homologous_contrastive_loss)
    assert design.training is False and design.vit.homologous_training_step == 2


def test_foreground_split_counts_exactly_the_non_constant_patches(model):
    # A constant background everywhere; in every image the 16 patches of the top-left quadrant are foreground, plus
    # patch (row 7, col 7) which differs by exactly one uint8 level. Patch (row 7, col 0) differs by a third of a
    # level: constant by definition.
    std = IMAGENET_DEFAULT_STD
    pixel_values = torch.full((8, 3, 32, 32), -0.3)
    pixel_values[:, :, :16, :16] = torch.randn(8, 3, 16, 16)
    pixel_values[:, 1, 28, 28] += (1 / 255) / std[1]
    pixel_values[:, 0, 28, 0] += (1 / 3 / 255) / std[0]
    foreground = foreground_patches(pixel_values, 4)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    expected[7, 7] = True
    assert torch.equal(foreground, expected.flatten().expand(8, -1))

    result = homologous_probe(model, pixel_values, seed=1)
    # mask_ratio 0: every position of a group is kept (by one of its 4 images), so each of the 2 groups has exactly
    # 17 foreground queries.
    assert model.config.num_kept(64) == 64
    assert (result["num_queries"], result["num_foreground_queries"]) == (128, 2 * 17)
    assert 0.0 <= result["homologous_topk_accuracy_foreground"] <= 1.0
    assert result["homologous_topk_chance"] == 0.25
    # The 47 background queries of a group share one value and are dealt over 4 images: together they can do no
    # better than the largest owner's share (above chance 1/4, below 1); foreground queries lose only the slots
    # they must fill with background keys.
    assert 0.25 < result["homologous_topk_ceiling"] < result["homologous_topk_ceiling_foreground"] <= 1.0


def test_other_keys_accuracy_leaves_each_querys_own_key_out_of_both_counts():
    from transformers_mixedae.evaluation.homologous_probe import _accuracy

    # One layer, one group, two queries: [own-image keys kept, keys kept, own key kept].
    counts = torch.tensor([[[[3, 4, 1], [1, 4, 0]]]])
    assert _accuracy(counts) == 4 / 8 and _accuracy(counts, other_keys=True) == pytest.approx(3 / 7)
    first = torch.tensor([[True, False]])
    assert _accuracy(counts, first) == 3 / 4 and _accuracy(counts, first, other_keys=True) == pytest.approx(2 / 3)


def test_a_selection_keeping_only_the_querys_own_key_is_right_for_free_and_nothing_else(model, monkeypatch):
    """What a position-following selection does in the extreme: the all-key accuracy is perfect, the other-keys
    accuracy has no key left to be right about, and the chance level without the own key is (T/g - 1) / (T - 1)."""
    def own_key_only(logits, topk, head_mean=False):
        keep = torch.eye(logits.shape[-1], dtype=torch.bool).expand(logits.shape).clone()
        keep[:, :, 0] = True
        keep[:, :, :, 0] = True
        return keep

    monkeypatch.setattr(modeling_mixedae, "homologous_keep_mask", own_key_only)
    result = homologous_probe(model, torch.randn(8, 3, 32, 32), seed=2)
    assert result["homologous_topk_accuracy"] == 1.0 and result["homologous_own_key_kept"] == 1.0
    assert result["homologous_topk_accuracy_other_keys"] == 0.0
    assert result["homologous_topk_chance_other_keys"] == (64 // 4 - 1) / (64 - 1)


def test_chance_level_is_one_over_the_group_size():
    torch.manual_seed(0)
    model = MixedAEForPreTraining(tiny_mixedae_config(mixing_ratio=0.5))
    assert homologous_probe(model, torch.randn(5, 3, 32, 32))["homologous_topk_chance"] == 0.5  # 4 of 5 used
    assert not can_probe(MixedAEForPreTraining(tiny_mixedae_config(mixing_ratio=1.0, mask_ratio=0.75)))


@pytest.mark.parametrize("training", [True, False])
def test_the_probe_leaves_the_rng_the_mode_and_the_next_step_unchanged(model, training):
    pixel_values = torch.randn(8, 3, 32, 32)
    model.train(training)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    homologous_probe(model, pixel_values, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training == training
    assert all(module.training == training for module in model.modules())
    assert not model.vit.record_homologous_topk_per_query
    assert not hasattr(model.vit, "homologous_topk_query_counts")
    probed = model(pixel_values=pixel_values)  # draws its noise from the global RNG
    torch.manual_seed(11)
    plain = model(pixel_values=pixel_values)
    assert torch.equal(probed.loss, plain.loss) and torch.equal(probed.logits, plain.logits)
    model.train()


def test_the_per_query_diagnostic_changes_no_output_or_gradient(model):
    pixel_values = torch.randn(8, 3, 32, 32)
    noise = noise_for(3, 8, model)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    plain = model(pixel_values=pixel_values, noise=noise)
    plain_grads = torch.autograd.grad(plain.loss, parameters, allow_unused=True)
    model.vit.record_homologous_topk_per_query = True
    try:
        recorded = model(pixel_values=pixel_values, noise=noise)
        counts = model.vit.__dict__.pop("homologous_topk_query_counts")
    finally:
        model.vit.record_homologous_topk_per_query = False
    recorded_grads = torch.autograd.grad(recorded.loss, parameters, allow_unused=True)
    assert len(recorded.to_tuple()) == len(plain.to_tuple())
    for left, right in zip(plain.to_tuple(), recorded.to_tuple()):
        assert torch.equal(left, right)
    for left, right in zip(plain_grads, recorded_grads):
        assert (left is None and right is None) or torch.equal(left, right)
    # (homologous layers, groups, kept queries, [own-image hits, kept keys, heads keeping the query's own key])
    assert counts.shape == (2, 2, 64, 3)
    per_layer = counts[..., 0].sum(dim=(1, 2)).float() / counts[..., 1].sum(dim=(1, 2)).float()
    assert torch.equal(per_layer.mean(), plain.homologous_topk_accuracy)
    assert (counts[..., 2] <= counts[..., 0]).all() and counts[..., 2].max() <= model.config.num_attention_heads


@pytest.mark.parametrize(
    "model_type,overrides,probed",
    [("mixedae", {}, True), ("cae", {}, False),
     ("mixedae", {"config_overrides": TINY_MIXEDAE + ",mixing_ratio=1.0,mask_ratio=0.75"}, False)],
    ids=["mixedae", "cae", "mae_mode"],
)
def test_a_tiny_runs_results_hold_the_probe_keys_only_for_mixedae(tmp_path, model_type, overrides, probed):
    results = run_pretraining(*arguments(tmp_path, model_type=model_type, max_steps=1, **overrides))
    saved = json.loads((tmp_path / "all_results.json").read_text())
    for key in PROBE_KEYS:
        assert (key in saved) == probed, key
    if probed:
        assert 0.0 <= saved["eval_homologous_topk_accuracy"] <= 1.0
        assert 0.0 <= saved["eval_homologous_topk_accuracy_foreground"] <= 1.0
        assert saved["eval_homologous_contrastive_loss"] > 0
        assert saved == pytest.approx(results)


def test_cli_probes_a_saved_folder(tmp_path):
    torch.manual_seed(0)
    model = MixedAEForPreTraining(tiny_mixedae_config(image_size=16))
    model.save_pretrained(tmp_path)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY / "src")}
    completed = subprocess.run(
        [sys.executable, "-m", "transformers_mixedae.evaluation.homologous_probe", str(tmp_path),
         "--num_images", "8", "--seed", "4"],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["num_queries"] == 2 * 16 and result["homologous_topk_chance"] == 0.25
    assert 0 < result["num_foreground_queries"] < result["num_queries"]  # Fashion-MNIST has uniform background
    for key in ("homologous_topk_accuracy", "homologous_topk_accuracy_foreground"):
        assert 0.0 <= result[key] <= 1.0


@pytest.mark.parametrize("segment_embedding", ["encoder", "decoder"])
def test_cli_without_segment_embedding_probes_the_model_with_them_removed(tmp_path, segment_embedding, capsys):
    torch.manual_seed(0)
    model = MixedAEForPreTraining(tiny_mixedae_config(image_size=16, segment_embedding=segment_embedding)).eval()
    with torch.no_grad():  # large enough to change which keys the top-k keeps
        for embedding in (model.vit.embeddings.segment_embeddings, model.decoder.segment_embeddings):
            if embedding is not None:
                embedding.weight.normal_(std=5.0)
    model.save_pretrained(tmp_path)
    probed = main([str(tmp_path), "--num_images", "8", "--seed", "4", "--without_segment_embedding"])
    model.vit.embeddings.segment_embeddings = model.decoder.segment_embeddings = None
    pixel_values, image_std = validation_batch(8, 16)
    assert probed == pytest.approx(homologous_probe(model, pixel_values, seed=4, image_std=image_std))
    assert probed != pytest.approx(main([str(tmp_path), "--num_images", "8", "--seed", "4"]))
    capsys.readouterr()
