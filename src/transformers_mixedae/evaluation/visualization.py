# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Pictures of what a masked-image model sees and reconstructs, saved as PNG with matplotlib.

* `save_reconstruction_grid`: one row per image: original | what the encoder saw (the group's mixed sample for
  MixedAE, the visible patches for MAE/CAE) | reconstruction (predicted hidden patches + the visible ones).
* `save_homologous_attention_figure`: for a few patch queries of one mixed sample, which keys homologous
  attention kept (fraction of heads), with the query's own image outlined.
"""

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: training nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..models.vit_layers import patchify, unpatchify  # noqa: E402

HIDDEN_PATCH_GREY = 0.5


def to_display(pixel_values: torch.Tensor, image_mean: Sequence[float], image_std: Sequence[float]) -> np.ndarray:
    """`(B, C, H, W)` normalised tensor -> `(B, H, W, C)` float array in [0, 1]."""
    mean = torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1)
    images = (pixel_values.detach().float().cpu() * std + mean).clamp(0, 1)
    return images.permute(0, 2, 3, 1).numpy()


def paste_patches(
    pixel_values: torch.Tensor, shown: torch.Tensor, patch_size: int, fill: torch.Tensor | float
) -> torch.Tensor:
    """Keep the patches where `shown` (`(B, N)`, bool) and put `fill` (patches or a scalar) elsewhere."""
    patches = patchify(pixel_values, patch_size)
    fill_patches = fill if isinstance(fill, torch.Tensor) else torch.full_like(patches, fill)
    combined = torch.where(shown.unsqueeze(-1), patches, fill_patches.to(patches.dtype))
    grid = (pixel_values.shape[2] // patch_size, pixel_values.shape[3] // patch_size)
    return unpatchify(combined, patch_size, grid, pixel_values.shape[1])


def denormalize_patch_predictions(
    logits: torch.Tensor, pixel_values: torch.Tensor, patch_size: int, norm_pix_loss: bool
) -> torch.Tensor:
    """Predictions in pixel space: undo the per-patch normalisation with the true patch statistics (as MAE's demo)."""
    if not norm_pix_loss:
        return logits
    target = patchify(pixel_values, patch_size)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return logits * (var + 1.0e-6) ** 0.5 + mean


def mixed_samples(
    pixel_values: torch.Tensor, owner: torch.Tensor, patch_size: int, hidden_value: float
) -> torch.Tensor:
    """`(G, C, H, W)` mixed samples: at each position the patch of the image that owns it (`owner`, `(G, N)`,
    -1 = nobody), `hidden_value` where no image shows the position."""
    num_groups, num_patches = owner.shape
    group_size = pixel_values.shape[0] // num_groups
    patches = patchify(pixel_values, patch_size).view(num_groups, group_size, num_patches, -1)
    index = owner.clamp(min=0)[:, None, :, None].expand(-1, 1, -1, patches.shape[-1])
    mixed = torch.gather(patches, 1, index).squeeze(1)
    mixed = torch.where((owner >= 0).unsqueeze(-1), mixed, torch.full_like(mixed, hidden_value))
    grid = (pixel_values.shape[2] // patch_size, pixel_values.shape[3] // patch_size)
    return unpatchify(mixed, patch_size, grid, pixel_values.shape[1])


def save_image_rows(path: str | os.PathLike, columns: dict[str, np.ndarray], max_rows: int = 8) -> str:
    """Write a grid with one column per entry of `columns` (each `(B, H, W, C)` in [0, 1]) and one row per image."""
    titles = list(columns)
    num_rows = min(max_rows, min(len(images) for images in columns.values()))
    figure, axes = plt.subplots(num_rows, len(titles), figsize=(2.2 * len(titles), 2.2 * num_rows), squeeze=False)
    for row in range(num_rows):
        for column, title in enumerate(titles):
            axis = axes[row][column]
            axis.imshow(columns[title][row], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)


def save_reconstruction_grid(
    path: str | os.PathLike,
    pixel_values: torch.Tensor,
    shown: torch.Tensor,
    patch_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    logits: torch.Tensor | None = None,
    norm_pix_loss: bool = True,
    seen_pixel_values: torch.Tensor | None = None,
    max_rows: int = 8,
) -> str:
    """Original | seen | reconstruction. `shown` (`(B, N)` bool) marks each image's visible patches;
    `seen_pixel_values` replaces the "seen" column (e.g. the mixed sample of each image's group); `logits`
    (`(B, N, patch_size**2 * C)`) adds the reconstruction column."""
    pixel_values = pixel_values.detach().float().cpu()
    shown = shown.detach().bool().cpu()
    grey = (HIDDEN_PATCH_GREY - torch.tensor(image_mean).mean().item()) / torch.tensor(image_std).mean().item()
    if seen_pixel_values is None:
        seen_pixel_values = paste_patches(pixel_values, shown, patch_size, grey)
    columns = {
        "original": to_display(pixel_values, image_mean, image_std),
        "encoder input": to_display(seen_pixel_values.detach().float().cpu(), image_mean, image_std),
    }
    if logits is not None:
        predicted = denormalize_patch_predictions(logits.detach().float().cpu(), pixel_values, patch_size, norm_pix_loss)
        reconstruction = paste_patches(pixel_values, shown, patch_size, predicted)
        columns["reconstruction + visible"] = to_display(reconstruction, image_mean, image_std)
    return save_image_rows(path, columns, max_rows=max_rows)


def save_homologous_attention_figure(
    path: str | os.PathLike,
    mixed_image: np.ndarray,
    kept_fraction: torch.Tensor,
    query_positions: Sequence[int],
    query_owner: torch.Tensor,
    grid_size: tuple[int, int],
) -> str:
    """One panel per query: the mixed sample, a heat map of the fraction of heads that kept each key position,
    the query marked with a star and the positions of its own source image outlined.

    `kept_fraction` is `(num_queries, N)` over image positions; `query_owner` `(N,)` is the slot owning each
    position (-1 = hidden).
    """
    num_panels = len(query_positions)
    figure, axes = plt.subplots(1, num_panels, figsize=(3 * num_panels, 3.2), squeeze=False)
    height, width = mixed_image.shape[:2]
    patch_h, patch_w = height / grid_size[0], width / grid_size[1]
    for panel, position in enumerate(query_positions):
        axis = axes[0][panel]
        axis.imshow(mixed_image, interpolation="nearest")
        heat = kept_fraction[panel].view(*grid_size).float().cpu().numpy()
        axis.imshow(heat, cmap="magma", alpha=0.55, extent=(0, width, height, 0), vmin=0, vmax=1, interpolation="nearest")
        own_slot = int(query_owner[position])
        for index in torch.nonzero(query_owner == own_slot).flatten().tolist():
            row, col = divmod(index, grid_size[1])
            axis.add_patch(
                plt.Rectangle((col * patch_w, row * patch_h), patch_w, patch_h, fill=False, edgecolor="cyan", lw=0.6)
            )
        row, col = divmod(position, grid_size[1])
        axis.plot((col + 0.5) * patch_w, (row + 0.5) * patch_h, marker="*", color="lime", markersize=12)
        axis.set_title(f"query at {position} (image {own_slot})", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("keys kept by homologous top-k attention (fraction of heads); own image outlined", fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)
