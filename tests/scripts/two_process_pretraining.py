"""Launched by tests/test_pretraining.py as two torchrun processes (gloo on CPU).

Each rank records a hash of every source image its training augmentation received and a checksum of every
parameter of its final model, then the test compares the two ranks.
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator

import transformers_mixedae.tasks.masked_image_modeling as pretraining
from transformers_mixedae.training import final_save
from transformers_mixedae.tasks.masked_image_modeling_data import SeededTransform

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_pretraining import arguments  # noqa: E402


def main(output_dir: str) -> None:
    seen: list[int] = []
    original_call, original_save = SeededTransform.__call__, final_save.save_final_model

    def recording_call(self, image):
        seen.append(hash(image.tobytes()))
        return original_call(self, image)

    def recording_save(accelerator, model, *args, **kwargs):
        weights = {
            name: parameter.detach().double().sum().item()
            for name, parameter in accelerator.unwrap_model(model).named_parameters()
        }
        Path(output_dir, f"weights_{accelerator.process_index}.json").write_text(json.dumps(weights))
        return original_save(accelerator, model, *args, **kwargs)

    SeededTransform.__call__, final_save.save_final_model = recording_call, recording_save
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.state
    pretraining.run_pretraining(*arguments(output_dir, max_steps=2), accelerator=accelerator)
    Path(output_dir, f"seen_{accelerator.process_index}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1])
