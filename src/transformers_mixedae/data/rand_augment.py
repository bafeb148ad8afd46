# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""RandAugment and colour jitter for the fine-tuning train transform, with the behaviour of timm's
`rand_augment_transform` and torchvision's `ColorJitter` (as MAE's and CAE's fine-tuning use them through timm's
`create_transform`), written in PIL + torch so that neither library is needed. Every draw comes from the
`torch.Generator` passed in (the per-sample generator of the data pipeline), so a resumed run augments each sample
identically.

RandAugment (`--aa rand-m9-mstd0.5-inc1`): per image, `n` ops are drawn uniformly with replacement from the op set;
each is applied with probability `p` (0.5); its magnitude is `m`, or, with `mstd > 0`, drawn per application from
Normal(m, mstd) (uniform in [0, m] when mstd > 100), then clipped to [0, mmax] (mmax defaults to 10). The magnitude
maps to the op's parameter by the table `OP_TABLE` (level = magnitude / 10); a signed parameter is negated with
probability 1/2. Geometric ops fill with the dataset mean as uint8 (timm's `img_mean`: (124, 116, 104) for ImageNet)
and resample bicubic (the training interpolation).

Colour jitter (`--color_jitter F`): brightness, contrast and saturation factors drawn uniformly in
[max(0, 1 - F), 1 + F], applied in a random order (PIL's ImageEnhance, as torchvision on PIL images); timm applies it
only when no auto-augmentation is on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageEnhance, ImageOps

# Magnitudes are on a 0..10 scale: the op parameter is a function of level = magnitude / MAGNITUDE_SCALE.
MAGNITUDE_SCALE = 10.0
DEFAULT_MAGNITUDE = 10
DEFAULT_NUM_OPS = 2
DEFAULT_OP_PROBABILITY = 0.5
# mstd above this means "magnitude uniform in [0, m]" (timm's convention for an infinite std).
UNIFORM_MAGNITUDE_STD = 100.0
SOLARIZE_ADD_THRESHOLD = 128
AUTO_AUGMENT_GRAMMAR = (
    "rand-<section>-<section>..., sections in any order: m<int> magnitude 0..mmax (default 10), n<int> ops per image "
    "(default 2), p<float> probability of each op (default 0.5), mstd<float> magnitude noise std (> 100: uniform in "
    "[0, m]), mmax<int> magnitude upper bound (default 10), inc1 the increasing-severity op set (default: the plain "
    "set); e.g. "
    "rand-m9-mstd0.5-inc1, or none to turn it off"
)

Operation = Callable[[Image.Image, float, "RandAugment"], Image.Image]


def _geometric(image: Image.Image, matrix: tuple[float, ...], augment: "RandAugment") -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=augment.resample,
                           fillcolor=augment.fill)


def _solarize_add(image: Image.Image, add: float, _: "RandAugment") -> Image.Image:
    lut = [min(255, value + int(add)) if value < SOLARIZE_ADD_THRESHOLD else value for value in range(256)]
    return image.point(lut * len(image.getbands()))


def _posterize(image: Image.Image, bits: float, _: "RandAugment") -> Image.Image:
    if bits >= 8:
        return image
    if bits < 1:
        # The increasing op set keeps 4 - 4 * level bits: 0 at full magnitude, i.e. every channel masked to 0 (what
        # Pillow's posterize did before it began refusing 0 bits).
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, int(bits))


OPERATIONS: dict[str, Operation] = {
    "auto_contrast": lambda image, _, __: ImageOps.autocontrast(image),
    "equalize": lambda image, _, __: ImageOps.equalize(image),
    "invert": lambda image, _, __: ImageOps.invert(image),
    "rotate": lambda image, degrees, augment: image.rotate(degrees, resample=augment.resample, fillcolor=augment.fill),
    "posterize": _posterize,
    "solarize": lambda image, threshold, _: ImageOps.solarize(image, int(threshold)),
    "solarize_add": _solarize_add,
    "color": lambda image, factor, _: ImageEnhance.Color(image).enhance(factor),
    "contrast": lambda image, factor, _: ImageEnhance.Contrast(image).enhance(factor),
    "brightness": lambda image, factor, _: ImageEnhance.Brightness(image).enhance(factor),
    "sharpness": lambda image, factor, _: ImageEnhance.Sharpness(image).enhance(factor),
    "shear_x": lambda image, factor, augment: _geometric(image, (1, factor, 0, 0, 1, 0), augment),
    "shear_y": lambda image, factor, augment: _geometric(image, (1, 0, 0, factor, 1, 0), augment),
    # Translations are a fraction of the image side.
    "translate_x": lambda image, fraction, augment: _geometric(
        image, (1, 0, fraction * image.size[0], 0, 1, 0), augment),
    "translate_y": lambda image, fraction, augment: _geometric(
        image, (1, 0, 0, 0, 1, fraction * image.size[1]), augment),
}


