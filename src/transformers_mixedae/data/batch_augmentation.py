# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Batch-level fine-tuning augmentation on the device, after normalisation: Mixup / CutMix and random erasing with
the behaviour, flag names and numbers of timm's `Mixup` (mode `batch`) and `RandomErasing` (mode `pixel`), as MAE's
`main_finetune.py` uses them. Written in torch; every draw comes from the generators passed in (never the global
RNG), so a batch seeded from (seed, epoch, rank, index) is augmented identically when a run resumes.

* `mix_batch`: with probability `prob` mix the batch with its reverse (`x.flip(0)`); when both alphas are > 0,
  CutMix with probability `switch_prob`, else Mixup. Mixup: `lam ~ Beta(mixup_alpha, mixup_alpha)`,
  `x = lam * x + (1 - lam) * x.flip(0)`. CutMix: `lam ~ Beta(cutmix_alpha, cutmix_alpha)` gives a box of side
  `sqrt(1 - lam)` of the image's, centred uniformly and clipped to the image (or, with `cutmix_minmax`, sides drawn
  uniformly in that fraction range and placed inside the image), pasted from `x.flip(0)`; `lam` is then
  `1 - box area / image area`. Targets: one-hot with the label smoothing folded in (off = smoothing / C,
  on = 1 - smoothing + off), mixed as `lam * y + (1 - lam) * y.flip(0)`.
* `random_erase`: per sample with probability `probability`, up to 10 attempts to draw an area fraction uniform in
  [0.02, 1/3] (divided by the number of boxes, `--recount`) and a log-uniform aspect ratio in [0.3, 1/0.3]; the first box that fits is filled with per-pixel
  standard normal noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ERASE_MIN_AREA = 0.02
