# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""PyTorch MixedAE (Mixed Autoencoder, Chen et al., CVPR 2023, arXiv:2303.17152).

MixedAE has no official code. MAE with image mixing as its augmentation, in the order of the forward pass:

1. masking and mixing: g = 1/r consecutive images share one noise draw; the kept positions are dealt to the g images
   in turn, and one mixed sequence per group goes through the encoder (MAE's token count); segment embeddings tell
   each token its slot;
2. encoder: pre-norm ViT with frozen sin-cos positions (MAE layout) and [CLS]; in the homologous layers each patch
   query keeps only its top-k logits, which should select the keys of its own image;
3. unmixing decoder: every image gets its own tokens back, mask tokens elsewhere, MAE's decoder;
4. losses: MAE's masked-patch MSE on each image's own hidden patches + a homologous contrastive term (patch tokens
   of the same image are positives).

With `mixing_ratio=1.0, mask_ratio=0.75`, no homologous layers, contrastive weight 0 and no segment
embedding, the model computes exactly what `transformers.ViTMAEForPreTraining` computes.
"""

from dataclasses import dataclass, field
from functools import partial

import torch
import transformers.initialization as init
from torch import nn
from transformers.backbone_utils import BackboneMixin
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_mixedae import MixedAEConfig
from .modeling_masked_vit import (
    BackboneOnEncoder,
    ImageClassifierOnEncoder,
    MaskedViTPreTrainedModel,
    final_layernorm,
    hub_kwargs,
)
from .vit_layers import (
    ViTEmbeddings,
    ViTLayer,
    attention_from_logits,
    attention_logits,
    drop_path_rates,
    fixed,
    init_linear_and_layernorm,
    interpolate_position_embedding,
    patchify,
    sincos_2d_position_embedding,
    unpatchify,
)

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class MixedAEModelOutput(ModelOutput):
    r"""
    Output of `MixedAEModel`.

    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + sequence_length, hidden_size)`):
        Encoder output after the final LayerNorm. With `mixing`, one row per group of mixed images.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The [CLS] token of `last_hidden_state`.
    homologous_topk_accuracy (`torch.FloatTensor`, *optional*):
        With `mixing`: fraction of the patch keys kept by homologous attention that come from the query's own
        image, averaged over heads and homologous layers.
    homologous_contrastive_loss (`torch.FloatTensor`, *optional*):
        With `mixing` and `homologous_contrastive_target` `"attention_logits"` or `"queries_keys"`: the supervised
        InfoNCE over the homologous layers' logits (or query-key cosines), averaged over heads and layers.
    hidden_states, attentions: as in every transformers model (`attentions` needs `attn_implementation="eager"`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    homologous_topk_accuracy: torch.FloatTensor | None = None
    homologous_contrastive_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MixedAEForPreTrainingOutput(ModelOutput):
    r"""
    Output of `MixedAEForPreTraining`.

    loss (`torch.FloatTensor` of shape `()`):
        `reconstruction_loss + homologous_contrastive_weight * homologous_contrastive_loss`.
    reconstruction_loss (`torch.FloatTensor` of shape `()`):
        MSE on the (normalised) pixels of the patches each image did not show.
    homologous_contrastive_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Supervised InfoNCE between patch tokens of a mixed sequence (same source image = positive). `None`
        without mixing (g = 1) or when an image owns a single token.
    logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`):
        Per-image reconstruction of every patch, images in input order.
    mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
        1 where the patch was not shown to that image (the loss positions), 0 where it was (ViTMAE convention).
    ids_restore (`torch.LongTensor` of shape `(batch_size / g, num_patches)`):
        Per group, the rank of every position in the shuffled order. Position `p` is kept when
        `ids_restore[p] < num_kept` and then belongs to image slot `ids_restore[p] % g` (see `mixing_assignment`).
    homologous_topk_accuracy (`torch.FloatTensor`, *optional*):
        See `MixedAEModelOutput`.
    hidden_states, attentions: encoder hidden states / attentions over the mixed sequences.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    homologous_contrastive_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    homologous_topk_accuracy: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------- 1. masking and mixing
