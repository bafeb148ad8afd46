"""MixedAE: parity with ViTMAE, the invariants of mixing and homologous attention, attention backends, save/load,
training, errors."""

import math
import re

import pytest
import torch
from helpers import tiny_mae_mode_overrides, tiny_mixedae_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from transformers_mixedae import (
    MixedAEConfig,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
    MixedAEMixing,
    MixedAEModel,
    mixing_assignment,
)
from transformers_mixedae.models.modeling_mixedae import (
    HomologousAttentionContext,
    homologous_contrastive_loss,
    homologous_keep_mask,
    homologous_attention_path,
    homologous_topk_attention_forward,
)
from transformers_mixedae.models import modeling_mixedae

IMAGE = 32
PATCH = 4
NUM_PATCHES = (IMAGE // PATCH) ** 2


def randomise_(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Give every tensor (frozen tables included) a non-trivial value so that every term matters."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model


def pixels(batch_size: int = 8, size: int = IMAGE) -> torch.Tensor:
    return torch.randn(batch_size, 3, size, size)


# ---------------------------------------------------------------------------------------------- MAE parity
def saved_vit_mae(tmp_path, norm_pix_loss: bool):
    config = ViTMAEConfig(
        image_size=IMAGE,
        patch_size=PATCH,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=20,
        mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss,
    )
    reference = randomise_(ViTMAEForPreTraining(config)).eval()
    reference.save_pretrained(tmp_path / "vit_mae")
    return reference, tmp_path / "vit_mae"


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_mode_equals_transformers_vit_mae(tmp_path, norm_pix_loss):
    reference, path = saved_vit_mae(tmp_path, norm_pix_loss)
    model = MixedAEForPreTraining.from_pretrained(
        path, norm_pix_loss=norm_pix_loss, **tiny_mae_mode_overrides()
    ).eval()
    assert isinstance(model.config, MixedAEConfig)
    assert model.config.layer_norm_eps == reference.config.layer_norm_eps
    images, noise = pixels(), torch.rand(8, NUM_PATCHES)
    with torch.no_grad():
        expected, actual = reference(images, noise=noise), model(images, noise=noise)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.mask, expected.mask)
    torch.testing.assert_close(actual.ids_restore, expected.ids_restore)


def test_vit_mae_checkpoint_keeps_mixedae_defaults_and_overrides(tmp_path):
    _, path = saved_vit_mae(tmp_path, norm_pix_loss=False)
    model, info = MixedAEForPreTraining.from_pretrained(path, output_loading_info=True)
    assert model.config.mixing_ratio == 0.25 and model.config.mask_ratio == 0.0 and model.config.norm_pix_loss
    # Everything the ViTMAE checkpoint holds is used; only MixedAE's own segment table is new.
    assert info["missing_keys"] == {"vit.embeddings.segment_embeddings.weight"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]

    overridden = MixedAEForPreTraining.from_pretrained(path, mixing_ratio=0.5, homologous_topk=5)
    assert overridden.config.mixing_ratio == 0.5 and overridden.config.homologous_topk == 5


def test_vit_mae_checkpoint_with_other_shapes_raises(tmp_path):
    _, path = saved_vit_mae(tmp_path, norm_pix_loss=False)
    with pytest.raises(RuntimeError, match="size mismatch|mismatch"):
        MixedAEForPreTraining.from_pretrained(path, config=tiny_mixedae_config(hidden_size=64))


# ---------------------------------------------------------------------------------------------- mixing invariants
@pytest.mark.parametrize("group_size,mask_ratio", [(1, 0.75), (2, 0.0), (4, 0.0), (4, 0.5)])
def test_every_image_owns_an_equal_share_and_mixing_is_a_bijection(group_size, mask_ratio):
    num_groups = 3
    num_kept = round(NUM_PATCHES * (1 - mask_ratio))
    mixing = MixedAEMixing.from_noise(torch.rand(num_groups, NUM_PATCHES), group_size, num_kept)

    shown = 1 - mixing.loss_mask()
    assert torch.equal(shown.sum(dim=1), torch.full((num_groups * group_size,), num_kept / group_size))
    # Within a group, the images show disjoint positions that together are exactly the kept set.
    per_group = shown.view(num_groups, group_size, NUM_PATCHES)
    assert per_group.sum(dim=1).max() == 1
    kept = torch.zeros(num_groups, NUM_PATCHES).scatter_(1, mixing.ids_keep, 1.0)
    assert torch.equal(per_group.sum(dim=1), kept)
    # The assignment derived from ids_restore says the same.
    owner = mixing_assignment(mixing.ids_restore, num_kept, group_size)
    for slot in range(group_size):
        assert torch.equal((owner == slot).float(), per_group[:, slot])


def test_mix_then_unmix_returns_each_images_own_tokens():
    group_size, num_groups, dim = 4, 2, 5
    mixing = MixedAEMixing.from_noise(torch.rand(num_groups, NUM_PATCHES), group_size, NUM_PATCHES)
    tokens = torch.randn(num_groups * group_size, NUM_PATCHES, dim)
    mixed = mixing.mix(tokens)
    assert mixed.shape == (num_groups, NUM_PATCHES, dim)
    mask_token = torch.full((1, 1, dim), float("nan"))
    restored = mixing.unmix(mixed, mask_token)
    shown = (1 - mixing.loss_mask()).bool()
    assert torch.equal(restored[shown], tokens[shown])
    assert torch.isnan(restored[~shown]).all()
    # The mixed sample at a kept position holds the owner's patch at that same position (nothing moves).
    owner = mixing_assignment(mixing.ids_restore, NUM_PATCHES, group_size)
    for group in range(num_groups):
        for t, position in enumerate(mixing.ids_keep[group].tolist()):
            assert torch.equal(mixed[group, t], tokens[group * group_size + owner[group, position], position])


def test_encoder_token_count_at_quarter_mixing_equals_mae_at_075_masking():
    mixed_model = MixedAEForPreTraining(tiny_mixedae_config())
    mae_model = MixedAEForPreTraining(tiny_mixedae_config(**tiny_mae_mode_overrides()))
    images = pixels(8)
    mixed = mixed_model(images, output_hidden_states=True).hidden_states[0]
    mae = mae_model(images, output_hidden_states=True).hidden_states[0]
    # Patch tokens through the encoder: B/g sequences of N versus B sequences of N/4 (plus one [CLS] each).
    assert mixed.shape[0] * (mixed.shape[1] - 1) == mae.shape[0] * (mae.shape[1] - 1)
    assert mixed.shape == (2, 1 + NUM_PATCHES, 32) and mae.shape == (8, 1 + NUM_PATCHES // 4, 32)


def test_outputs_have_documented_shapes():
    model = MixedAEForPreTraining(tiny_mixedae_config())
    outputs = model(pixels(8), output_hidden_states=True, output_attentions=True)
    assert outputs.logits.shape == (8, NUM_PATCHES, PATCH * PATCH * 3)
    assert outputs.mask.shape == (8, NUM_PATCHES) and outputs.ids_restore.shape == (2, NUM_PATCHES)
    assert outputs.mask.sum(dim=1).eq(NUM_PATCHES * 3 / 4).all()
    assert len(outputs.hidden_states) == 3 and len(outputs.attentions) == 2
    assert outputs.attentions[0].shape == (2, 4, 1 + NUM_PATCHES, 1 + NUM_PATCHES)
    assert 0.0 <= outputs.homologous_topk_accuracy.item() <= 1.0
    assert torch.isfinite(outputs.homologous_contrastive_loss)
    expected = outputs.reconstruction_loss + 0.1 * outputs.homologous_contrastive_loss
    torch.testing.assert_close(outputs.loss, expected)


def test_same_noise_gives_identical_outputs_and_noise_changes_them():
    model = MixedAEForPreTraining(tiny_mixedae_config()).eval()
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    first, second = model(images, noise=noise), model(images, noise=noise)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.loss, second.loss)
    other = model(images, noise=torch.rand(2, NUM_PATCHES))
    assert not torch.equal(first.mask, other.mask)


def test_segment_embedding_tags_each_token_with_its_source_images_slot():
    model = randomise_(MixedAEForPreTraining(tiny_mixedae_config()))
    weight = model.vit.embeddings.segment_embeddings.weight
    assert weight.shape == (4, 32)
    without = MixedAEForPreTraining(tiny_mixedae_config(segment_embedding="none"))
    assert without.vit.embeddings.segment_embeddings is None
    without.load_state_dict(model.state_dict(), strict=False)
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    mixing = MixedAEMixing.from_noise(noise, group_size=4, num_kept=NUM_PATCHES // 4)
    with torch.no_grad():
        added = model.vit.embeddings(images, mixing=mixing) - without.vit.embeddings(images, mixing=mixing)
        # The source image of every mixed token, read back through `mix` from tokens that hold their image's index.
        image_index = torch.arange(8.0)[:, None, None].expand(8, NUM_PATCHES, 1)
        source_slot = mixing.mix(image_index)[..., 0].long() % 4  # (B/g, num_kept)
    assert source_slot.unique().tolist() == [0, 1, 2, 3]
    assert torch.equal(added[:, 0], torch.zeros_like(added[:, 0]))  # [CLS] belongs to no image
    torch.testing.assert_close(added[:, 1:], weight[source_slot].detach(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- homologous attention
def test_topk_at_least_number_of_keys_equals_global_attention():
    num_keys = 1 + NUM_PATCHES // 1
    config = tiny_mixedae_config(homologous_contrastive_weight=0.0, homologous_topk=num_keys)
    model = randomise_(MixedAEForPreTraining(config)).eval()
    global_model = MixedAEForPreTraining(tiny_mixedae_config(homologous_attention_layers=[])).eval()
    global_model.load_state_dict(model.state_dict())
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    with torch.no_grad():
        torch.testing.assert_close(model(images, noise=noise).logits, global_model(images, noise=noise).logits)


def test_topk_attention_keeps_exactly_k_keys_and_cls_attends_everywhere():
    query, key, value = torch.randn(3, 2, 9, 4), torch.randn(3, 2, 9, 4), torch.randn(3, 2, 9, 4)
    segment_ids = torch.tensor([-1, 0, 1, 0, 1, 0, 1, 0, 1]).expand(3, -1)
    context = HomologousAttentionContext(segment_ids=segment_ids, topk=3)
    module = torch.nn.Module()
    _, weights = homologous_topk_attention_forward(module, query, key, value, None, 0.5, 0.0, context)
    assert torch.equal((weights[:, :, 1:] > 0).sum(-1), torch.full((3, 2, 8), 3))
    assert (weights[:, :, 0] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 9))


def test_topk_accuracy_is_one_when_keys_are_separable_by_source():
    # Queries and keys of slot s point along axis s, so each patch query's largest logits are its own image's.
    segment_ids = torch.tensor([-1, 0, 1, 0, 1, 0, 1]).expand(2, -1)
    directions = torch.eye(4)[(segment_ids.clamp(min=0) + 1)]
    directions[:, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    query = key = (10 * directions).unsqueeze(1)
    context = HomologousAttentionContext(segment_ids=segment_ids, topk=3)
    homologous_topk_attention_forward(torch.nn.Module(), query, key, key, None, 1.0, 0.0, context)
    assert context.topk_accuracies[0].item() == 1.0


@pytest.mark.parametrize("homologous_layers", [None, []])
def test_eager_and_sdpa_agree(homologous_layers):
    config = tiny_mixedae_config(homologous_attention_layers=homologous_layers)
    eager = randomise_(MixedAEForPreTraining(config)).eval()
    sdpa = MixedAEForPreTraining(tiny_mixedae_config(homologous_attention_layers=homologous_layers,
                                                     attn_implementation="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    with torch.no_grad():
        expected, actual = eager(images, noise=noise), sdpa(images, noise=noise)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=0)
    features = MixedAEModel(tiny_mixedae_config(attn_implementation="sdpa")).eval()
    features.load_state_dict(eager.vit.state_dict())
    torch.testing.assert_close(features(images).last_hidden_state, eager.vit(images).last_hidden_state,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", [None, "single_pass", "sdpa_mask"])
def test_homologous_attention_sdpa_path_matches_eager_in_values_gradients_and_kept_keys(path):
    config = tiny_mixedae_config()
    eager = randomise_(MixedAEForPreTraining(config)).train()
    sdpa = MixedAEForPreTraining(tiny_mixedae_config(attn_implementation="sdpa")).train()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.vit.homologous_attention_path = path
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    expected, actual = eager(images, noise=noise), sdpa(images, noise=noise)
    expected.loss.backward()
    actual.loss.backward()
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=0)
    assert actual.homologous_topk_accuracy.item() == expected.homologous_topk_accuracy.item()
    for (name, reference), parameter in zip(eager.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(parameter.grad, reference.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_output_attentions_gives_homologous_weights_under_sdpa():
    config = tiny_mixedae_config(attn_implementation="sdpa", homologous_topk=5)
    model = randomise_(MixedAEForPreTraining(config)).eval()
    mixing = model.draw_mixing(config.group_size, NUM_PATCHES, torch.rand(1, NUM_PATCHES))
    with torch.no_grad():
        attentions = model.vit(pixels(config.group_size), mixing=mixing, output_attentions=True).attentions
    assert len(attentions) == config.num_hidden_layers and all(weights is not None for weights in attentions)
    kept_per_patch_query = (attentions[0][:, :, 1:] > 0).sum(-1)
    assert torch.equal(kept_per_patch_query, torch.full_like(kept_per_patch_query, 5))


def test_homologous_attention_path_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert homologous_attention_path("eager", cpu) == homologous_attention_path("eager", cuda) == "single_pass"
    # Measured equal on CPU: the tie goes to the path that stores no (L, L) probabilities (see the docstring).
    assert homologous_attention_path("sdpa", cpu) == homologous_attention_path("sdpa", cuda) == "sdpa_mask"
    assert homologous_attention_path("sdpa", cpu, logits_need_gradient=True) == "single_pass"
    assert homologous_attention_path("sdpa", cuda, need_weights=True) == "single_pass"
    assert homologous_attention_path("sdpa", cuda, has_attention_mask=True) == "single_pass"


def reference_topk_attention(query, key, value, scaling, topk):
    """Straightforward homologous attention: full logits, each patch query's k-th largest by a full sort, logits
    below it set to -inf ([CLS] keeps all), softmax, values."""
    logits = query @ key.transpose(-1, -2) * scaling
    kth = logits.detach().sort(dim=-1, descending=True).values[..., topk - 1 : topk]
    kth[:, :, 0] = float("-inf")
    weights = torch.softmax(logits.masked_fill(logits.detach() < kth, float("-inf")), dim=-1)
    return (weights @ value).transpose(1, 2), weights


@pytest.mark.parametrize("implementation,need_weights,path", [
    ("eager", False, None), ("sdpa", False, None), ("sdpa", True, None),
    ("sdpa", False, "single_pass"), ("sdpa", False, "sdpa_mask"), ("eager", False, "sdpa_mask"),
])
def test_every_homologous_attention_path_equals_the_reference(implementation, need_weights, path):
    query, key, value = (torch.randn(3, 2, 9, 4, requires_grad=True) for _ in range(3))
    segment_ids = torch.tensor([-1, 0, 1, 0, 1, 0, 1, 0, 1]).expand(3, -1)
    module = torch.nn.Module()
    module.config = MixedAEConfig(attn_implementation=implementation)
    context = HomologousAttentionContext(segment_ids=segment_ids, topk=3, need_weights=need_weights, path=path)
    output, weights = homologous_topk_attention_forward(module, query, key, value, None, 0.5, 0.0, context)
    gradients = torch.autograd.grad(output.square().sum(), (query, key, value))
    expected, expected_weights = reference_topk_attention(query, key, value, 0.5, 3)
    expected_gradients = torch.autograd.grad(expected.square().sum(), (query, key, value))
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=0)
    for gradient, expected_gradient in zip(gradients, expected_gradients):
        torch.testing.assert_close(gradient, expected_gradient, atol=1e-5, rtol=0)
    kept = expected_weights[:, :, 1:, 1:] > 0
    same_source = segment_ids[:, None, 1:, None] == segment_ids[:, None, None, 1:]
    assert context.topk_accuracies[0].item() == ((kept & same_source).sum() / kept.sum()).item()
    if (path or homologous_attention_path(implementation, query.device, need_weights)) == "sdpa_mask":
        assert weights is None
    else:
        assert torch.equal(weights > 0, expected_weights > 0)


def test_homologous_attention_gives_gradient_only_to_kept_logits(monkeypatch):
    query, key, value = (torch.randn(2, 2, 9, 4) for _ in range(3))
    segment_ids = torch.tensor([-1, 0, 1, 0, 1, 0, 1, 0, 1]).expand(2, -1)
    logits = (query @ key.transpose(-1, -2) * 0.5).requires_grad_()
    # The single pass reads its logits from `attention_logits`: hand it a leaf tensor to read the gradient from.
    monkeypatch.setattr(modeling_mixedae, "attention_logits", lambda *args: logits)
    context = HomologousAttentionContext(segment_ids=segment_ids, topk=3)
    output, weights = homologous_topk_attention_forward(torch.nn.Module(), query, key, value, None, 0.5, 0.0, context)
    output.square().sum().backward()
    assert torch.equal(logits.grad != 0, weights.detach() > 0)


def test_keep_mask_keeps_exactly_k_keys_of_the_largest_logits_even_with_ties():
    logits = torch.randint(0, 4, (2, 3, 9, 9)).float()  # many ties at the k-th value
    keep = homologous_keep_mask(logits, 4)
    assert keep[:, :, 0].all()  # the [CLS] query keeps every key
    assert (keep[:, :, 1:].sum(dim=-1) == 4).all()
    kth_largest = logits.sort(dim=-1, descending=True).values[..., 3:4]
    patch_rows = (slice(None), slice(None), slice(1, None))
    assert keep[patch_rows][(logits > kth_largest)[patch_rows]].all()  # every key above the k-th value
    assert not keep[patch_rows][(logits < kth_largest)[patch_rows]].any()  # none below it
    assert not keep.requires_grad


def test_head_mean_keep_mask_is_the_topk_of_the_head_averaged_logits_shared_by_every_head():
    # Head 0 ranks key 1 first, head 1 ranks key 2 first; their mean ranks key 3 first (second in both heads).
    logits = torch.tensor([[[0.0, 9.0, 0.0, 6.0], [0.0, 0.0, 9.0, 6.0]]]).view(1, 2, 1, 4).expand(1, 2, 4, 4)
    keep = homologous_keep_mask(logits, 1, head_mean=True)
    assert keep.shape == (1, 1, 4, 4)
    assert keep[0, 0, 1:].tolist() == [[False, False, False, True]] * 3
    assert keep[0, 0, 0].all()  # [CLS] keeps every key
    per_head = homologous_keep_mask(logits, 1)
    assert per_head[0, :, 1].tolist() == [[False, True, False, False], [False, False, True, False]]


@pytest.mark.parametrize("target", ["attention_logits", "queries_keys"])
def test_head_mean_selection_trains_the_head_averaged_scores_the_selection_reads(target):
    query, key, value = (torch.randn(1, 2, 7, 3) for _ in range(3))
    sources = [0, 1, 2, 0, 1, 2]
    context = HomologousAttentionContext(segment_ids=torch.tensor([[-1, *sources]]), topk=3, head_mean_selection=True,
                                         contrastive_target=target, contrastive_temperature=0.5)
    _, weights = homologous_topk_attention_forward(torch.nn.Module(), query, key, value, None, 0.25, 0.0, context)
    q, k = query[0, :, 1:], key[0, :, 1:]
    if target == "attention_logits":
        scores = (q @ k.transpose(-1, -2) * 0.25).mean(0)
    else:
        unit_q, unit_k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
        scores = (unit_q @ unit_k.transpose(-1, -2) / 0.5).mean(0)
    expected = hand_supervised_info_nce(scores.tolist(), sources)
    assert context.contrastive_losses[0].item() == pytest.approx(expected, rel=1e-5)
    # Both heads attend to the same keys: the 3 largest head-averaged logits of each patch query.
    mean_logits = (query[0] @ key[0].transpose(-1, -2) * 0.25).mean(0)
    expected_keep = mean_logits >= mean_logits.sort(dim=-1, descending=True).values[:, 2:3]
    for head in range(2):
        assert torch.equal(weights[0, head, 1:] > 0, expected_keep[1:])


# ---------------------------------------------------------------------------------------------- contrastive loss
def test_homologous_contrastive_loss_is_low_for_separated_sources_and_high_for_swapped():
    segment_ids = torch.tensor([[0, 1, 0, 1, 0, 1]])
    separated = torch.nn.functional.one_hot(segment_ids, 2).float()
    swapped = torch.nn.functional.one_hot(1 - torch.tensor([[0, 0, 1, 1, 0, 1]]), 2).float()
    low = homologous_contrastive_loss(separated, segment_ids, temperature=0.1)
    high = homologous_contrastive_loss(swapped, segment_ids, temperature=0.1)
    # Two positives at similarity 1 and three negatives at 0: -log(e^10 / (2 e^10 + 3)).
    torch.testing.assert_close(low, torch.tensor(-math.log(math.exp(10) / (2 * math.exp(10) + 3))))
    assert high > low + 1.0


def test_contrastive_loss_absent_for_mae_mode_and_weight_zero_has_no_effect_on_loss():
    mae = MixedAEForPreTraining(tiny_mixedae_config(**tiny_mae_mode_overrides()))
    assert mae(pixels(4)).homologous_contrastive_loss is None
    outputs = MixedAEForPreTraining(tiny_mixedae_config(homologous_contrastive_weight=0.0))(pixels(8))
    assert outputs.homologous_contrastive_loss is not None
    assert torch.equal(outputs.loss, outputs.reconstruction_loss)


# ---------------------------------------------------------------------------------------------- recognition designs
def hand_supervised_info_nce(scores: list[list[float]], sources: list[int]) -> float:
    """The supervised InfoNCE, one anchor at a time with Python floats: each anchor averages -log softmax over the
    other tokens at its positives (other tokens of its source); the mean over anchors."""
    losses = []
    for i, row in enumerate(scores):
        others = [j for j in range(len(row)) if j != i]
        log_normaliser = math.log(sum(math.exp(row[j]) for j in others))
        positives = [j for j in others if sources[j] == sources[i]]
        losses.append(-sum(row[j] - log_normaliser for j in positives) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("target", ["attention_logits", "queries_keys"])
def test_attention_contrastive_terms_equal_a_hand_computed_case(target):
    query, key, value = (torch.randn(1, 2, 7, 3) for _ in range(3))
    sources = [0, 1, 2, 0, 1, 2]
    segment_ids = torch.tensor([[-1, *sources]])
    context = HomologousAttentionContext(segment_ids=segment_ids, topk=3, contrastive_target=target,
                                         contrastive_temperature=0.5)
    homologous_topk_attention_forward(torch.nn.Module(), query, key, value, None, 0.25, 0.0, context)
    expected = []
    for head in range(2):
        q, k = query[0, head, 1:], key[0, head, 1:]
        if target == "attention_logits":
            scores = (q @ k.T * 0.25).tolist()
        else:
            scores = (torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).T / 0.5)
            scores = scores.tolist()
        expected.append(hand_supervised_info_nce(scores, sources))
    assert len(context.contrastive_losses) == 1
    assert context.contrastive_losses[0].item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_attention_logits_target_trains_every_patch_logit_not_only_the_kept_ones(monkeypatch):
    query, key, value = (torch.randn(2, 2, 9, 4) for _ in range(3))
    segment_ids = torch.tensor([-1, 0, 1, 0, 1, 0, 1, 0, 1]).expand(2, -1)
    logits = (query @ key.transpose(-1, -2) * 0.5).requires_grad_()
    monkeypatch.setattr(modeling_mixedae, "attention_logits", lambda *args: logits)
    context = HomologousAttentionContext(segment_ids=segment_ids, topk=3, contrastive_target="attention_logits")
    _, weights = homologous_topk_attention_forward(torch.nn.Module(), query, key, value, None, 0.5, 0.0, context)
    context.contrastive_losses[0].backward()
    patch_gradient = logits.grad[:, :, 1:, 1:]
    off_diagonal = ~torch.eye(8, dtype=torch.bool)
    assert (patch_gradient[..., off_diagonal] != 0).all()  # kept and dropped keys alike
    assert (weights[:, :, 1:, 1:] == 0).any()  # some of them were dropped by the selection
    assert (logits.grad[:, :, 0, :] == 0).all() and (logits.grad[:, :, :, 0] == 0).all()  # [CLS] takes no part


@pytest.mark.parametrize("target", ["attention_logits", "queries_keys"])
def test_attention_contrastive_target_enters_the_loss_and_reaches_the_homologous_layers_only(target):
    config = tiny_mixedae_config(homologous_contrastive_target=target, homologous_attention_layers=[1],
                                 homologous_contrastive_weight=0.5)
    model = randomise_(MixedAEForPreTraining(config)).train()
    outputs = model(pixels(8), noise=torch.rand(2, NUM_PATCHES))
    torch.testing.assert_close(outputs.loss, outputs.reconstruction_loss + 0.5 * outputs.homologous_contrastive_loss)
    attention = {name: module for name, module in model.named_modules() if name.endswith("attention.k_proj")}
    outputs.homologous_contrastive_loss.backward()
    assert attention["vit.layers.1.attention.k_proj"].weight.grad.abs().sum() > 0
    # Layer 1 reads layer 0's output, so layer 0 gets gradient too; the decoder and layer 1's values do not.
    assert attention["vit.layers.0.attention.k_proj"].weight.grad.abs().sum() > 0
    assert model.vit.layers[1].attention.v_proj.weight.grad is None
    assert all(parameter.grad is None for parameter in model.decoder.parameters())
    without_weight = MixedAEForPreTraining(tiny_mixedae_config(homologous_contrastive_target=target,
                                                               homologous_contrastive_weight=0.0))
    outputs = without_weight(pixels(8))
    assert outputs.homologous_contrastive_loss.grad_fn is None and torch.equal(outputs.loss, outputs.reconstruction_loss)


@pytest.mark.parametrize("selection", ["per_head", "head_mean"])
def test_attention_contrastive_target_is_the_same_on_every_path(selection):
    design = dict(homologous_contrastive_target="attention_logits", homologous_selection=selection)
    eager = randomise_(MixedAEForPreTraining(tiny_mixedae_config(**design))).train()
    sdpa = MixedAEForPreTraining(tiny_mixedae_config(**design, attn_implementation="sdpa")).train()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.vit.homologous_attention_path = "sdpa_mask"  # recomputes the logits for the contrastive term
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    expected, actual = eager(images, noise=noise), sdpa(images, noise=noise)
    torch.testing.assert_close(actual.homologous_contrastive_loss, expected.homologous_contrastive_loss, atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=0)
    assert actual.homologous_topk_accuracy.item() == expected.homologous_topk_accuracy.item()
    expected.loss.backward()
    actual.loss.backward()
    for (name, reference), parameter in zip(eager.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(parameter.grad, reference.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_decoder_segment_embedding_tells_the_decoder_and_not_the_encoder():
    model = randomise_(MixedAEForPreTraining(tiny_mixedae_config(segment_embedding="decoder"))).train()
    assert model.vit.embeddings.segment_embeddings is None
    assert tuple(model.decoder.segment_embeddings.weight.shape) == (4, 16)
    without = MixedAEForPreTraining(tiny_mixedae_config(segment_embedding="none")).train()
    missing, unexpected = without.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected == ["decoder.segment_embeddings.weight"]
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    outputs, reference = model(images, noise=noise), without(images, noise=noise)
    torch.testing.assert_close(outputs.homologous_contrastive_loss, reference.homologous_contrastive_loss)
    assert not torch.allclose(outputs.logits, reference.logits)
    outputs.loss.backward()
    # Every slot's row gets gradient: each image's decoder sequence carries its slot's embedding.
    assert (model.decoder.segment_embeddings.weight.grad.abs().sum(-1) > 0).all()


def test_projection_head_sits_between_encoder_output_and_contrastive_term():
    config = tiny_mixedae_config(homologous_projection_dim=8)
    model = randomise_(MixedAEForPreTraining(config)).train()
    assert [module.out_features for module in model.homologous_projection if hasattr(module, "out_features")] == [32, 8]
    assert MixedAEForPreTraining(tiny_mixedae_config()).homologous_projection is None
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    outputs = model(images, noise=noise)
    latent = model.vit(images, mixing=model.draw_mixing(8, NUM_PATCHES, noise)).last_hidden_state
    expected = homologous_contrastive_loss(model.homologous_projection(latent[:, 1:]),
                                           torch.arange(NUM_PATCHES).expand(2, -1) % 4, 0.1)
    torch.testing.assert_close(outputs.homologous_contrastive_loss, expected)
    outputs.homologous_contrastive_loss.backward()
    assert all(parameter.grad.abs().sum() > 0 for parameter in model.homologous_projection.parameters())
    # Downstream classes load the encoder and leave the head out.
    classifier_keys = MixedAEForImageClassification(config).state_dict().keys()
    assert not any("homologous_projection" in name for name in classifier_keys)


def test_linear_topk_schedule_goes_from_every_key_to_k():
    config = tiny_mixedae_config(homologous_topk_schedule="linear", homologous_topk_anneal_steps=10)
    # 64 kept positions + [CLS] = 65 keys; k = 64 / 4 + 1 = 17.
    assert [config.resolved_homologous_topk(NUM_PATCHES, step) for step in (0, 5, 10, 50)] == [65, 41, 17, 17]
    assert config.resolved_homologous_topk(NUM_PATCHES) == 17  # no step: the schedule's end
    assert tiny_mixedae_config().resolved_homologous_topk(NUM_PATCHES, 0) == 17  # "constant" ignores the step
    model = randomise_(MixedAEForPreTraining(config)).eval()
    global_model = MixedAEForPreTraining(tiny_mixedae_config(homologous_attention_layers=[])).eval()
    global_model.load_state_dict(model.state_dict())
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    model.set_homologous_training_step(0)
    with torch.no_grad():
        torch.testing.assert_close(model(images, noise=noise).logits, global_model(images, noise=noise).logits)
        model.set_homologous_training_step(10)
        assert not torch.allclose(model(images, noise=noise).logits, global_model(images, noise=noise).logits)
    with pytest.raises(ValueError, match="step=-1 must be >= 0"):
        model.set_homologous_training_step(-1)


def test_linear_topk_schedule_without_a_step_counts_training_forwards(caplog):
    model = MixedAEForPreTraining(
        tiny_mixedae_config(homologous_topk_schedule="linear", homologous_topk_anneal_steps=10)
    ).train()
    model(pixels(8))
    model(pixels(8))
    assert model.vit.homologous_training_step == 1
    with torch.no_grad():
        model(pixels(8))  # evaluation forwards do not count
    assert model.vit.homologous_training_step == 1
    model.set_homologous_training_step(7)
    model(pixels(8))
    assert model.vit.homologous_training_step == 7


# ---------------------------------------------------------------------------------------------- training
def test_one_step_changes_every_trainable_parameter():
    model = MixedAEForPreTraining(tiny_mixedae_config())
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(pixels(8)).loss.backward()
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[name])]
    assert unchanged == []
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"}


@pytest.mark.parametrize("overrides", [{}, dict(homologous_contrastive_target="attention_logits"),
                                       dict(homologous_contrastive_target="queries_keys")])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(overrides):
    # The attention-side contrastive terms are side outputs of the checkpointed layers: their gradient must survive.
    model = randomise_(MixedAEForPreTraining(tiny_mixedae_config(**overrides)))
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    model(images, noise=noise).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model.train()
    model(images, noise=noise).loss.backward()
    for name, parameter in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(parameter.grad, expected[name], atol=1e-6, rtol=1e-5)


def test_a_new_classifier_starts_as_maes_fine_tuning_starts_it(tmp_path):
    # MAE's main_finetune.py: trunc_normal_(head.weight, std=2e-5), zero bias; from scratch and from a checkpoint.
    MixedAEForPreTraining(tiny_mixedae_config()).save_pretrained(tmp_path)
    for model in (MixedAEForImageClassification(tiny_mixedae_config(num_labels=1000)),
                  MixedAEForImageClassification.from_pretrained(tmp_path, num_labels=1000)):
        weight = model.classifier.weight
        assert 1.8e-5 < weight.std().item() < 2.2e-5 and weight.abs().max().item() < 2e-4
        assert not model.classifier.bias.any()


def test_classification_head_trains_with_labels():
    model = MixedAEForImageClassification(tiny_mixedae_config(num_labels=3))
    outputs = model(pixels(4), labels=torch.tensor([0, 1, 2, 1]))
    assert outputs.logits.shape == (4, 3) and outputs.loss.ndim == 0
    outputs.loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    cls_model = MixedAEForImageClassification(tiny_mixedae_config(num_labels=3, classifier_pooling="cls"))
    assert cls_model.fc_norm is None and cls_model(pixels(2)).logits.shape == (2, 3)


# ---------------------------------------------------------------------------------------------- initialisation
def test_fresh_model_has_sincos_tables_and_the_meta_load_path_agrees(tmp_path):
    model = MixedAEForPreTraining(tiny_mixedae_config())
    table = model.vit.embeddings.position_embeddings
    assert table[0, 0].abs().sum() == 0 and table[0, 1:].abs().sum() > 0
    assert model.decoder.decoder_pos_embed[0, 1:].abs().sum() > 0
    # Position (row 0, col 1): MAE's layout puts the column in the first half.
    assert table[0, 2, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    # A checkpoint without the tables (meta-device path) gets the same tables, and everything else is finite.
    state = {k: v for k, v in model.state_dict().items() if "pos_embed" not in k and "position_embeddings" not in k}
    model.save_pretrained(tmp_path / "m", state_dict=state)
    reloaded = MixedAEForPreTraining.from_pretrained(tmp_path / "m")
    assert torch.equal(reloaded.vit.embeddings.position_embeddings, table)
    assert torch.equal(reloaded.decoder.decoder_pos_embed, model.decoder.decoder_pos_embed)


def test_initialisation_follows_mae():
    model = MixedAEForPreTraining(tiny_mixedae_config())
    projection = model.vit.embeddings.patch_embeddings.projection
    fan_in, fan_out = projection.weight[0].numel(), projection.weight.shape[0]
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    # xavier-uniform over the flattened kernel: bounded by, and spread up to, the bound (std = bound / sqrt(3)).
    assert projection.weight.abs().max() <= bound and projection.weight.abs().max() > 0.9 * bound
    assert projection.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert torch.equal(projection.bias, torch.zeros_like(projection.bias))
    query = model.vit.layers[0].attention.q_proj.weight
    linear_bound = math.sqrt(6.0 / sum(query.shape))
    assert query.abs().max() <= linear_bound and query.abs().max() > 0.9 * linear_bound
    assert model.vit.embeddings.cls_token.std().item() == pytest.approx(0.02, rel=0.3)


def test_missing_weights_are_initialised_sensibly_on_the_meta_path():
    config = tiny_mixedae_config()
    model = MixedAEForPreTraining.from_pretrained(None, config=config, state_dict={})
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all() and tensor.abs().max() < 10, name
    assert model.vit.embeddings.cls_token.std() > 0


# ---------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("model_class", [MixedAEModel, MixedAEForPreTraining, MixedAEForImageClassification])
def test_save_load_round_trip_is_exact_for_every_class_and_auto(tmp_path, model_class):
    config = tiny_mixedae_config(num_labels=3)
    model = randomise_(model_class(config)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    auto_class = {
        MixedAEModel: AutoModel,
        MixedAEForPreTraining: AutoModelForPreTraining,
        MixedAEForImageClassification: AutoModelForImageClassification,
    }[model_class]
    assert type(AutoConfig.from_pretrained(tmp_path)) is MixedAEConfig
    loaded_models = (
        model_class.from_pretrained(tmp_path, attn_implementation="eager"),
        auto_class.from_pretrained(tmp_path, attn_implementation="eager"),
    )
    for loaded in loaded_models:
        assert type(loaded) is model_class
        for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name
        kwargs = {"noise": torch.rand(2, NUM_PATCHES)} if model_class is MixedAEForPreTraining else {}
        images = pixels(8)
        with torch.no_grad():
            expected, actual = model(images, **kwargs), loaded.eval()(images, **kwargs)
        key = "last_hidden_state" if model_class is MixedAEModel else "logits"
        assert torch.equal(expected[key], actual[key])


def test_pretrained_encoder_loads_into_downstream_classes_without_missing_encoder_weights(tmp_path):
    pretraining = randomise_(MixedAEForPreTraining(tiny_mixedae_config(num_labels=3)))
    pretraining.save_pretrained(tmp_path)
    encoder, info = MixedAEModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and all(k.startswith("decoder.") for k in info["unexpected_keys"])
    classifier, info = MixedAEForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not key.startswith("vit.") for key in info["missing_keys"])
    # MAE's fine-tuning with mean pooling: the final norm and the mixing-only segment embeddings stay behind.
    assert {key for key in info["unexpected_keys"] if key.startswith("vit.")} == {
        "vit.layernorm.weight", "vit.layernorm.bias", "vit.embeddings.segment_embeddings.weight"}
    images = pixels(2)
    with torch.no_grad():
        # Downstream the encoder runs with global attention on unmixed images: same features as the pre-trained
        # encoder run without mixing (here before the final norm, which mean pooling replaces by fc_norm).
        torch.testing.assert_close(encoder(images).last_hidden_state, pretraining.vit(images).last_hidden_state)
        expected = encoder(images, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(classifier.vit(images).last_hidden_state, expected)
    assert torch.equal(encoder.embeddings.segment_embeddings.weight, pretraining.vit.embeddings.segment_embeddings.weight)


def test_interpolate_pos_encoding_runs_other_resolutions():
    model = MixedAEForPreTraining(tiny_mixedae_config()).eval()
    outputs = model(pixels(8, size=48), interpolate_pos_encoding=True)
    assert outputs.logits.shape == (8, 144, 48)
    features = model.vit(pixels(2, size=48), interpolate_pos_encoding=True)
    assert features.last_hidden_state.shape == (2, 145, 32)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    model = MixedAEForPreTraining(tiny_mixedae_config())
    with pytest.raises(ValueError, match="has 1 channels but the model expects num_channels=3"):
        model(torch.randn(8, 1, IMAGE, IMAGE))
    with pytest.raises(ValueError, match=r"Input image size \(48\*48\) doesn't match model \(32\*32\).*interpolate_pos_encoding"):
        model(pixels(8, size=48))
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the group size 4"):
        model(pixels(6))
    with pytest.raises(ValueError, match=r"`noise` must have shape .* \(2, 64\), got \(8, 64\)"):
        model(pixels(8), noise=torch.rand(8, NUM_PATCHES))
    with pytest.raises(ValueError, match="divisible by the patch size"):
        model(pixels(8, size=34), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="has 4 channels"):
        MixedAEModel(tiny_mixedae_config())(torch.randn(2, 4, IMAGE, IMAGE))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(image_size=30), "image_size=30 is not divisible by patch_size=4"),
        (dict(mixing_ratio=0.3), "1/mixing_ratio must be an integer.*mixing_ratio=0.3"),
        (dict(mixing_ratio=0.0), "mixing_ratio=0.0 must be in"),
        (dict(mask_ratio=1.0), r"mask_ratio=1.0 must be in \[0, 1\)"),
        (dict(mask_ratio=-0.1), r"mask_ratio=-0.1 must be in \[0, 1\)"),
        (dict(mask_ratio=0.7), "the 19 kept positions .* not divisible by the group size 4"),
        (dict(hidden_size=30, num_attention_heads=5), "hidden_size=30 is not divisible by 4"),
        (dict(hidden_size=36, num_attention_heads=8), "hidden_size=36 is not divisible by num_attention_heads=8"),
        (dict(decoder_hidden_size=18, decoder_num_attention_heads=4), "decoder_hidden_size=18 is not divisible"),
        (dict(homologous_topk=0), r"homologous_topk=0 must be in \[1, 65\]"),
        (dict(homologous_topk=66), r"homologous_topk=66 must be in \[1, 65\]"),
        (dict(homologous_attention_layers=[0, 2]), r"homologous_attention_layers=\[0, 2\] has indices \[2\]"),
        (dict(segment_embedding="both"), "segment_embedding='both' must be 'encoder', 'decoder' or 'none'"),
        (dict(homologous_contrastive_target="logits"), "homologous_contrastive_target='logits' must be one of"),
        (dict(homologous_contrastive_target="attention_logits", homologous_attention_layers=[]),
         r"homologous_contrastive_target='attention_logits' is computed in the homologous attention layers, but "
         r"homologous_attention_layers=\[\] has none"),
        (dict(homologous_projection_dim=0), "homologous_projection_dim=0 must be a positive width"),
        (dict(homologous_projection_dim=8, homologous_contrastive_target="queries_keys"),
         "homologous_projection_dim=8 projects the encoder output, but homologous_contrastive_target='queries_keys'"),
        (dict(homologous_topk_schedule="cosine"), "homologous_topk_schedule='cosine' must be 'constant' or 'linear'"),
        (dict(homologous_selection="mean"), "homologous_selection='mean' must be 'per_head'"),
        (dict(homologous_topk_schedule="linear"),
         "homologous_topk_schedule='linear' needs homologous_topk_anneal_steps > 0"),
        (dict(homologous_topk_anneal_steps=-1), "homologous_topk_anneal_steps=-1 must be >= 0"),
        (dict(homologous_contrastive_temperature=0.0), "homologous_contrastive_temperature=0.0 must be > 0"),
        (dict(homologous_contrastive_weight=-1.0), "homologous_contrastive_weight=-1.0 must be >= 0"),
        (dict(classifier_pooling="max"), "classifier_pooling='max'"),
    ],
)
def test_bad_config_values_raise_naming_field_and_value(overrides, message):
    # transformers' strict config dataclasses wrap the ValueError raised by a validator.
    with pytest.raises(Exception, match=message) as error:
        tiny_mixedae_config(**overrides)
    assert "ValueError" in str(error.value) or isinstance(error.value, ValueError)


def test_config_type_errors_name_the_field():
    with pytest.raises(Exception, match="mixing_ratio"):
        tiny_mixedae_config(mixing_ratio="half")


def test_config_round_trips_through_json(tmp_path):
    config = tiny_mixedae_config(homologous_attention_layers=[1], homologous_topk=7, mixing_ratio=0.5)
    config.save_pretrained(tmp_path)
    loaded = MixedAEConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.resolved_homologous_attention_layers() == [1] and loaded.group_size == 2
    designs = tiny_mixedae_config(segment_embedding="decoder", homologous_projection_dim=8,
                                  homologous_topk_schedule="linear", homologous_topk_anneal_steps=100,
                                  homologous_selection="head_mean")
    designs.save_pretrained(tmp_path / "designs")
    assert MixedAEConfig.from_pretrained(tmp_path / "designs").to_dict() == designs.to_dict()
    # A config.json written before the recognition fields existed loads with today's behaviour.
    old = {key: value for key, value in config.to_dict().items() if not key.startswith(
        ("homologous_contrastive_target", "homologous_projection", "homologous_topk_schedule", "homologous_topk_anneal",
         "homologous_selection"))}
    assert len(old) == len(config.to_dict()) - 5
    restored = MixedAEConfig.from_dict(old)
    assert (restored.homologous_contrastive_target, restored.homologous_projection_dim,
            restored.homologous_topk_schedule, restored.homologous_selection) == (
        "encoder_output", None, "constant", "per_head")


# ---------------------------------------------------------------------------------------------- input dtypes
def _outputs_for_dtypes(model_class):
    model = randomise_(model_class(tiny_mixedae_config(num_labels=3))).eval()
    images, noise = pixels(8), torch.rand(2, NUM_PATCHES)
    kwargs = {"noise": noise} if model_class is MixedAEForPreTraining else {}
    first_output = (lambda out: out.logits) if model_class is not MixedAEModel else (lambda out: out.last_hidden_state)
    with torch.no_grad():
        results = {dtype: model(images.to(dtype), **kwargs) for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
    return {dtype: first_output(out) for dtype, out in results.items()}, results, model, images


@pytest.mark.parametrize("model_class", [MixedAEModel, MixedAEForPreTraining, MixedAEForImageClassification])
def test_float64_and_half_pixel_values_are_cast_to_the_model_dtype(model_class):
    outputs, results, model, images = _outputs_for_dtypes(model_class)
    assert all(output.dtype == torch.float32 for output in outputs.values())
    # float64 -> float32 is exact for float32-representable values: the same result as the float32 input.
    assert torch.equal(outputs[torch.float64], outputs[torch.float32])
    if model_class is MixedAEForPreTraining:
        torch.testing.assert_close(results[torch.float64].loss, results[torch.float32].loss, rtol=1e-6, atol=1e-6)
    # Half precision loses input precision only.
    torch.testing.assert_close(outputs[torch.float16], outputs[torch.float32], rtol=0.02, atol=0.02)
    torch.testing.assert_close(outputs[torch.bfloat16], outputs[torch.float32], rtol=0.1, atol=0.1)


@pytest.mark.parametrize("model_class", [MixedAEModel, MixedAEForPreTraining, MixedAEForImageClassification])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_pixel_values_raise_a_clear_error(model_class, dtype):
    model = model_class(tiny_mixedae_config(num_labels=3)).eval()
    message = (
        f"`pixel_values` has dtype {dtype}, but the model takes rescaled and normalised float pixel values: pass the "
        "output of the model's image processor (`processor(images, return_tensors='pt')`)."
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        model(torch.zeros(8, 3, IMAGE, IMAGE, dtype=dtype))


# ---------------------------------------------------------------------------------------------- loading mistakes
def test_loading_a_cae_checkpoint_names_the_file_and_the_right_classes(tmp_path):
    from helpers import tiny_cae_config

    from transformers_mixedae import CAEForPreTraining

    CAEForPreTraining(tiny_cae_config()).save_pretrained(tmp_path)
    message = (
        f"{tmp_path / 'config.json'} describes a model_type='cae' model, but MixedAEConfig loads "
        "model_type='mixedae' only: load it with CAEConfig and its model classes, or with the Auto classes "
        "(AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForImageClassification), which pick the class "
        "from model_type."
    )
    for load in (MixedAEForPreTraining.from_pretrained, MixedAEModel.from_pretrained,
                 MixedAEForImageClassification.from_pretrained, MixedAEConfig.from_pretrained):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            load(tmp_path)
    with pytest.raises(ValueError, match="^" + re.escape("the config dict describes a model_type='cae' model")):
        MixedAEConfig.from_dict(tiny_cae_config().to_dict())
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is CAEForPreTraining


def test_truncated_weights_name_the_file_and_the_fix(tmp_path):
    MixedAEForPreTraining(tiny_mixedae_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = (
        f"cannot load the weights of {tmp_path}: {weights} (Error while deserializing header: incomplete metadata, "
        "file not fully covered) is truncated or corrupt. Download it again (`from_pretrained(..., "
        "force_download=True)` for a Hub model) or save the model again with `save_pretrained`."
    )
    for load in (MixedAEForPreTraining.from_pretrained, MixedAEModel.from_pretrained,
                 MixedAEForImageClassification.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(OSError, match="^" + re.escape(message) + "$"):
            load(tmp_path)


# ---------------------------------------------------------------------------------------------- checkpoint keys
# The weight names of every class for a one-layer tiny config, frozen: a change here breaks every saved checkpoint.
MIXEDAE_LAYER_KEYS = [
    "layernorm_before.weight", "layernorm_before.bias",
    "attention.q_proj.weight", "attention.q_proj.bias", "attention.k_proj.weight", "attention.k_proj.bias",
    "attention.v_proj.weight", "attention.v_proj.bias", "attention.o_proj.weight", "attention.o_proj.bias",
    "layernorm_after.weight", "layernorm_after.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
]
MIXEDAE_ENCODER_KEYS = [
    "embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias", "embeddings.segment_embeddings.weight",
    *(f"layers.0.{key}" for key in MIXEDAE_LAYER_KEYS),
    "layernorm.weight", "layernorm.bias",
]
MIXEDAE_DECODER_KEYS = [
    "decoder.mask_token", "decoder.decoder_pos_embed", "decoder.decoder_embed.weight", "decoder.decoder_embed.bias",
    *(f"decoder.decoder_layers.0.{key}" for key in MIXEDAE_LAYER_KEYS),
    "decoder.decoder_norm.weight", "decoder.decoder_norm.bias",
    "decoder.decoder_pred.weight", "decoder.decoder_pred.bias",
]
MIXEDAE_KEYS = {
    MixedAEModel: MIXEDAE_ENCODER_KEYS,
    MixedAEForPreTraining: [f"vit.{key}" for key in MIXEDAE_ENCODER_KEYS] + MIXEDAE_DECODER_KEYS,
    # Mean pooling (MAE's fine-tuning): no final encoder norm but fc_norm; never mixing: no segment embeddings.
    MixedAEForImageClassification: [f"vit.{key}" for key in MIXEDAE_ENCODER_KEYS
                                    if not key.startswith(("layernorm.", "embeddings.segment_embeddings."))]
    + ["fc_norm.weight", "fc_norm.bias", "classifier.weight", "classifier.bias"],
}


@pytest.mark.parametrize("model_class", list(MIXEDAE_KEYS))
def test_weight_names_are_those_of_saved_checkpoints(model_class):
    config = tiny_mixedae_config(num_hidden_layers=1, decoder_num_hidden_layers=1, num_labels=3)
    assert sorted(model_class(config).state_dict()) == sorted(MIXEDAE_KEYS[model_class])
