"""`transformers.Trainer` (what users of `run_mae.py`-style scripts train with) trains both pre-training models with
the package's `PretrainingDataCollator`."""

import datasets
import pytest
import torch
from transformers import Trainer, TrainingArguments

import transformers_mixedae  # noqa: F401
from transformers_mixedae import CAEConfig, CAEForPreTraining, MixedAEConfig, MixedAEForPreTraining
from transformers_mixedae.data import load_image_dataset
from transformers_mixedae.models.masking import PretrainingDataCollator
from transformers_mixedae.hub.registration import pil_image_processor_class

TINY = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64)
MODELS = {
    "mixedae": lambda: MixedAEForPreTraining(MixedAEConfig(
        **TINY, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32)),
    "cae": lambda: CAEForPreTraining(CAEConfig(
        **TINY, decoder_hidden_size=32, regressor_num_layers=1, decoder_num_layers=1, decoder_num_attention_heads=4,
        num_masking_patches=8, mask_min_num_patches=2, target="pixels")),
}


def bundled_images(count: int, config) -> datasets.Dataset:
    """The bundled Fashion-MNIST images through the model's own image processor (grey images become RGB)."""
    processor = pil_image_processor_class(config).from_model_config(config)
    train = load_image_dataset(max_train_samples=count).train
    return train.with_transform(lambda batch: {"pixel_values": list(processor(batch["image"])["pixel_values"])})


@pytest.mark.parametrize("model_type", ["mixedae", "cae"])
def test_trainer_trains_a_pretraining_model_with_the_package_collator(model_type, tmp_path):
    torch.manual_seed(0)
    model = MODELS[model_type]()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3, logging_steps=1,
        report_to=[], remove_unused_columns=False, use_cpu=True, save_strategy="no", dataloader_drop_last=True,
    )
    collator = PretrainingDataCollator(model.config, seed=0)
    trainer = Trainer(model=model, args=arguments, train_dataset=bundled_images(32, model.config), data_collator=collator)
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_the_collator_keeps_whole_groups_and_adds_the_masks_a_cae_config_describes():
    images = [{"pixel_values": torch.full((3, 16, 16), float(index))} for index in range(7)]
    mixedae = PretrainingDataCollator(MixedAEConfig(**TINY, mixing_ratio=0.25))
    batch = mixedae(images)
    assert batch.keys() == {"pixel_values"} and batch["pixel_values"].shape == (4, 3, 16, 16)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="a batch of 3 images has no full group of 4"):
        mixedae(images[:3])
    cae_config = CAEConfig(**TINY, num_masking_patches=5, mask_min_num_patches=2, mask_type="random")
    cae = PretrainingDataCollator(cae_config, seed=0)(images)
    assert cae["bool_masked_pos"].shape == (7, 16) and cae["bool_masked_pos"].sum(dim=1).tolist() == [5] * 7
