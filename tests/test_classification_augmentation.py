"""Fine-tuning augmentation: on the device (data/batch_augmentation.py), Mixup / CutMix and random erasing with MAE's
flags (--mixup --cutmix --cutmix_minmax --mixup_prob --mixup_switch_prob --mixup_mode --reprob --remode --recount);
in the data workers (data/rand_augment.py), RandAugment (--aa) and colour jitter (--color_jitter), checked against
timm's definitions (op sets, magnitude -> parameter, probabilities, fill) as facts."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from test_finetuning import arguments, pretrained  # noqa: F401 - the fixture
from transformers_mixedae.data.batch_augmentation import (
    MixupCutmix,
    cutmix_box,
    mixed_targets,
    random_erase,
    sample_beta,
    smoothed_one_hot,
    soft_target_cross_entropy,
)
from transformers_mixedae.data.rand_augment import (
    OP_TABLE,
    OPERATIONS,
    RAND_INCREASING_OPS,
    RAND_OPS,
    RandAugment,
    color_jitter,
    fill_color,
    parse_rand_augment,
)
from transformers_mixedae.data.transforms import (
    CAE_CROP_SCALE,
    IMAGENET_DEFAULT_MEAN,
    ClassificationTrainTransform,
    PretrainingTransform,
)
from transformers_mixedae.tasks.image_classification import ImageClassificationTask, run_image_classification
from transformers_mixedae.tasks.image_classification_args import ClassificationArguments, resolve_recipe
from transformers_mixedae.training.arguments import TrainingArguments
from transformers_mixedae.training.checkpointing import CheckpointError


def generator(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ targets
def test_label_smoothing_is_folded_into_the_one_hot_targets_exactly():
    targets = smoothed_one_hot(torch.tensor([2, 0]), num_classes=4, smoothing=0.2)
    off, on = 0.2 / 4, 1 - 0.2 + 0.2 / 4
    assert torch.equal(targets, torch.tensor([[off, off, on, off], [on, off, off, off]]))
    assert torch.equal(smoothed_one_hot(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))
    # Unmixed (lam 1), the soft-target loss is torch's label-smoothed cross-entropy.
    logits, labels = torch.randn(6, 4, generator=generator(0)), torch.tensor([0, 1, 2, 3, 1, 0])
    torch.testing.assert_close(soft_target_cross_entropy(logits, mixed_targets(labels, 4, 1.0, 0.2)),
                               F.cross_entropy(logits, labels, label_smoothing=0.2))


def test_mixed_targets_sum_to_one_and_equal_the_hand_computed_mix():
    labels = torch.tensor([0, 1, 2])  # flipped: 2, 1, 0
    targets = mixed_targets(labels, num_classes=3, lam=0.75, smoothing=0.3)
    off, on = 0.1, 0.8
    expected = torch.tensor([
        [0.75 * on + 0.25 * off, off, 0.75 * off + 0.25 * on],
        [off, on, off],
        [0.75 * off + 0.25 * on, off, 0.75 * on + 0.25 * off],
    ])
    torch.testing.assert_close(targets, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(targets.sum(1), torch.ones(3), rtol=0, atol=1e-6)


def test_mixup_mixes_the_images_with_the_reversed_batch_by_the_drawn_lam():
    pixels, labels = torch.randn(4, 3, 8, 8, generator=generator(1)), torch.tensor([0, 1, 2, 3])
    mix = MixupCutmix(mixup_alpha=0.8, num_classes=5, label_smoothing=0.1)
    mixed, targets, draw = mix(pixels, labels, generator(2))
    assert draw.mixed and not draw.cutmix and 0 < draw.lam < 1
    torch.testing.assert_close(mixed, draw.lam * pixels + (1 - draw.lam) * pixels.flip(0))
    assert torch.equal(targets, mixed_targets(labels, 5, draw.lam, 0.1))
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    again, _, _ = mix(pixels, labels, generator(2))
    assert torch.equal(again, mixed)  # the same seed, the same mix


# ------------------------------------------------------------------------------------------------ cutmix
@pytest.mark.parametrize("minmax", [None, (0.2, 0.8)])
def test_cutmix_box_is_inside_the_image_and_lam_is_its_corrected_area(minmax):
    mix = MixupCutmix(cutmix_alpha=1.0, cutmix_minmax=minmax, num_classes=4)
    labels = torch.tensor([0, 1, 2, 3])
    pixels = torch.randn(4, 3, 16, 12, generator=generator(3))
    for seed in range(200):
        mixed, targets, draw = mix(pixels, labels, generator(seed))
        assert draw.mixed and draw.cutmix
        top, bottom, left, right = draw.box
        assert 0 <= top <= bottom <= 16 and 0 <= left <= right <= 12
        assert draw.lam == 1 - (bottom - top) * (right - left) / (16 * 12)
        if minmax is not None:
            assert int(16 * 0.2) <= bottom - top < int(16 * 0.8) and int(12 * 0.2) <= right - left < int(12 * 0.8)
        inside = torch.zeros(16, 12, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(mixed[..., inside], pixels.flip(0)[..., inside])
        assert torch.equal(mixed[..., ~inside], pixels[..., ~inside])
        assert torch.equal(targets, mixed_targets(labels, 4, draw.lam, 0.0))


def test_cutmix_box_side_follows_lam_before_clipping():
    for seed in range(100):
        top, bottom, left, right = cutmix_box(20, 20, lam=0.64, generator=generator(seed))  # side 0.6 -> 12
        assert bottom - top <= 12 and right - left <= 12
        centre_inside = 6 <= (top + bottom) / 2 <= 14 and 6 <= (left + right) / 2 <= 14
        if centre_inside and top > 0 and left > 0 and bottom < 20 and right < 20:
            assert (bottom - top, right - left) == (12, 12)


# ------------------------------------------------------------------------------------------------ probabilities
def test_mixup_prob_and_switch_prob_are_respected_over_many_draws():
    draws = 3000
    mix = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6, switch_prob=0.3, num_classes=2)
    outcomes = [mix.draw(16, 16, generator(seed)) for seed in range(draws)]
    mixed = [draw for draw in outcomes if draw.mixed]
    # Binomial standard deviations: 0.009 for prob 0.6 of 3000, 0.015 for 0.3 of ~1800; 5 of them at most.
    assert abs(len(mixed) / draws - 0.6) < 0.045
    assert abs(sum(draw.cutmix for draw in mixed) / len(mixed) - 0.3) < 0.075
    assert all(not draw.cutmix and draw.lam == 1.0 for draw in outcomes if not draw.mixed)
    never = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0, num_classes=2)
    assert all(not never.draw(16, 16, generator(seed)).mixed for seed in range(200))
    only_mixup = MixupCutmix(mixup_alpha=0.8, switch_prob=1.0, num_classes=2)
    assert all(not only_mixup.draw(16, 16, generator(seed)).cutmix for seed in range(200))
    only_cutmix = MixupCutmix(cutmix_alpha=1.0, switch_prob=0.0, num_classes=2)
    assert all(only_cutmix.draw(16, 16, generator(seed)).cutmix for seed in range(200))


@pytest.mark.parametrize("alpha", [0.8, 1.0, 2.0])
def test_lam_follows_the_beta_distribution(alpha):
    draws = torch.tensor([sample_beta(alpha, generator(seed)) for seed in range(4000)], dtype=torch.float64)
    assert ((draws > 0) & (draws < 1)).all()
    variance = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2
    standard_error = math.sqrt(variance / len(draws))
    assert abs(draws.mean().item() - 0.5) < 5 * standard_error
    assert abs(draws.var().item() - variance) < 0.1 * variance


# ------------------------------------------------------------------------------------------------ random erasing
def test_random_erasing_boxes_have_the_area_and_aspect_bounds_and_only_they_change():
    pixels = torch.zeros(64, 3, 224, 224)
    erased, boxes = random_erase(pixels, 1.0, generator(0), generator(1))
    assert all(len(sample) == 1 for sample in boxes)  # 224 x 224: the first attempt always fits
    area = 224 * 224
    for index, [(top, left, height, width)] in enumerate(boxes):
        assert 0 <= top and top + height <= 224 and 0 <= left and left + width <= 224
        # The sides are the rounded sqrt(area * aspect) and sqrt(area / aspect): within half a pixel of the draw.
        assert (height - 0.5) * (width - 0.5) <= area / 3 and (height + 0.5) * (width + 0.5) >= 0.02 * area
        assert (height + 0.5) / (width - 0.5) >= 0.3 and (height - 0.5) / (width + 0.5) <= 1 / 0.3
        inside = torch.zeros(224, 224, dtype=torch.bool)
        inside[top:top + height, left:left + width] = True
        assert (erased[index][:, inside] != 0).all() and (erased[index][:, ~inside] == 0).all()
    noise = torch.cat([erased[i][:, t:t + h, l:l + w].flatten() for i, [(t, l, h, w)] in enumerate(boxes)])
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01  # per-pixel standard normal
    assert not pixels.any()  # the input is left as it was


def test_random_erasing_probability_count_and_zero():
    pixels = torch.randn(8, 3, 16, 16, generator=generator(4))
    same, boxes = random_erase(pixels, 0.0, generator(0), generator(1))
    assert same is pixels and boxes == [[]] * 8
    erased = sum(bool(random_erase(pixels[:1], 0.25, generator(seed), generator(seed))[1][0])
                 for seed in range(2000))
    assert abs(erased / 2000 - 0.25) < 0.05  # sd 0.0097
    counts = [len(random_erase(pixels[:1], 1.0, generator(seed), generator(1), max_count=3)[1][0])
              for seed in range(300)]
    assert set(counts) <= {1, 2, 3} and {1, 2, 3} <= set(counts)


# ------------------------------------------------------------------------------------------------ the task
def task_with(pretrained, tmp_path, **flags):  # noqa: F811
    task = ImageClassificationTask(*arguments(pretrained / "mixedae", tmp_path, **flags))
    args = task.classification_args
    if args.mixup_active:
        task.mixup = MixupCutmix(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob,
                                 args.mixup_switch_prob, args.label_smoothing, num_classes=10)
    return task


def test_the_task_augments_deterministically_per_batch_seed(tmp_path, pretrained):  # noqa: F811
    task = task_with(pretrained, tmp_path, mixup=0.8, cutmix=1.0, reprob=0.5, label_smoothing=0.1)
    pixels, labels = torch.randn(8, 3, 16, 16, generator=generator(5)), torch.arange(8)
    first, targets = task.augment(pixels, labels, batch_seed=11)
    again, targets_again = task.augment(pixels, labels, batch_seed=11)
    assert torch.equal(first, again) and torch.equal(targets, targets_again)
    other, _ = task.augment(pixels, labels, batch_seed=12)
    assert not torch.equal(first, other)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    state = torch.random.get_rng_state()
    task.augment(pixels, labels, batch_seed=13)
    assert torch.equal(state, torch.random.get_rng_state())  # never the global RNG
    off = task_with(pretrained, tmp_path / "off")
    unchanged, no_targets = off.augment(pixels, labels, batch_seed=11)
    assert unchanged is pixels and no_targets is None


@pytest.mark.parametrize("flag, value, message", [
    ("mixup", -0.1, r"--mixup -0\.1 is not valid: an alpha >= 0"),
    ("cutmix", float("nan"), r"--cutmix nan is not valid: an alpha >= 0"),
    ("cutmix_minmax", [0.8, 0.2], r"--cutmix_minmax \[0\.8, 0\.2\] is not valid: two fractions .* 0 < min < max <= 1"),
    ("cutmix_minmax", [0.5], r"--cutmix_minmax \[0\.5\] is not valid: two fractions"),
    ("cutmix_minmax", [0.2, 1.5], r"--cutmix_minmax \[0\.2, 1\.5\] is not valid"),
    ("mixup_prob", 1.5, r"--mixup_prob 1\.5 is not valid: a probability in \[0, 1\]"),
    ("mixup_switch_prob", -0.5, r"--mixup_switch_prob -0\.5 is not valid: a probability in \[0, 1\]"),
    ("mixup_mode", "pair", r"--mixup_mode 'pair' is not valid: timm's 'pair' mode is not implemented here; use batch"),
    ("mixup_mode", "elem", r"--mixup_mode 'elem' is not valid: timm's 'elem' mode is not implemented"),
    ("mixup_mode", "rows", r"--mixup_mode 'rows' is not valid: choose one of \('batch',\)"),
    ("reprob", 2.0, r"--reprob 2\.0 is not valid: a probability in \[0, 1\]"),
    ("remode", "const", r"--remode 'const' is not valid: timm's 'const' fill is not implemented here; use pixel"),
    ("remode", "noise", r"--remode 'noise' is not valid: choose one of \('pixel',\)"),
    ("recount", 0, r"--recount 0 is not valid: an integer >= 1"),
    ("recount", 1.5, r"--recount 1\.5 is not valid: an integer >= 1"),
])
def test_each_flag_is_validated(flag, value, message):
    with pytest.raises(ValueError, match=message):
        ClassificationArguments(**{flag: value})


def test_augmentation_is_refused_for_the_linear_probe():
    with pytest.raises(ValueError, match="--mode 'linear_probe' is not valid: .*fine-tuning augmentation"):
        ClassificationArguments(mode="linear_probe", reprob=0.25)
    ClassificationArguments(mode="linear_probe")  # the defaults are off


EVERY_FLAG = dict(mixup=0.8, cutmix=1.0, mixup_prob=0.9, mixup_switch_prob=0.5, mixup_mode="batch", reprob=0.5,
                  remode="pixel", recount=2, aa="rand-m9-mstd0.5-inc1")


@pytest.mark.parametrize("extra", [{}, {"cutmix_minmax": [0.2, 0.8], "aa": "none", "color_jitter": 0.4}])
def test_a_tiny_finetuning_run_with_every_flag_finishes(tmp_path, pretrained, extra):  # noqa: F811
    run_image_classification(*arguments(pretrained / "mixedae", tmp_path, **{**EVERY_FLAG, **extra}))
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert 0 <= saved["eval_accuracy"] <= saved["eval_top5_accuracy"] <= 1
    assert math.isfinite(saved["train_loss"])


RESUME_SETTINGS = dict(max_steps=3, save_steps=1, save_total_limit=None, mixup=0.8, cutmix=1.0, reprob=0.25)


def test_a_resumed_run_ends_with_the_same_weights_with_mixup_on(tmp_path, pretrained):  # noqa: F811
    uninterrupted = tmp_path / "uninterrupted"
    run_image_classification(*arguments(pretrained / "mixedae", uninterrupted, **RESUME_SETTINGS))
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest",
                                        **RESUME_SETTINGS))
    expected = load_file(str(uninterrupted / "model.safetensors"))
    actual = load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # Without the augmentation the weights differ: it was applied.
    plain = tmp_path / "plain"
    run_image_classification(*arguments(pretrained / "mixedae", plain, max_steps=3))
    assert not torch.equal(load_file(str(plain / "model.safetensors"))["classifier.weight"],
                           expected["classifier.weight"])


def test_resume_with_changed_augmentation_is_refused_unless_allowed(tmp_path, pretrained):  # noqa: F811
    settings = dict(max_steps=1, save_steps=1, save_total_limit=None, mixup=0.8)
    run_image_classification(*arguments(pretrained / "mixedae", tmp_path / "first", **settings))
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "first" / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    changed = dict(settings, mixup=0.0, reprob=0.25, max_steps=2)
    with pytest.raises(CheckpointError, match=r"mixup: 0\.8 in the checkpoint, 0\.0 now.*--allow_recipe_change"):
        run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest", **changed))
    run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest",
                                        allow_recipe_change=True, **changed))


# ------------------------------------------------------------------------------------------------ RandAugment
# timm's `_RAND_INCREASING_TRANSFORMS` and `_RAND_TRANSFORMS` (timm/data/auto_augment.py), in timm's order.
TIMM_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
TIMM_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
            "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# timm's level -> argument functions at magnitudes 0, 9 and 10, before the random sign (None: no argument); the
# "Increasing" enhance ops give |factor - 1|.
TIMM_PARAMETERS = {
    "AutoContrast": (None, None, None), "Equalize": (None, None, None), "Invert": (None, None, None),
    "Rotate": (0.0, 27.0, 30.0),
    "Posterize": (0, 3, 4), "PosterizeIncreasing": (4, 1, 0),
    "Solarize": (0, 230, 256), "SolarizeIncreasing": (256, 26, 0), "SolarizeAdd": (0, 99, 110),
    "Color": (0.1, 1.72, 1.9), "Contrast": (0.1, 1.72, 1.9), "Brightness": (0.1, 1.72, 1.9),
    "Sharpness": (0.1, 1.72, 1.9),
    "ColorIncreasing": (0.0, 0.81, 0.9), "ContrastIncreasing": (0.0, 0.81, 0.9),
    "BrightnessIncreasing": (0.0, 0.81, 0.9), "SharpnessIncreasing": (0.0, 0.81, 0.9),
    "ShearX": (0.0, 0.27, 0.3), "ShearY": (0.0, 0.27, 0.3),
    "TranslateXRel": (0.0, 0.405, 0.45), "TranslateYRel": (0.0, 0.405, 0.45),
}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing", "ContrastIncreasing",
          "BrightnessIncreasing", "SharpnessIncreasing"}


def test_the_op_sets_and_the_parsed_mae_string_are_timms():
    assert RAND_INCREASING_OPS == TIMM_INCREASING_OPS and RAND_OPS == TIMM_OPS
    settings = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (settings.magnitude, settings.num_ops, settings.probability, settings.magnitude_std,
            settings.magnitude_max, settings.ops) == (9, 2, 0.5, 0.5, None, TIMM_INCREASING_OPS)
    plain = parse_rand_augment("rand-n3-m7-p0.8-mmax12")
    assert (plain.magnitude, plain.num_ops, plain.probability, plain.magnitude_max, plain.ops) == (
        7, 3, 0.8, 12, TIMM_OPS)
    assert parse_rand_augment("rand").magnitude == 10  # timm's default magnitude


@pytest.mark.parametrize("name", sorted(TIMM_PARAMETERS))
def test_magnitude_to_parameter_at_0_9_10_and_the_random_sign(name):
    spec = OP_TABLE[name]
    values = tuple(spec.parameter(magnitude) for magnitude in (0, 9, 10))
    for value, expected in zip(values, TIMM_PARAMETERS[name]):
        assert value == pytest.approx(expected) if expected is not None else value is None
    assert spec.signed == (name in SIGNED)
    if name in SIGNED:  # the sign is drawn with probability 1/2; "Increasing" enhance factors are 1 +- value
        augment = RandAugment(parse_rand_augment("rand-m9"))
        drawn = [augment.parameter(spec, 9, generator(seed)) for seed in range(400)]
        centre = 1.0 if name.endswith("Increasing") else 0.0
        assert {round(abs(value - centre), 6) for value in drawn} == {round(values[1], 6)}
        assert 160 < sum(value > centre for value in drawn) < 240


@pytest.mark.parametrize("magnitude", [0, 9, 10])  # the whole range mstd can reach (clipped to [0, 10])
def test_each_op_runs_on_an_rgb_image_and_keeps_its_size(magnitude):
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (20, 24, 3), dtype=np.uint8))
    augment = RandAugment(parse_rand_augment("rand-m9-mstd0.5-inc1"))
    for name in TIMM_INCREASING_OPS + TIMM_OPS:
        spec = OP_TABLE[name]
        output = OPERATIONS[spec.operation](image, augment.parameter(spec, magnitude, generator(0)), augment)
        assert output.size == image.size and output.mode == "RGB", name


def test_posterize_increasing_at_full_magnitude_keeps_no_bit():
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (20, 24, 3), dtype=np.uint8))
    augment = RandAugment(parse_rand_augment("rand-m10-inc1"))
    bits = augment.parameter(OP_TABLE["PosterizeIncreasing"], 10, generator(0))
    assert bits == 0
    assert not np.asarray(OPERATIONS["posterize"](image, bits, augment)).any()
    assert np.array_equal(np.asarray(OPERATIONS["posterize"](image, 4, augment)), np.asarray(image) & 0xF0)


def test_geometric_ops_fill_with_the_mean_colour_and_invert_is_exact():
    assert fill_color(IMAGENET_DEFAULT_MEAN) == (124, 116, 104)  # timm's img_mean for ImageNet
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    augment = RandAugment(parse_rand_augment("rand-m10"), fill=(124, 116, 104))
    rotated = np.asarray(OPERATIONS["rotate"](white, 30.0, augment))
    assert tuple(rotated[0, 0]) == (124, 116, 104) and tuple(rotated[8, 8]) == (255, 255, 255)
    shifted = np.asarray(OPERATIONS["translate_x"](white, 0.45, augment))
    assert tuple(shifted[8, -1]) == (124, 116, 104) and tuple(shifted[8, 0]) == (255, 255, 255)
    image = np.random.RandomState(1).randint(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(OPERATIONS["invert"](Image.fromarray(image), None, augment)), 255 - image)


def test_each_op_applies_with_probability_one_half():
    # One op (Invert) drawn once per image: about half the images are inverted, the rest untouched.
    augment = RandAugment(parse_rand_augment("rand-n1"))
    augment.specs = (OP_TABLE["Invert"],)
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    inverted = sum(np.asarray(augment(image, generator(seed)))[0, 0, 0] == 245 for seed in range(1000))
    assert 440 < inverted < 560
    always = RandAugment(parse_rand_augment("rand-n1-p1.0"))
    always.specs = (OP_TABLE["Invert"],)
    assert all(np.asarray(always(image, generator(seed)))[0, 0, 0] == 245 for seed in range(20))


def test_magnitude_noise_is_normal_around_m_clipped_and_uniform_above_std_100():
    noisy = RandAugment(parse_rand_augment("rand-m9-mstd0.5"))
    draws = torch.tensor([noisy.sample_magnitude(generator(seed)) for seed in range(2000)])
    assert abs(draws.mean() - 9.0) < 0.05 and abs(draws[draws < 10].std() - 0.45) < 0.1 and draws.max() == 10.0
    assert RandAugment(parse_rand_augment("rand-m9")).sample_magnitude(generator(0)) == 9.0
    wide = RandAugment(parse_rand_augment("rand-m8-mstd5-mmax12"))
    assert max(wide.sample_magnitude(generator(seed)) for seed in range(500)) == 12.0
    uniform = torch.tensor([RandAugment(parse_rand_augment("rand-m9-mstd101")).sample_magnitude(generator(seed))
                            for seed in range(2000)])
    assert uniform.min() >= 0 and uniform.max() <= 9 and abs(uniform.mean() - 4.5) < 0.2


def test_rand_augment_is_deterministic_per_sample_seed_and_never_uses_the_global_rng():
    image = np.random.RandomState(2).randint(0, 256, (40, 30, 3), dtype=np.uint8)
    transform = ClassificationTrainTransform(16, auto_augment="rand-m9-mstd0.5-inc1", normalize=False)
    state = torch.random.get_rng_state()
    first = transform(image, generator(7))["pixel_values"]
    assert torch.equal(state, torch.random.get_rng_state())
    assert first.dtype == torch.uint8 and first.shape == (3, 16, 16)
    assert torch.equal(first, transform(Image.fromarray(image), generator(7))["pixel_values"])
    outputs = [transform(image, generator(seed))["pixel_values"] for seed in range(8)]
    assert len({output.numpy().tobytes() for output in outputs}) == 8
    # Off, the transform is the plain crop + flip, draw for draw.
    plain = PretrainingTransform(16, scale=CAE_CROP_SCALE, normalize=False)
    for off in (ClassificationTrainTransform(16, normalize=False),
                ClassificationTrainTransform(16, auto_augment="none", color_jitter=0.0, normalize=False)):
        assert torch.equal(off(image, generator(3))["pixel_values"], plain(image, generator(3))["pixel_values"])


def test_color_jitter_draws_factors_in_range_and_timm_turns_it_off_under_rand_augment():
    grey = Image.new("RGB", (4, 4), (100, 100, 100))
    # Contrast and saturation leave a grey image alone, so only the brightness factor in [0.6, 1.4] shows.
    values = [int(np.asarray(color_jitter(grey, 0.4, generator(seed)))[0, 0, 0]) for seed in range(300)]
    assert 60 <= min(values) <= 64 and 136 <= max(values) <= 140
    assert color_jitter(grey, 0.0, generator(0)) is grey
    image = np.random.RandomState(3).randint(0, 256, (20, 20, 3), dtype=np.uint8)
    jitter = ClassificationTrainTransform(16, color_jitter=0.4, normalize=False)
    assert torch.equal(jitter(image, generator(1))["pixel_values"], jitter(image, generator(1))["pixel_values"])
    assert not torch.equal(jitter(image, generator(1))["pixel_values"],
                           ClassificationTrainTransform(16, normalize=False)(image, generator(1))["pixel_values"])
    assert ClassificationTrainTransform(16, auto_augment="rand-m9", color_jitter=0.4).color_jitter is None


@pytest.mark.parametrize("flags, message", [
    (dict(aa="rand-x"), r"--aa 'rand-x': unknown section 'x'\. Expected rand-<section>.*rand-m9-mstd0\.5-inc1"),
    (dict(aa="augmix-m3"), r"--aa 'augmix-m3': only RandAugment \('rand-\.\.\.'\) is implemented"),
    (dict(aa="rand-m11"), r"--aa 'rand-m11': m must be at most mmax \(10\)"),
    (dict(aa="rand-inc0"), r"--aa 'rand-inc0': inc takes 1"),
    (dict(aa="rand-n0"), r"--aa 'rand-n0': n must be at least 1"),
    (dict(aa="rand-p1.5"), r"--aa 'rand-p1\.5': p must be a probability"),
    (dict(color_jitter=-0.1), r"--color_jitter -0\.1 is not valid: a strength >= 0"),
    (dict(aa="rand-m9", color_jitter=0.4), r"--color_jitter 0\.4 is not valid: colour jitter is not applied while "
                                            r"RandAugment is on \(--aa rand-m9\).*--aa none"),
    (dict(mode="linear_probe", aa="rand-m9"), r"--mode 'linear_probe' is not valid: .*--aa and --color_jitter"),
    (dict(mode="attentive_probe", color_jitter=0.4, aa="none"), r"--mode 'attentive_probe' is not valid"),
])
def test_rand_augment_and_color_jitter_flags_are_validated(flags, message):
    with pytest.raises(ValueError, match=message):
        ClassificationArguments(**flags)


def test_recipes_fill_rand_augment_and_refuse_an_explicit_jitter_it_would_disable(tmp_path):
    def resolved(model_type="mixedae", **flags):
        arguments_ = ClassificationArguments(**flags)
        resolve_recipe(TrainingArguments(output_dir=str(tmp_path)), arguments_, model_type)
        return arguments_.aa, arguments_.color_jitter

    assert resolved() == ("rand-m9-mstd0.5-inc1", None)  # MAE: RandAugment, no jitter
    assert resolved("cae") == ("rand-m9-mstd0.5-inc1", 0.4)  # CAE: its jitter default, inert under RandAugment
    assert resolved(aa="none", color_jitter=0.3) == ("none", 0.3)
    assert resolved(mode="linear_probe") == resolved(mode="attentive_probe") == (None, None)
    with pytest.raises(ValueError, match=r"--color_jitter 0\.4 is not valid: .*the mae recipe's default.*--aa none"):
        resolved(color_jitter=0.4)