@dataclass
class MixedAEMixing:
    """How a batch of B images is grouped, masked and mixed into B/g sequences.

    All tensors live on the batch's device; every operation is a gather or scatter (no Python loop over
    images or groups).

    Attributes:
        group_size: g, images per mixed sequence.
        num_patches: N, patches per image.
        ids_shuffle: `(B/g, N)` argsort of the group's noise; the first `num_kept` positions are kept.
        ids_restore: `(B/g, N)` inverse permutation of `ids_shuffle`.
        slot_of_kept: `(num_kept,)` which image of the group owns the t-th kept position (t mod g).
    """

    group_size: int
    num_patches: int
    ids_shuffle: torch.Tensor
    ids_restore: torch.Tensor
    slot_of_kept: torch.Tensor

    @classmethod
    def from_noise(cls, noise: torch.Tensor, group_size: int, num_kept: int) -> "MixedAEMixing":
        """Rank positions by `noise` (`(B/g, N)`), keep the `num_kept` smallest, deal them to the g slots in turn."""
        if num_kept % group_size:
            raise ValueError(f"{num_kept} kept positions cannot be shared equally among {group_size} images.")
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        slot_of_kept = torch.arange(num_kept, device=noise.device) % group_size
        return cls(group_size, noise.shape[1], ids_shuffle, ids_restore, slot_of_kept)

    @property
    def num_groups(self) -> int:
        return self.ids_shuffle.shape[0]

    @property
    def num_kept(self) -> int:
        return self.slot_of_kept.shape[0]

    @property
    def ids_keep(self) -> torch.Tensor:
        return self.ids_shuffle[:, : self.num_kept]

    def segment_ids(self) -> torch.Tensor:
        """`(B/g, 1 + num_kept)`: slot of every token of a mixed sequence, -1 for [CLS]."""
        cls_slot = self.slot_of_kept.new_full((1,), -1)
        return torch.cat([cls_slot, self.slot_of_kept]).expand(self.num_groups, -1)

    def mix(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """`(B, N, D)` image tokens -> `(B/g, num_kept, D)` mixed sequences in shuffled order.

        Kept position `ids_keep[t]` holds the token of image `slot_of_kept[t]` at that position; tokens keep
        their own position embedding.
        """
        dim = patch_tokens.shape[-1]
        grouped = patch_tokens.reshape(self.num_groups, self.group_size * self.num_patches, dim)
        index = self.slot_of_kept[None, :] * self.num_patches + self.ids_keep
        return torch.gather(grouped, 1, index.unsqueeze(-1).expand(-1, -1, dim))

    def unmix(self, mixed_tokens: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        """`(B/g, num_kept, D)` -> `(B, N, D)`: each image gets its own kept tokens at their positions and
        `mask_token` everywhere else (MAE's "append mask tokens, then unshuffle", once per image)."""
        batch_size = self.num_groups * self.group_size
        dim = mixed_tokens.shape[-1]
        per_image = mixed_tokens.repeat_interleave(self.group_size, dim=0)
        if self.group_size > 1:
            image_slot = torch.arange(batch_size, device=mixed_tokens.device) % self.group_size
            owned = (image_slot[:, None] == self.slot_of_kept[None, :]).unsqueeze(-1)
            per_image = torch.where(owned, per_image, mask_token.to(per_image.dtype))
        hidden = mask_token.to(per_image.dtype).expand(batch_size, self.num_patches - self.num_kept, dim)
        shuffled = torch.cat([per_image, hidden], dim=1)
        ids_restore = self.ids_restore.repeat_interleave(self.group_size, dim=0)
        return torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))

    def loss_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`(B, N)`: 1 where the image did not show the patch, 0 where it did."""
        batch_size = self.num_groups * self.group_size
        mask = torch.ones(batch_size * self.num_patches, dtype=dtype, device=self.ids_shuffle.device)
        group_index = torch.arange(self.num_groups, device=self.ids_shuffle.device)[:, None]
        shown = (group_index * self.group_size + self.slot_of_kept[None, :]) * self.num_patches + self.ids_keep
        mask[shown.flatten()] = 0
        return mask.view(batch_size, self.num_patches)


def mixing_assignment(ids_restore: torch.Tensor, num_kept: int, group_size: int) -> torch.Tensor:
    """`(B/g, N)` slot that owns each position of a group's mixed sample, -1 where no image shows it."""
    return torch.where(ids_restore < num_kept, ids_restore % group_size, torch.full_like(ids_restore, -1))


