# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Homologous-recognition probe of a MixedAE model: how often homologous top-k attention keeps keys from the query's
own image, over all patch queries and over foreground queries only.

Constant patches (Fashion-MNIST's black border) are identical across images: no content-based recogniser can tell
whose such patch a query is, so the all-query accuracy mixes what the model recognises with what nobody can. The
foreground split measures recognition where it is possible, and the content ceiling says how far any recogniser of
patch content could go on the probed batch.

Probe a saved folder (the first validation images of the bundled dataset by default; prints JSON)::

    python -m transformers_mixedae.evaluation.homologous_probe path/to/run [--num_images 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence

import torch

from .eval_mode import eval_mode

# A patch is *constant* (background) when, in every channel, max - min of its un-normalised pixels (in [0, 1]) is
# below half a uint8 level: at uint8 precision, all its pixels are equal.
CONSTANT_PATCH_THRESHOLD = 0.5 / 255
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def can_probe(model: torch.nn.Module) -> bool:
    """True for a MixedAE pre-training model that mixes (g >= 2) and has homologous attention layers."""
    model = getattr(model, "_orig_mod", model)
    config = getattr(model, "config", None)
    return (
        getattr(config, "group_size", 1) >= 2
        and hasattr(config, "resolved_homologous_attention_layers")
        and bool(config.resolved_homologous_attention_layers())
        and hasattr(model, "draw_mixing")
    )


def _patch_pixels(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, N, C, p*p)` float32: each patch's pixels per channel, patches in raster order."""
    batch, channels, height, width = pixel_values.shape
    patches = pixel_values.float().reshape(batch, channels, height // patch_size, patch_size, width // patch_size,
                                           patch_size)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels, patch_size * patch_size)


def foreground_patches(
    pixel_values: torch.Tensor,
    patch_size: int,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    threshold: float = CONSTANT_PATCH_THRESHOLD,
) -> torch.Tensor:
    """`(B, N)` boolean, raster order: True where the patch is **not** constant.

    `pixel_values` `(B, C, H, W)` are normalised (`(x - mean) / std`, x in [0, 1]); normalisation is affine per
    channel, so the un-normalised range of a patch is its normalised range times `image_std`. A patch is constant when
    that range is below `threshold` in every channel.
    """
    patches = _patch_pixels(pixel_values, patch_size)
    value_range = patches.amax(dim=-1) - patches.amin(dim=-1)  # (B, N, C)
    std = torch.as_tensor(image_std, dtype=value_range.dtype, device=value_range.device)
    return (value_range * std >= threshold).any(dim=-1)


def constant_patch_values(pixel_values: torch.Tensor, patch_size: int,
                          image_std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """`(B, N, C)` integers: each patch's mean in uint8 levels up to a per-channel offset, so that two constant patches
    get equal rows exactly when their pixels are equal (the normalisation mean is not needed for that)."""
    means = _patch_pixels(pixel_values, patch_size).mean(dim=-1)  # (B, N, C)
    std = torch.as_tensor(image_std, dtype=means.dtype, device=means.device)
    return torch.round(means * std * 255).long()


def content_ceiling(slot_of_kept: torch.Tensor, foreground: torch.Tensor, values: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """`(T,)`: per query, an upper bound of the homologous top-k accuracy that any recogniser reading only patch
    content can reach on one mixed sequence.

    `slot_of_kept` `(T,)` names each kept token's image, `foreground` `(T,)` says whether it is non-constant and
    `values` `(T, C)` is its constant value (`constant_patch_values`). The recogniser is granted every non-constant
    token's source. Constant tokens of equal value are interchangeable across images (positions are dealt at random,
    so they carry no source either), so:

    - a foreground query of image i keeps its own non-constant tokens, then fills the rest of its own share (T/g
      patch keys; the [CLS] key is granted on top) from the constant value classes in decreasing order of image i's
      share of each class (an oracle of those shares: still an upper bound);
    - a constant query of class v is indistinguishable from every other query of class v: whatever keys they keep,
      their mean accuracy is at most max_j n_vj / n_v, the share of the most frequent image of v.
    """
    num_tokens = slot_of_kept.shape[0]
    share = num_tokens // group_size
    slots = slot_of_kept.tolist()
    class_of = {}
    counts: dict[tuple, list[int]] = {}
    for token in range(num_tokens):
        if not foreground[token]:
            class_of[token] = tuple(values[token].tolist())
            counts.setdefault(class_of[token], [0] * group_size)[slots[token]] += 1
    foreground_bound = []
    for image in range(group_size):
        free = share - sum(1 for token in range(num_tokens) if foreground[token] and slots[token] == image)
        hits = float(share - free)
        for count in sorted(counts.values(), key=lambda count: count[image] / sum(count), reverse=True):
            taken = min(free, sum(count))
            hits += taken * count[image] / sum(count)
            free -= taken
        foreground_bound.append(hits / share)
    return torch.tensor([
        foreground_bound[slots[token]] if foreground[token] else max(counts[class_of[token]]) / sum(
            counts[class_of[token]])
        for token in range(num_tokens)
    ])


@torch.no_grad()
def homologous_probe(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    seed: int = 0,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    threshold: float = CONSTANT_PATCH_THRESHOLD,
) -> dict[str, float]:
    """Homologous recognition of `model` (a `MixedAEForPreTraining`) on a fixed batch with fixed mixing noise.

    `pixel_values` `(B, C, H, W)` are normalised with std `image_std` (the evaluation transform's); the last
    `B mod g` images are dropped. The noise is drawn from a CPU `torch.Generator` seeded with `seed`. Runs without
    gradient, in eval mode (the previous mode is restored) and on a forked RNG (training draws the same numbers with
    or without the probe).

    Returns:
        `homologous_topk_accuracy`: the model's own `homologous_topk_accuracy` (over every patch query);
        `homologous_topk_accuracy_foreground`: the same over foreground queries only, i.e. queries whose patch is not
        constant in its image (max - min of its un-normalised pixels below `threshold` in every channel; see
        `foreground_patches`), NaN when there is none; per homologous layer the fraction of kept patch keys
        (summed over heads and queries) from the query's image, averaged over layers, as the model does;
        `homologous_topk_chance`: 1/g, the accuracy of keys drawn at random;
        `homologous_topk_accuracy_other_keys` and `homologous_topk_accuracy_other_keys_foreground`: the same two
        with each query's own key left out of the kept and the homologous keys (a selection that follows position
        keeps it, and is right about it for free), `homologous_topk_chance_other_keys`: their chance level
        (T/g - 1) / (T - 1) for T kept patches per mixed sequence; `homologous_own_key_kept`: the fraction of
        (query, selection head, layer) triples that kept the query's own key;
        `homologous_topk_ceiling` and `homologous_topk_ceiling_foreground`: the most a recogniser of patch content
        could reach on this batch and mixing (`content_ceiling`), averaged over queries;
        `homologous_contrastive_loss`: the model's (NaN when it has none);
        `reconstruction_loss`: the model's on the batch;
        `num_queries` and `num_foreground_queries`: patch queries per layer and head.
    """
    model = getattr(model, "_orig_mod", model)
    if not can_probe(model):
        raise ValueError("homologous_probe needs a MixedAE pre-training model with mixing and homologous layers.")
    config = model.config
    group_size = config.group_size
    usable = pixel_values.shape[0] - pixel_values.shape[0] % group_size
    if usable == 0:
        raise ValueError(f"homologous_probe needs at least g = {group_size} images, got {pixel_values.shape[0]}.")
    device = next(model.parameters()).device
    pixel_values = pixel_values[:usable].to(device)
    grid = (pixel_values.shape[2] // config.patch_size, pixel_values.shape[3] // config.patch_size)
    num_patches = grid[0] * grid[1]
    noise = torch.rand(usable // group_size, num_patches, generator=torch.Generator().manual_seed(seed)).to(device)

    encoder = model.vit
    devices = [device] if device.type == "cuda" else []
    encoder.record_homologous_topk_per_query = True
    try:
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            outputs = model(pixel_values=pixel_values, noise=noise)
        counts = encoder.__dict__.pop("homologous_topk_query_counts")  # (layers, B/g, num_kept, 2)
    finally:
        encoder.record_homologous_topk_per_query = False
        encoder.__dict__.pop("homologous_topk_query_counts", None)

    mixing = model.draw_mixing(usable, num_patches, noise, device=device)
    foreground = foreground_patches(pixel_values, config.patch_size, image_std, threshold)  # (B, N)
    image = torch.arange(mixing.num_groups, device=device)[:, None] * group_size + mixing.slot_of_kept[None, :]
    foreground_query = foreground[image, mixing.ids_keep]  # (B/g, num_kept)
    num_foreground = int(foreground_query.sum())
    foreground_accuracy = _accuracy(counts, foreground_query) if num_foreground else math.nan
    num_kept = mixing.ids_keep.shape[-1]
    selection_heads = 1 if config.homologous_selection == "head_mean" else config.num_attention_heads
    values = constant_patch_values(pixel_values, config.patch_size, image_std)[image, mixing.ids_keep]
    ceiling = torch.stack([content_ceiling(mixing.slot_of_kept.cpu(), foreground_query[group].cpu(),
                                           values[group].cpu(), group_size) for group in range(mixing.num_groups)])
    contrastive = outputs.homologous_contrastive_loss
    return {
        "homologous_topk_accuracy": float(outputs.homologous_topk_accuracy),
        "homologous_topk_accuracy_foreground": foreground_accuracy,
        "homologous_topk_chance": 1.0 / group_size,
        "homologous_topk_accuracy_other_keys": _accuracy(counts, other_keys=True),
        "homologous_topk_accuracy_other_keys_foreground": (
            _accuracy(counts, foreground_query, other_keys=True) if num_foreground else math.nan
        ),
        "homologous_topk_chance_other_keys": (num_kept // group_size - 1) / (num_kept - 1),
        "homologous_own_key_kept": float(counts[..., 2].float().mean() / selection_heads),
        "homologous_topk_ceiling": float(ceiling.mean()),
        "homologous_topk_ceiling_foreground": (float(ceiling[foreground_query.cpu()].mean()) if num_foreground
                                               else math.nan),
        "homologous_contrastive_loss": float(contrastive) if contrastive is not None else math.nan,
        "reconstruction_loss": float(outputs.reconstruction_loss),
        "num_queries": int(foreground_query.numel()),
        "num_foreground_queries": num_foreground,
    }


def _accuracy(counts: torch.Tensor, queries: torch.Tensor | None = None, other_keys: bool = False) -> float:
    """From `(layers, B/g, num_kept, 3)` per-query counts: per layer, the fraction of kept patch keys (summed over heads
    and the `queries`, a `(B/g, num_kept)` mask, default all) from the query's own image, averaged over layers, as
    the model's own diagnostic. `other_keys` leaves each query's own key out of both counts: a selection that keeps
    it is right about it for free (it is homologous by definition), so its chance level is no longer 1/g."""
    counts = counts[:, queries] if queries is not None else counts.flatten(1, 2)  # (layers, queries, 3)
    hits, kept = counts[..., 0].sum(dim=-1), counts[..., 1].sum(dim=-1)
    if other_keys:
        own = counts[..., 2].sum(dim=-1)
        hits, kept = hits - own, kept - own
    return float((hits.float() / kept.clamp(min=1).float()).mean())


def validation_batch(num_images: int, image_size, dataset_name: str | None = None,
                     dataset_config_name: str | None = None) -> tuple[torch.Tensor, tuple[float, ...]]:
    """The first `num_images` validation images (bundled dataset by default) with the evaluation transform:
    `(pixel_values, image_std)`."""
    from ..data import EvaluationTransform, build_evaluation_dataloader, load_image_dataset

    loaded = load_image_dataset(dataset_name, dataset_config_name)  # not max_eval_samples: a random subset
    transform = EvaluationTransform(image_size)
    loader = build_evaluation_dataloader(
        loaded.validation, transform, batch_size=num_images,
        image_column_name=loaded.image_column_name, label_column_name=loaded.label_column_name,
    )
    return next(iter(loader))["pixel_values"], transform.std


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog="python -m transformers_mixedae.evaluation.homologous_probe",
        description="Homologous top-k accuracy (all and foreground queries) of a saved MixedAE folder, as JSON.",
    )
    parser.add_argument("model", help="A saved MixedAE pre-training folder (or Hub id).")
    parser.add_argument("--num_images", type=int, default=16, help="First validation images probed (default 16).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the mixing noise (default 0).")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset (default: the bundled Fashion-MNIST).")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument(
        "--without_segment_embedding", action="store_true",
        help="Measure with the segment embeddings removed (encoder or decoder), so that only content and position "
             "can tell a patch's source: recognition through the embedding alone falls to chance.",
    )
    args = parser.parse_args(argv)

    import transformers_mixedae  # noqa: F401  (registers the models)
    from transformers import AutoModelForPreTraining

    model = AutoModelForPreTraining.from_pretrained(args.model)
    if not can_probe(model):
        parser.exit(2, f"{args.model}: not a MixedAE model with mixing and homologous attention layers.\n")
    if args.without_segment_embedding:
        model.vit.embeddings.segment_embeddings = None
        model.decoder.segment_embeddings = None
    image_size = model.config.image_size
    pixel_values, image_std = validation_batch(args.num_images, image_size, args.dataset_name,
                                               args.dataset_config_name)
    result = homologous_probe(model, pixel_values, seed=args.seed, image_std=image_std)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