ERASE_MAX_AREA = 1 / 3
ERASE_MIN_ASPECT = 0.3
ERASE_ATTEMPTS = 10


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high) (numpy's `randint` convention)."""
    return int(torch.randint(low, high, (), generator=generator).item())


def sample_gamma(alpha: float, generator: torch.Generator) -> float:
    """One draw of Gamma(alpha, 1) from `generator` (Marsaglia and Tsang; alpha < 1 by Gamma(alpha + 1) U**(1/alpha))."""
    boost = 1.0
    if alpha < 1:
        boost = _uniform(generator) ** (1 / alpha)
        alpha += 1
    d = alpha - 1 / 3
    c = 1 / math.sqrt(9 * d)
    while True:
        x = torch.randn((), generator=generator, dtype=torch.float64).item()
        v = (1 + c * x) ** 3
        if v <= 0:
            continue
        u = _uniform(generator)
        if u > 0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v * boost


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) from `generator`."""
    first, second = sample_gamma(alpha, generator), sample_gamma(alpha, generator)
    return first / (first + second)


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot float targets with label smoothing folded in: off = smoothing / C, on = 1 - smoothing + off."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(1, labels.view(-1, 1), on)


def mixed_targets(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float) -> torch.Tensor:
    """`lam * y + (1 - lam) * y.flip(0)` of the smoothed one-hot targets `y` (timm's `mixup_target`)."""
    targets = smoothed_one_hot(labels, num_classes, smoothing)
    return targets * lam + targets.flip(0) * (1.0 - lam)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of `sum(-targets * log_softmax(logits))`."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def cutmix_box(
    image_height: int, image_width: int, lam: float, generator: torch.Generator,
    minmax: tuple[float, float] | None = None,
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of timm's CutMix box: sides `sqrt(1 - lam)` of the image's around a uniform centre,
    clipped to the image; with `minmax`, sides drawn uniformly in that fraction range, the box inside the image."""
    if minmax is not None:
        cut_h = _randint(generator, int(image_height * minmax[0]), int(image_height * minmax[1]))
        cut_w = _randint(generator, int(image_width * minmax[0]), int(image_width * minmax[1]))
        top = _randint(generator, 0, image_height - cut_h)
        left = _randint(generator, 0, image_width - cut_w)
        return top, top + cut_h, left, left + cut_w
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(image_height * ratio), int(image_width * ratio)
    centre_y = _randint(generator, 0, image_height)
    centre_x = _randint(generator, 0, image_width)
    top, bottom = min(max(centre_y - cut_h // 2, 0), image_height), min(max(centre_y + cut_h // 2, 0), image_height)
    left, right = min(max(centre_x - cut_w // 2, 0), image_width), min(max(centre_x + cut_w // 2, 0), image_width)
    return top, bottom, left, right


@dataclass
class MixDraw:
    """What `MixupCutmix.draw` decided for one batch: whether it mixes (`mixed`, drawn with `prob`), `lam` (1.0
    without mixing; a CutMix box may also come out empty) and, for CutMix, the box."""

    mixed: bool = False
    lam: float = 1.0
    cutmix: bool = False
    box: tuple[int, int, int, int] | None = None


@dataclass
class MixupCutmix:
    """timm's `Mixup` in mode `batch` (one lam and one box for the whole batch), with `correct_lam=True`."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0
    num_classes: int = 1000

    def __post_init__(self):
        if self.cutmix_minmax is not None:
            self.cutmix_minmax = tuple(self.cutmix_minmax)
            self.cutmix_alpha = 1.0  # as timm: the box comes from the range, the alpha is unused but enables CutMix

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def draw(self, image_height: int, image_width: int, generator: torch.Generator) -> MixDraw:
        if not self.active or _uniform(generator) >= self.prob:
            return MixDraw()
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = _uniform(generator) < self.switch_prob
        else:
            cutmix = self.cutmix_alpha > 0
        lam = sample_beta(self.cutmix_alpha if cutmix else self.mixup_alpha, generator)
        if not cutmix:
            return MixDraw(mixed=True, lam=lam)
        box = cutmix_box(image_height, image_width, lam, generator, self.cutmix_minmax)
        top, bottom, left, right = box
        lam = 1.0 - (bottom - top) * (right - left) / float(image_height * image_width)
        return MixDraw(mixed=True, lam=lam, cutmix=True, box=box)

    def __call__(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, MixDraw]:
        """(mixed images, soft targets, the draw); the images are not modified in place."""
        draw = self.draw(pixel_values.shape[-2], pixel_values.shape[-1], generator)
        if draw.cutmix:
            top, bottom, left, right = draw.box
            pixel_values = pixel_values.clone()
            pixel_values[:, :, top:bottom, left:right] = pixel_values.flip(0)[:, :, top:bottom, left:right]
        elif draw.lam != 1.0:
            pixel_values = pixel_values * draw.lam + pixel_values.flip(0) * (1.0 - draw.lam)
        return pixel_values, mixed_targets(labels, self.num_classes, draw.lam, self.label_smoothing), draw


def erase_box(
    image_height: int, image_width: int, generator: torch.Generator, count: int = 1
) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of one random-erasing box, or None when no attempt fits (timm's `_erase`)."""
    area = image_height * image_width
    log_ratio = (math.log(ERASE_MIN_ASPECT), math.log(1 / ERASE_MIN_ASPECT))
    for _ in range(ERASE_ATTEMPTS):
        target_area = _uniform(generator, ERASE_MIN_AREA, ERASE_MAX_AREA) * area / count
        aspect_ratio = math.exp(_uniform(generator, *log_ratio))
        height = int(round(math.sqrt(target_area * aspect_ratio)))
        width = int(round(math.sqrt(target_area / aspect_ratio)))
        if width < image_width and height < image_height:
            top = _randint(generator, 0, image_height - height + 1)
            left = _randint(generator, 0, image_width - width + 1)
            return top, left, height, width
    return None


def random_erase(
    pixel_values: torch.Tensor, probability: float, generator: torch.Generator, noise_generator: torch.Generator,
    max_count: int = 1,
) -> tuple[torch.Tensor, list[list[tuple[int, int, int, int]]]]:
    """timm's `RandomErasing(probability, mode="pixel", max_count=max_count)` on each sample of a normalised batch:
    (the erased batch, a copy; the boxes of each sample). An erased sample gets a number of boxes uniform in
    [1, max_count], each of area fraction in [0.02, 1/3] / that number. `noise_generator` lives on the batch's
    device."""
    if probability <= 0:
        return pixel_values, [[] for _ in range(pixel_values.shape[0])]
    pixel_values = pixel_values.clone()
    channels, image_height, image_width = pixel_values.shape[-3:]
    boxes = []
    for index in range(pixel_values.shape[0]):
        sample_boxes = []
        if _uniform(generator) < probability:
            count = 1 if max_count == 1 else _randint(generator, 1, max_count + 1)
            for _ in range(count):
                box = erase_box(image_height, image_width, generator, count)
                if box is None:
                    continue
                top, left, height, width = box
                noise = torch.randn((channels, height, width), generator=noise_generator,
                                    device=pixel_values.device, dtype=torch.float32)
                pixel_values[index, :, top:top + height, left:left + width] = noise.to(pixel_values.dtype)
                sample_boxes.append(box)
        boxes.append(sample_boxes)
    return pixel_values, boxes