@dataclass(frozen=True)
class OpSpec:
    """One row of the op table: timm's op name, the PIL operation, how the level (magnitude / 10) gives its
    parameter, and whether the parameter's sign is drawn (negated with probability 1/2)."""

    name: str
    operation: str
    level_to_parameter: Callable[[float], float] | None = None
    signed: bool = False

    def parameter(self, magnitude: float) -> float | None:
        """The parameter at `magnitude` before the random sign (None for ops without one)."""
        if self.level_to_parameter is None:
            return None
        return self.level_to_parameter(magnitude / MAGNITUDE_SCALE)


def _enhance(level: float) -> float:  # factor in [0.1, 1.9], 1 = unchanged at level 5
    return level * 1.8 + 0.1


def _enhance_increasing(level: float) -> float:  # |factor - 1| = 0.9 level: 1 = unchanged at level 0 (sign drawn)
    return level * 0.9


# name -> OpSpec. "Increasing" variants grow more severe with the magnitude (timm's inc1 set).
OP_TABLE: dict[str, OpSpec] = {spec.name: spec for spec in (
    OpSpec("AutoContrast", "auto_contrast"),
    OpSpec("Equalize", "equalize"),
    OpSpec("Invert", "invert"),
    OpSpec("Rotate", "rotate", lambda level: level * 30.0, signed=True),  # degrees, up to +-30
    OpSpec("Posterize", "posterize", lambda level: int(level * 4)),  # bits kept: 0..4
    OpSpec("PosterizeIncreasing", "posterize", lambda level: 4 - int(level * 4)),  # bits kept: 4..0
    OpSpec("Solarize", "solarize", lambda level: min(256, int(level * 256))),  # threshold 0..256
    OpSpec("SolarizeIncreasing", "solarize", lambda level: 256 - min(256, int(level * 256))),  # 256..0
    OpSpec("SolarizeAdd", "solarize_add", lambda level: min(128, int(level * 110))),  # added below 128: 0..110
    OpSpec("Color", "color", _enhance),
    OpSpec("ColorIncreasing", "color", _enhance_increasing, signed=True),
    OpSpec("Contrast", "contrast", _enhance),
    OpSpec("ContrastIncreasing", "contrast", _enhance_increasing, signed=True),
    OpSpec("Brightness", "brightness", _enhance),
    OpSpec("BrightnessIncreasing", "brightness", _enhance_increasing, signed=True),
    OpSpec("Sharpness", "sharpness", _enhance),
    OpSpec("SharpnessIncreasing", "sharpness", _enhance_increasing, signed=True),
    OpSpec("ShearX", "shear_x", lambda level: level * 0.3, signed=True),  # shear factor up to +-0.3
    OpSpec("ShearY", "shear_y", lambda level: level * 0.3, signed=True),
    OpSpec("TranslateXRel", "translate_x", lambda level: level * 0.45, signed=True),  # up to +-45% of the side
    OpSpec("TranslateYRel", "translate_y", lambda level: level * 0.45, signed=True),
)}
# The "Increasing" enhance ops give the factor 1 +- 0.9 level, kept >= 0.1.
INCREASING_ENHANCE_MIN_FACTOR = 0.1

# timm's two RandAugment op sets (inc0 and inc1); Cutout is left to random erasing, as in timm.
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def fill_color(mean: Sequence[float]) -> tuple[int, ...]:
    """The fill of geometric ops: the normalisation mean as uint8 (timm's `img_mean`)."""
    return tuple(min(255, round(255 * value)) for value in mean)


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


@dataclass(frozen=True)
class RandAugmentSettings:
    """A parsed `--aa rand-...` string."""

    magnitude: int = DEFAULT_MAGNITUDE
    num_ops: int = DEFAULT_NUM_OPS
    probability: float = DEFAULT_OP_PROBABILITY
    magnitude_std: float = 0.0
    magnitude_max: int | None = None
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def auto_augment_off(value: str | None) -> bool:
    return value is None or value.strip().lower() in ("", "none")