# ---------------------------------------------------------------------------------------------- 2. encoder
class MixedAEEmbeddings(ViTEmbeddings):
    """[CLS] token, patch embeddings, frozen sin-cos positions and (for mixing) segment embeddings."""

    def __init__(self, config: MixedAEConfig):
        super().__init__(config)
        if config.segment_embedding == "encoder":
            self.segment_embeddings = nn.Embedding(config.group_size, config.hidden_size)
        else:
            self.segment_embeddings = None

    def forward(
        self,
        pixel_values: torch.Tensor,
        mixing: MixedAEMixing | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        patch_tokens = self.patch_embeddings(pixel_values, interpolate_pos_encoding)  # (B, N, D)
        grid = (pixel_values.shape[2] // self.config.patch_size, pixel_values.shape[3] // self.config.patch_size)
        position_embeddings = interpolate_position_embedding(
            self.position_table(), self.patch_embeddings.grid_size, grid
        )  # (1, 1 + N, D)
        patch_tokens = patch_tokens + position_embeddings[:, 1:, :]
        if mixing is not None:
            patch_tokens = mixing.mix(patch_tokens)  # (B/g, num_kept, D)
            if self.segment_embeddings is not None:
                # Adding the slot's embedding after the gather equals adding it to every patch of that image
                # before mixing, and touches only the kept tokens.
                patch_tokens = patch_tokens + self.segment_embeddings(mixing.slot_of_kept)
        return self.prepend_cls_token(patch_tokens, position_embeddings)


@dataclass
class HomologousAttentionContext:
    """What homologous top-k attention needs to know about a batch of mixed sequences.

    `segment_ids` is `(num_sequences, 1 + num_kept)`: the slot (source image in the group) of every
    token, -1 for [CLS]. `head_mean_selection` picks one set of kept keys per query from the head-averaged logits
    (`homologous_selection="head_mean"`) instead of one per head. `need_weights` asks for the attention weights
    (`output_attentions`), which the fused path does not produce. `path` forces one of
    `HOMOLOGOUS_ATTENTION_PATHS` (benchmarks, tests); `None` follows `homologous_attention_path`. `contrastive_target`
    (`"attention_logits"` or `"queries_keys"`, `None` for none) makes every homologous layer append its supervised
    InfoNCE term to `contrastive_losses` (with gradient when `contrastive_gradient`; `contrastive_temperature` divides
    the query-key cosines). `topk_accuracies` collects, per homologous layer, the fraction of kept patch keys that
    come from the query's own source image (a diagnostic, no gradient). With `per_query`,
    `topk_query_counts` also collects, per homologous layer, `(num_sequences, num_kept, 3)` integer counts for every
    patch query summed over heads: [..., 0] kept patch keys from the query's own image, [..., 1] kept patch keys,
    [..., 2] heads that kept the query's own key (counted in both others) (the per-query diagnostic of
    `evaluation.homologous_probe`; off in training).
    """

    segment_ids: torch.Tensor
    topk: int
    head_mean_selection: bool = False
    need_weights: bool = False
    path: str | None = None
    contrastive_target: str | None = None
    contrastive_temperature: float = 1.0
    contrastive_gradient: bool = True
    contrastive_losses: list[torch.Tensor] = field(default_factory=list)
    topk_accuracies: list[torch.Tensor] = field(default_factory=list)
    per_query: bool = False
    topk_query_counts: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def homologous_keep_mask(logits: torch.Tensor, topk: int, head_mean: bool = False) -> torch.Tensor:
    """`(B, heads, L, L)` boolean mask of the `topk` largest logits of every patch query row; [CLS] keeps all.
    With `head_mean`, `(B, 1, L, L)`: the rows of the logits averaged over the heads, one set shared by every head.

    Selection is not differentiable, so it runs outside autograd. Exactly `topk` keys per row: keeping every key
    tied with the k-th value kept more than k in about 15% of the rows under bf16 autocast, where logits tie often.
    """
    if head_mean:
        logits = logits.mean(dim=1, keepdim=True)
    kept = logits.topk(min(topk, logits.shape[-1]), dim=-1, sorted=False).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kept, True)
    keep[:, :, 0] = True  # the [CLS] query keeps every key
    return keep


# The two ways to run homologous attention; both keep exactly the same keys and give the same values and gradients
# (to float rounding):
# - "single_pass": the logits are computed once, with autograd; the top-k threshold is read from them without
#   gradient, the other logits are set to -inf, softmax, values. Only kept logits get gradient.
# - "sdpa_mask": the logits are computed without autograd for the selection, then a fused SDPA call recomputes
#   them with the selection as boolean mask (two logits passes, but the fused kernel keeps no (L, L) fp32
#   probabilities for the backward pass).
HOMOLOGOUS_ATTENTION_PATHS = ("single_pass", "sdpa_mask")
# MAE's fine-tuning starts the classifier near zero: trunc-normal weights of this std (its `main_finetune.py`).
CLASSIFIER_INIT_STD = 2e-5


def homologous_attention_path(
    implementation: str,
    device: torch.device,
    need_weights: bool = False,
    has_attention_mask: bool = False,
    logits_need_gradient: bool = False,
) -> str:
    """The path of `HOMOLOGOUS_ATTENTION_PATHS` that homologous attention takes, by measurement where measured.

    - `attn_implementation="eager"`, attention weights requested, an additive attention mask, or a contrastive
      term on the attention logits (`logits_need_gradient`): "single_pass" (the eager reference; SDPA returns no
      weights, and its logits are not exposed).
    - otherwise `"sdpa"`: "sdpa_mask", on every device. On this project's CPU (ViT-S/16, batch 8, fp32, 1 thread,
      197-token mixed sequences, k = 50; `benchmarks/microbench_mixedae.py --sections paths,step`) the two paths
      measured equal within noise: one layer's attention fwd+bwd, sdpa_mask / single_pass = 0.97-1.05 over four
      runs; whole training steps 1.01x (sdpa_mask) and 1.04x (single_pass) ViTMAE's. The second logits pass is
      cheap (the top-k selection both paths share costs several times more), so the tie goes to "sdpa_mask": it
      stores no (L, L) fp32 probabilities for the backward pass (the memory that matters at ViT-B/L batch sizes on
      an accelerator) and keeps earlier SDPA runs bit-identical. Not yet measured on an accelerator.
    `device` is part of the signature so that a measured accelerator rule can be added without changing callers.
    """
    if implementation != "sdpa" or need_weights or has_attention_mask or logits_need_gradient:
        return "single_pass"
    return "sdpa_mask"


def homologous_topk_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    homologous: HomologousAttentionContext,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention in which each patch query keeps only its `topk` largest logits per head.

    The [CLS] query (position 0) attends to every key. The path ("single_pass" or "sdpa_mask", see
    `homologous_attention_path`) is `homologous.path` when set, else chosen from the attention implementation,
    the device and whether weights are requested. Both keep exactly the same keys. Inputs
    `(B, heads, L, head_dim)`; returns `(B, L, heads, head_dim)` and the weights (None on the "sdpa_mask" path).
    """
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", "eager")
    path = homologous.path or homologous_attention_path(
        implementation,
        query.device,
        homologous.need_weights,
        attention_mask is not None,
        homologous.contrastive_target == "attention_logits",
    )
    if path not in HOMOLOGOUS_ATTENTION_PATHS:
        raise ValueError(f"homologous attention path {path!r} must be one of {HOMOLOGOUS_ATTENTION_PATHS}.")
    if path == "sdpa_mask":
        if attention_mask is not None:
            raise ValueError("the 'sdpa_mask' homologous attention path takes no additive attention_mask.")
        with torch.no_grad():
            keep = homologous_keep_mask(
                attention_logits(query, key, None, scaling), homologous.topk, homologous.head_mean_selection
            )
        attn_output = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=keep, dropout_p=dropout, scale=scaling
        ).transpose(1, 2).contiguous()
        attn_weights = None
        logits = None
    else:
        logits = attention_logits(query, key, attention_mask, scaling)
        keep = homologous_keep_mask(logits, homologous.topk, homologous.head_mean_selection)
        attn_output, attn_weights = attention_from_logits(
            module, torch.where(keep, logits, float("-inf")), value, dropout
        )
    if homologous.contrastive_target is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and homologous.contrastive_gradient):
            homologous.contrastive_losses.append(
                attention_contrastive_loss(query, key, logits, scaling, homologous)
            )

    with torch.no_grad():
        segment_ids = homologous.segment_ids
        same_source = segment_ids[:, None, 1:, None] == segment_ids[:, None, None, 1:]
        kept_patch_keys = keep[:, :, 1:, 1:]
        homologous.topk_accuracies.append(
            (kept_patch_keys & same_source).sum().float() / kept_patch_keys.sum().clamp(min=1).float()
        )
        if homologous.per_query:
            homologous.topk_query_counts.append(torch.stack([
                (kept_patch_keys & same_source).sum(dim=(1, 3)),
                kept_patch_keys.sum(dim=(1, 3)),
                kept_patch_keys.diagonal(dim1=-2, dim2=-1).sum(dim=1),
            ], -1))
    return attn_output, attn_weights


def attention_contrastive_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    logits: torch.Tensor | None,
    scaling: float,
    homologous: HomologousAttentionContext,
) -> torch.Tensor:
    """Supervised InfoNCE of one homologous layer, per head, over patch queries and patch keys ([CLS] left out).

    `"attention_logits"`: on the attention logits themselves (the `logits` of the single pass, or recomputed), so
    that same-source keys are pushed above the others in exactly the ranking the top-k selection reads.
    `"queries_keys"`: on cosine similarities of queries and keys divided by the temperature (trains their
    directions only). With `head_mean_selection`, on those scores averaged over the heads (what the selection
    reads).
    """
    if homologous.contrastive_target == "attention_logits":
        if logits is None:
            logits = attention_logits(query, key, None, scaling)
        similarity = logits[:, :, 1:, 1:].float()
    else:
        queries = nn.functional.normalize(query[:, :, 1:].float(), dim=-1)
        keys = nn.functional.normalize(key[:, :, 1:].float(), dim=-1)
        similarity = queries @ keys.transpose(-1, -2) / homologous.contrastive_temperature
    if homologous.head_mean_selection:
        similarity = similarity.mean(dim=1, keepdim=True)
    return supervised_info_nce(similarity, homologous.segment_ids[:, None, 1:])


# ---------------------------------------------------------------------------------------------- 3. unmixing decoder
class MixedAEDecoder(nn.Module):
    """MAE's decoder, fed per image: own kept tokens, mask tokens elsewhere, the group's [CLS] first."""

    def __init__(self, config: MixedAEConfig, grid_size: tuple[int, int]):
        super().__init__()
        self.config = config
        self.grid_size = grid_size
        num_patches = grid_size[0] * grid_size[1]
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, config.decoder_hidden_size), requires_grad=False
        )
        self.decoder_layers = nn.ModuleList(
            ViTLayer(
                config,
                config.decoder_hidden_size,
                config.decoder_num_attention_heads,
                config.decoder_intermediate_size,
                dropout=False,
            )
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.num_channels)
        # segment_embedding="decoder": the slot's embedding on every patch token of the image's decoder sequence.
        self.segment_embeddings = (
            nn.Embedding(config.group_size, config.decoder_hidden_size)
            if config.segment_embedding == "decoder"
            else None
        )

    def forward(self, latent: torch.Tensor, mixing: MixedAEMixing, grid: tuple[int, int]) -> torch.Tensor:
        hidden_states = self.decoder_embed(latent)  # (B/g, 1 + num_kept, Dd)
        patch_tokens = mixing.unmix(hidden_states[:, 1:, :], self.mask_token)  # (B, N, Dd)
        if self.segment_embeddings is not None:
            image_slot = torch.arange(patch_tokens.shape[0], device=patch_tokens.device) % mixing.group_size
            patch_tokens = patch_tokens + self.segment_embeddings(image_slot)[:, None, :]
        cls_tokens = hidden_states[:, :1, :].repeat_interleave(mixing.group_size, dim=0)  # (B, 1, Dd)
        hidden_states = torch.cat([cls_tokens, patch_tokens], dim=1)
        positions = interpolate_position_embedding(fixed(self.decoder_pos_embed), self.grid_size, grid)  # (1, 1 + N, Dd)
        hidden_states = hidden_states + positions
        for layer in self.decoder_layers:
            hidden_states = layer(hidden_states, None)
        logits = self.decoder_pred(self.decoder_norm(hidden_states))
        return logits[:, 1:, :]  # (B, N, patch_size**2 * C)


# ---------------------------------------------------------------------------------------------- 4. losses
def masked_reconstruction_loss(
    logits: torch.Tensor, pixel_values: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix_loss: bool
) -> torch.Tensor:
    """MAE's loss: per-patch MSE against (per-patch normalised) pixels, averaged over the masked patches."""
    target = patchify(pixel_values, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((logits.float() - target.float()) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def homologous_contrastive_loss(
    patch_tokens: torch.Tensor, segment_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Supervised InfoNCE over the patch tokens of each mixed sequence.

    `patch_tokens` `(B/g, L, D)`, `segment_ids` `(B/g, L)`. For every token, the other tokens of the same source
    image are positives and the tokens of the other images of the group are negatives; cosine similarity divided
    by `temperature`; each anchor averages the log-likelihood of its positives (Khosla et al., 2020).
    """
    features = nn.functional.normalize(patch_tokens.float(), dim=-1)
    similarity = features @ features.transpose(1, 2) / temperature
    return supervised_info_nce(similarity, segment_ids)


def supervised_info_nce(similarity: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Supervised InfoNCE from `(..., L, L)` similarity scores between tokens whose sources are `segment_ids`
    (`(..., L)`, broadcastable over the leading dimensions): each anchor (row) averages the log-likelihood, under the
    softmax over every other token, of the other tokens of its source; the mean over anchors (and leading dims)."""
    num_tokens = similarity.shape[-1]
    self_pairs = torch.eye(num_tokens, dtype=torch.bool, device=similarity.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))
    log_prob = similarity - similarity.logsumexp(dim=-1, keepdim=True)
    positives = (segment_ids[..., :, None] == segment_ids[..., None, :]) & ~self_pairs
    positive_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=-1) / positives.sum(dim=-1)
    return -positive_log_prob.mean()


# ---------------------------------------------------------------------------------------------- models
class MixedAEPreTrainedModel(MaskedViTPreTrainedModel):
    config: MixedAEConfig
    base_model_prefix = "vit"
    _no_split_modules = ["MixedAEEmbeddings", "ViTLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAE initialisation: xavier-uniform Linear and patch projection (as a Linear), normal(0.02) tokens, frozen
        sin-cos tables; a classifier as MAE's fine-tuning starts it (`CLASSIFIER_INIT_STD`). Every tensor goes through
        `transformers.initialization`, so loaded weights are never touched and the meta-device load path gives the
        same tables as `__init__`."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(self, MixedAEForImageClassification) and module is self.classifier:
            init.trunc_normal_(module.weight, std=CLASSIFIER_INIT_STD)  # timm's bounds (+-2): no truncation here
            init.zeros_(module.bias)
            return
        if init_linear_and_layernorm(module):
            return
        if isinstance(module, nn.Conv2d):
            # The patch projection, initialised as the Linear it is (MAE). Handled at the Conv2d itself: transformers
            # only calls `_init_weights` on modules that own parameters directly, never on `PatchEmbeddings`.
            fan_in, fan_out = module.weight[0].numel(), module.weight.shape[0]
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            init.uniform_(module.weight, -bound, bound)
            init.zeros_(module.bias)
        elif isinstance(module, MixedAEEmbeddings):
            grid = module.patch_embeddings.grid_size
            init.copy_(
                module.position_embeddings,
                sincos_2d_position_embedding(grid[0], grid[1], self.config.hidden_size, row_first=False),
            )
            init.normal_(module.cls_token, std=std)
            if module.segment_embeddings is not None:
                init.normal_(module.segment_embeddings.weight, std=std)
        elif isinstance(module, MixedAEDecoder):
            grid = module.grid_size
            init.copy_(
                module.decoder_pos_embed,
                sincos_2d_position_embedding(grid[0], grid[1], self.config.decoder_hidden_size, row_first=False),
            )
            init.normal_(module.mask_token, std=std)
            if module.segment_embeddings is not None:
                init.normal_(module.segment_embeddings.weight, std=std)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a MixedAE checkpoint, or start from a transformers ViTMAE one (e.g. `facebook/vit-mae-base`).

        For a ViTMAE checkpoint the architecture comes from its config, MixedAE's own fields from their defaults
        or from keyword overrides (`mixing_ratio=...`), and its weights are renamed to MixedAE's (legacy and 5.x
        names). Missing keys (segment embeddings) are initialised and reported in the load report; shape
        mismatches raise.
        """
        if pretrained_model_name_or_path is not None and kwargs.get("config") is None and "key_mapping" not in kwargs:
            source_model_type = _peek_model_type(pretrained_model_name_or_path, kwargs)
            if source_model_type == "vit_mae":
                kwargs["key_mapping"] = VIT_MAE_KEY_MAPPING
                logger.warning(
                    "Loading a ViTMAE checkpoint into %s: encoder and decoder weights are reused, MixedAE fields "
                    "(mixing_ratio, mask_ratio, segment_embedding, homologous_*, norm_pix_loss) take their defaults "
                    "unless passed as keyword arguments.",
                    cls.__name__,
                )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


# ViTMAE checkpoints, as released (legacy names) or as saved by transformers 5.x (which writes the legacy names
# back, the decoder's as `decoder_encoder.layer.N`), renamed to MixedAE's module names.
VIT_MAE_KEY_MAPPING = {
    r"encoder\.layer\.": "layers.",
    r"attention\.attention\.query": "attention.q_proj",
    r"attention\.attention\.key": "attention.k_proj",
    r"attention\.attention\.value": "attention.v_proj",
    r"attention\.output\.dense": "attention.o_proj",
    r"intermediate\.dense": "mlp.fc1",
    r"(?<!attention\.)output\.dense": "mlp.fc2",
}


def _peek_model_type(pretrained_model_name_or_path, kwargs: dict) -> str | None:
    try:
        config_dict, _ = MixedAEConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs(kwargs))
    except OSError:
        return None  # let from_pretrained raise its usual, more detailed error
    return config_dict.get("model_type")


@auto_docstring(custom_intro="The bare MixedAE ViT encoder; on plain images it is a standard ViT with global attention.")
class MixedAEModel(MixedAEPreTrainedModel):
    # Per-query homologous diagnostic (`evaluation.homologous_probe`): when set, a forward with mixing stores
    # `homologous_topk_query_counts`, `(num_homologous_layers, B/g, num_kept, 3)` (see `HomologousAttentionContext`).
    # Off by default; it changes no output and no gradient.
    record_homologous_topk_per_query: bool = False
    # Forces one of `HOMOLOGOUS_ATTENTION_PATHS` ("single_pass", "sdpa_mask") in the homologous layers; `None` follows
    # `homologous_attention_path` (by implementation and device). For benchmarks and tests: both paths keep the same
    # keys and give the same values and gradients.
    homologous_attention_path: str | None = None
    # Optimizer step for `homologous_topk_schedule="linear"` (set by
    # `MixedAEForPreTraining.set_homologous_training_step` or its fallback count); `None`: the schedule's end.
    homologous_training_step: int | None = None

    def __init__(self, config: MixedAEConfig, add_final_layernorm: bool = True):
        r"""
        add_final_layernorm (`bool`, *optional*, defaults to `True`):
            Whether the encoder ends with its LayerNorm. `MixedAEBackbone` drops it: dense heads take the block
            outputs, and a norm no output uses would hold parameters without gradients.
        """
        super().__init__(config)
        self.config = config
        self.embeddings = MixedAEEmbeddings(config)
        self.layers = nn.ModuleList(
            ViTLayer(config, config.hidden_size, config.num_attention_heads, config.intermediate_size, drop_path=rate)
            for rate in drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        )
        self.layernorm = final_layernorm(config, add_final_layernorm)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        mixing: MixedAEMixing | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MixedAEModelOutput:
        r"""
        mixing (`MixedAEMixing`, *optional*):
            Group, mix and apply homologous attention (pre-training). Without it the encoder sees every patch of
            every image with global attention, as downstream.
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Resample the position embeddings to the input resolution.
        """
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        # (B/g, 1 + num_kept, D) with mixing, (B, 1 + N, D) without
        hidden_states = self.embeddings(pixel_values, mixing=mixing, interpolate_pos_encoding=interpolate_pos_encoding)

        homologous = None
        homologous_layers: set[int] = set()
        if mixing is not None:
            homologous_layers = set(self.config.resolved_homologous_attention_layers())
            homologous = HomologousAttentionContext(
                segment_ids=mixing.segment_ids(),
                topk=self.config.resolved_homologous_topk(mixing.num_patches, self.homologous_training_step),
                head_mean_selection=self.config.homologous_selection == "head_mean",
                need_weights=bool(kwargs.get("output_attentions", self.config.output_attentions)),
                per_query=self.record_homologous_topk_per_query,
                path=self.homologous_attention_path,
            )
            target = self.config.homologous_contrastive_target
            if target != "encoder_output" and mixing.group_size > 1 and mixing.num_kept // mixing.group_size > 1:
                homologous.contrastive_target = target
                homologous.contrastive_temperature = self.config.homologous_contrastive_temperature
                homologous.contrastive_gradient = self.config.homologous_contrastive_weight > 0
        for index, layer in enumerate(self.layers):
            if index in homologous_layers:
                attention = partial(homologous_topk_attention_forward, homologous=homologous)
                hidden_states = layer(hidden_states, None, attention_function=attention, **kwargs)
            else:
                hidden_states = layer(hidden_states, None, **kwargs)
        sequence_output = self.layernorm(hidden_states)

        topk_accuracy = None
        if homologous is not None and homologous.topk_accuracies:
            topk_accuracy = torch.stack(homologous.topk_accuracies).mean()
        if homologous is not None and homologous.topk_query_counts:
            self.homologous_topk_query_counts = torch.stack(homologous.topk_query_counts)
        contrastive_loss = None
        if homologous is not None and homologous.contrastive_losses:
            contrastive_loss = torch.stack(homologous.contrastive_losses).mean()
        return MixedAEModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            homologous_topk_accuracy=topk_accuracy,
            homologous_contrastive_loss=contrastive_loss,
        )


@auto_docstring(custom_intro="MixedAE with its unmixing decoder, for self-supervised pre-training.")
class MixedAEForPreTraining(MixedAEPreTrainedModel):
    def __init__(self, config: MixedAEConfig):
        super().__init__(config)
        self.config = config
        self.vit = MixedAEModel(config)
        self.decoder = MixedAEDecoder(config, self.vit.embeddings.patch_embeddings.grid_size)
        # Pre-training only: a projection head between the encoder output and the contrastive term.
        self.homologous_projection = None
        if config.homologous_projection_dim is not None:
            self.homologous_projection = nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size),
                nn.GELU(),
                nn.Linear(config.hidden_size, config.homologous_projection_dim),
            )
        self._training_forwards = 0  # the schedule's fallback step count (see `set_homologous_training_step`)
        self._training_step_is_set = False
        self.post_init()

    def set_homologous_training_step(self, step: int) -> None:
        """Tell the model the optimizer step, for `homologous_topk_schedule="linear"`.

        As `Wav2Vec2ForPreTraining.set_gumbel_temperature`, the training loop calls it before every step with
        the number of optimizer steps done, so the schedule follows optimizer steps and is exact after a resume.
        A model whose step is never set counts its own training forward passes (train mode, gradients on) from
        0 instead, with a warning: that count restarts at 0 on resume and counts micro-batches under gradient
        accumulation.
        """
        if step < 0:
            raise ValueError(f"set_homologous_training_step: step={step} must be >= 0.")
        self.vit.homologous_training_step = int(step)
        self._training_step_is_set = True

    def _homologous_schedule_fallback(self) -> None:
        if self.config.homologous_topk_schedule == "constant" or self._training_step_is_set:
            return
        if self.training and torch.is_grad_enabled():
            if self._training_forwards == 0:
                logger.warning(
                    "homologous_topk_schedule='linear' but the training loop never called "
                    "set_homologous_training_step(step): counting training forward passes instead (restarts at 0 "
                    "on resume, counts micro-batches under gradient accumulation)."
                )
            self.vit.homologous_training_step = self._training_forwards
            self._training_forwards += 1

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return patchify(pixel_values, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        height, width = image_size if image_size is not None else self.config.image_hw
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        return unpatchify(patches, self.config.patch_size, grid, self.config.num_channels)

    def draw_mixing(
        self, batch_size: int, num_patches: int, noise: torch.Tensor | None = None, device=None
    ) -> MixedAEMixing:
        """Group the batch, draw (or take) one noise row per group and build the mixing."""
        group_size = self.config.group_size
        if batch_size % group_size:
            raise ValueError(
                f"batch size {batch_size} is not divisible by the group size {group_size} "
                f"(1/mixing_ratio, mixing_ratio={self.config.mixing_ratio}): use a per-device batch size that is a "
                f"multiple of {group_size} and drop the last incomplete batch (`drop_last=True`)."
            )
        num_groups = batch_size // group_size
        if noise is None:
            noise = torch.rand(num_groups, num_patches, device=device)
        elif tuple(noise.shape) != (num_groups, num_patches):
            raise ValueError(
                f"`noise` must have shape (batch_size / group_size, num_patches) = ({num_groups}, {num_patches}), "
                f"got {tuple(noise.shape)}."
            )
        num_kept = self.config.num_kept(num_patches)
        if num_kept % group_size or num_kept == 0:
            raise ValueError(
                f"{num_patches} patches with mask_ratio={self.config.mask_ratio} keep {num_kept} positions, which "
                f"cannot be shared equally among {group_size} images: choose another image size or mask_ratio."
            )
        return MixedAEMixing.from_noise(noise.to(device), group_size, num_kept)

    def forward_loss(
        self,
        pixel_values: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor,
        latent: torch.Tensor,
        mixing: MixedAEMixing,
        attention_contrastive_loss: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`(loss, reconstruction_loss, homologous_contrastive_loss)`: MSE on the patches each image did not show
        (`mask`, `(B, N)`), plus the weighted contrastive loss when every image owns at least two tokens: between
        the patch tokens of each mixed sequence (`latent`, `(B/g, 1 + num_kept, D)`) for the `"encoder_output"`
        target, else the encoder's own term over the homologous layers (`attention_contrastive_loss`)."""
        reconstruction_loss = masked_reconstruction_loss(
            logits, pixel_values, mask, self.config.patch_size, self.config.norm_pix_loss
        )
        loss = reconstruction_loss
        contrastive_loss = None
        if mixing.group_size > 1 and mixing.num_kept // mixing.group_size > 1:
            weight = self.config.homologous_contrastive_weight
            if self.config.homologous_contrastive_target == "encoder_output":
                with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
                    patch_tokens = latent[:, 1:, :]
                    if self.homologous_projection is not None:
                        patch_tokens = self.homologous_projection(patch_tokens)
                    contrastive_loss = homologous_contrastive_loss(
                        patch_tokens,
                        mixing.slot_of_kept.expand(mixing.num_groups, -1),
                        self.config.homologous_contrastive_temperature,
                    )
            else:
                contrastive_loss = attention_contrastive_loss
            if weight > 0 and contrastive_loss is not None:
                loss = loss + weight * contrastive_loss
        return loss, reconstruction_loss, contrastive_loss

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MixedAEForPreTrainingOutput:
        r"""
        noise (`torch.Tensor` of shape `(batch_size / g, num_patches)`, *optional*):
            One row per group of g = 1/mixing_ratio consecutive images; its argsort orders the positions (kept
            first, dealt to the images in turn). Pass it for deterministic outputs.
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Resample the position embeddings to the input resolution.

        Example:

        ```python
        >>> import torch
        >>> from transformers_mixedae import MixedAEConfig, MixedAEForPreTraining
        >>> config = MixedAEConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2,
        ...     num_attention_heads=4, intermediate_size=128, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        ...     decoder_num_attention_heads=4, decoder_intermediate_size=64)
        >>> model = MixedAEForPreTraining(config)
        >>> outputs = model(torch.randn(8, 3, 32, 32))
        >>> outputs.logits.shape
        torch.Size([8, 64, 48])
        ```
        """
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.vit.embeddings.patch_embeddings.check_pixel_values(pixel_values, interpolate_pos_encoding)
        grid = (pixel_values.shape[2] // self.config.patch_size, pixel_values.shape[3] // self.config.patch_size)
        mixing = self.draw_mixing(pixel_values.shape[0], grid[0] * grid[1], noise, device=pixel_values.device)
        self._homologous_schedule_fallback()

        encoder_outputs: MixedAEModelOutput = self.vit(
            pixel_values, mixing=mixing, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        latent = encoder_outputs.last_hidden_state  # (B/g, 1 + num_kept, D)
        logits = self.decoder(latent, mixing, grid)  # (B, N, patch_size**2 * C)
        mask = mixing.loss_mask()  # (B, N)
        loss, reconstruction_loss, contrastive_loss = self.forward_loss(
            pixel_values, logits, mask, latent, mixing, encoder_outputs.homologous_contrastive_loss
        )

        return MixedAEForPreTrainingOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            homologous_contrastive_loss=contrastive_loss,
            logits=logits,
            mask=mask,
            ids_restore=mixing.ids_restore,
            homologous_topk_accuracy=encoder_outputs.homologous_topk_accuracy,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


# ---------------------------------------------------------------------------------------------- downstream
@auto_docstring(custom_intro="MixedAE encoder with a linear classifier on the mean patch token (+ fc_norm) or [CLS].")
class MixedAEForImageClassification(ImageClassifierOnEncoder, MixedAEPreTrainedModel):
    def __init__(self, config: MixedAEConfig):
        super().__init__(config)
        # MAE's fine-tuning: mean pooling drops the encoder's final LayerNorm for a new `fc_norm` (a checkpoint's
        # `vit.layernorm` is then reported as unused); [CLS] pooling keeps it.
        self.vit = MixedAEModel(config, add_final_layernorm=config.classifier_pooling != "mean")
        # A classifier never mixes: segment embeddings would be parameters without gradients, which DDP refuses.
        self.vit.embeddings.segment_embeddings = None
        self.vit.embeddings.train_positions()  # MAE's fine-tuning trains the position table it starts from
        self.add_classification_head(config)
        self.post_init()


@auto_docstring(
    custom_intro="MixedAE encoder as a transformers backbone: feature maps of chosen layers on whole images (no "
    "mixing, global attention), for dense heads such as UperNet; optionally the multi-scale adapter (strides 4-32)."
)
class MixedAEBackbone(BackboneOnEncoder, BackboneMixin, MixedAEPreTrainedModel):
    def __init__(self, config: MixedAEConfig):
        super().__init__(config)
        self.vit = MixedAEModel(config, add_final_layernorm=False)
        # A backbone never mixes, so the segment embeddings would be parameters without gradients (DDP errors on
        # them); a checkpoint's copy is reported as unused, like the decoder.
        self.vit.embeddings.segment_embeddings = None
        self.vit.embeddings.train_positions()  # as in fine-tuning (MAE's dense transfer trains it too)
        self.add_backbone_neck(config)
        self.post_init()


__all__ = [
    "MixedAEBackbone",
    "MixedAEForImageClassification",
    "MixedAEForPreTraining",
    "MixedAEMixing",
    "MixedAEModel",
    "MixedAEPreTrainedModel",
    "mixing_assignment",
]
