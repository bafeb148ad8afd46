"""The README's Python code runs as written (Hub ids and placeholder paths replaced by tiny local checkpoints), and
the public classes work the way the README calls them, in this environment (no torchvision, no network)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForPreTraining, ViTMAEConfig, ViTMAEForPreTraining, pipeline

from transformers_mixedae import (
    CAEImageProcessor,
    CAEImageProcessorPil,
    MixedAEConfig,
    MixedAEForPreTraining,
    MixedAEImageProcessor,
    MixedAEImageProcessorPil,
)

README = Path(__file__).resolve().parents[1] / "README.md"

# Narrow but 224 px with 16 px patches, so the README's 224 px inputs and 196-position noise stay valid.
TINY_224 = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
)


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def local_checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("readme")
    vit_mae = ViTMAEConfig(image_size=224, patch_size=16, **TINY_224)
    ViTMAEForPreTraining(vit_mae).save_pretrained(folder / "vit-mae")
    MixedAEForPreTraining(MixedAEConfig(**TINY_224)).save_pretrained(folder / "pretraining")
    return {"vit_mae": folder / "vit-mae", "pretraining": folder / "pretraining"}


def replacements(checkpoints: dict[str, Path]) -> dict[str, str]:
    """README text -> what the test runs instead: Hub ids and placeholders become local folders, ViT-B a tiny ViT."""
    tiny = ", ".join(f"{key}={value}" for key, value in TINY_224.items())
    return {
        "MixedAEForPreTraining(MixedAEConfig())": f"MixedAEForPreTraining(MixedAEConfig({tiny}))",
        '"facebook/vit-mae-base"': repr(str(checkpoints["vit_mae"])),
        '"path/to/pretraining/output"': repr(str(checkpoints["pretraining"])),
    }


def test_readme_has_the_python_blocks_this_test_knows():
    # A new block must be added to test_every_python_block_runs' expectations, not silently left untested.
    assert len(python_blocks()) == 1


def test_every_python_block_runs(local_checkpoints, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    remaining = replacements(local_checkpoints)
    for index, block in enumerate(python_blocks()):
        for original, replacement in list(remaining.items()):
            if original in block:
                assert block.count(original) == 1, f"{original!r} appears more than once in block {index}"
                block = block.replace(original, replacement)
                del remaining[original]
        namespace: dict = {"__name__": f"readme_block_{index}"}
        exec(compile(block, f"README.md python block {index}", "exec"), namespace)  # noqa: S102 - our own README
    # Every substitution was used: a README edit that drops one is caught, not silently skipped.
    assert remaining == {}
    # The last statement of the models block: features of the encoder on two images.
    assert namespace["features"].shape == (2, 32)
    assert type(namespace["model"]) is MixedAEForPreTraining and namespace["model"].config.hidden_size == 32


def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(300, 260, 3), dtype=np.uint8))


def test_processors_work_the_way_the_readme_calls_them():
    # `MixedAEImageProcessor()` and `CAEImageProcessor(return_bool_masked_pos=True)` are the names the README uses;
    # without torchvision they give the PIL processors.
    pixel_values = MixedAEImageProcessor()(photo(), return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 224, 224)
    assert torch.equal(pixel_values, MixedAEImageProcessorPil()(photo(), return_tensors="pt").pixel_values)
    batch = CAEImageProcessor(return_bool_masked_pos=True)([photo(), photo()], return_tensors="pt")
    assert batch.pixel_values.shape == (2, 3, 224, 224)
    assert batch.bool_masked_pos.shape == (2, 196) and batch.bool_masked_pos.sum(-1).tolist() == [98, 98]
    assert torch.equal(batch.pixel_values[:1], CAEImageProcessorPil()(photo(), return_tensors="pt").pixel_values)


def test_output_folder_loads_with_the_auto_class_and_the_pipeline(local_checkpoints, tmp_path):
    # "loads with `AutoModelForPreTraining.from_pretrained(output_dir)`"; pipelines on our checkpoints.
    output_dir = tmp_path / "output"
    MixedAEForPreTraining.from_pretrained(local_checkpoints["pretraining"]).save_pretrained(output_dir)
    MixedAEImageProcessorPil().save_pretrained(output_dir)
    assert type(AutoModelForPreTraining.from_pretrained(output_dir)) is MixedAEForPreTraining
    features = pipeline("image-feature-extraction", model=str(output_dir))(photo())
    assert np.asarray(features).shape == (1, 197, 32)