def parse_rand_augment(value: str, flag: str = "aa") -> RandAugmentSettings:
    """Parse timm's RandAugment string (e.g. "rand-m9-mstd0.5-inc1"); a `ValueError` names `--flag`, the value and
    the grammar."""
    def bad(reason: str) -> ValueError:
        return ValueError(f"--{flag} {value!r}: {reason}. Expected {AUTO_AUGMENT_GRAMMAR}.")

    sections = value.split("-")
    if sections[0] != "rand":
        raise bad("only RandAugment ('rand-...') is implemented")
    numbers: dict[str, str] = {}
    for section in sections[1:]:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)", section)
        if match is None:
            raise bad(f"unknown section {section!r}")
        numbers[match.group(1)] = match.group(2)
    settings = {}
    for key, name, kind in (("m", "magnitude", int), ("n", "num_ops", int), ("p", "probability", float),
                            ("mstd", "magnitude_std", float), ("mmax", "magnitude_max", int),
                            ("inc", "increasing", int)):
        if key in numbers:
            try:
                settings[name] = kind(numbers[key])
            except ValueError:
                raise bad(f"{key} takes {'an integer' if kind is int else 'a number'}, got {numbers[key]!r}") from None
    if settings.get("increasing", 1) != 1:
        # timm reads any inc section (inc0 too) as the increasing set; leave it out for the plain set.
        raise bad("inc takes 1 (timm reads inc0 as inc1 too); leave inc out for the plain op set")
    settings["increasing"] = "increasing" in settings
    parsed = RandAugmentSettings(**settings)
    if parsed.num_ops < 1:
        raise bad("n must be at least 1")
    if not 0 <= parsed.probability <= 1:
        raise bad("p must be a probability in [0, 1]")
    if parsed.magnitude_max is not None and parsed.magnitude_max < 1:
        raise bad("mmax must be at least 1")
    if parsed.magnitude > (parsed.magnitude_max or MAGNITUDE_SCALE):
        raise bad(f"m must be at most mmax ({parsed.magnitude_max or int(MAGNITUDE_SCALE)})")
    return parsed


class RandAugment:
    """timm's RandAugment on PIL images, every draw from the generator passed in."""

    def __init__(
        self, settings: RandAugmentSettings, fill: tuple[int, ...] = (128, 128, 128), resample: str = "bicubic"
    ):
        self.settings = settings
        self.specs = tuple(OP_TABLE[name] for name in settings.ops)
        self.fill = fill
        self.resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[resample]

    @classmethod
    def from_string(cls, value: str, **kwargs) -> "RandAugment":
        return cls(parse_rand_augment(value), **kwargs)

    def sample_magnitude(self, generator: torch.Generator | None) -> float:
        """The magnitude of one application: m, or with noise, clipped to [0, mmax or 10]."""
        settings = self.settings
        magnitude = float(settings.magnitude)
        if settings.magnitude_std > UNIFORM_MAGNITUDE_STD:
            magnitude = _uniform(generator, 0.0, magnitude)
        elif settings.magnitude_std > 0:
            noise = torch.randn((), generator=generator, dtype=torch.float64).item()
            magnitude += settings.magnitude_std * noise
        return max(0.0, min(magnitude, float(settings.magnitude_max or MAGNITUDE_SCALE)))

    def parameter(self, spec: OpSpec, magnitude: float, generator: torch.Generator | None) -> float | None:
        value = spec.parameter(magnitude)
        if value is None or not spec.signed:
            return value
        negate = _uniform(generator) > 0.5
        if spec.level_to_parameter is _enhance_increasing:  # a factor around 1
            return max(INCREASING_ENHANCE_MIN_FACTOR, 1.0 + (-value if negate else value))
        return -value if negate else value

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        choices = torch.randint(len(self.specs), (self.settings.num_ops,), generator=generator).tolist()
        for index in choices:
            spec = self.specs[index]
            if self.settings.probability < 1.0 and _uniform(generator) > self.settings.probability:
                continue
            magnitude = self.sample_magnitude(generator)
            image = OPERATIONS[spec.operation](image, self.parameter(spec, magnitude, generator), self)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings}, fill={self.fill})"


def color_jitter(image: Image.Image, strength: float, generator: torch.Generator | None = None) -> Image.Image:
    """torchvision's `ColorJitter(strength, strength, strength)` on a PIL image: factors uniform in
    [max(0, 1 - strength), 1 + strength] for brightness, contrast and saturation, applied in a random order."""
    if strength <= 0:
        return image
    order = torch.randperm(4, generator=generator).tolist()  # brightness, contrast, saturation, hue (off)
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    factors = [_uniform(generator, low, high) for _ in range(3)]
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for index in order:
        if index < 3:
            image = enhancers[index](image).enhance(factors[index])
    return image
