"""Launched by tests/test_pretraining.py as two torchrun processes (gloo on CPU).

Each rank records a hash of every source image its training augmentation received and a checksum of every
parameter of its final model, then the test compares the two ranks. With `sigterm_rank_1`, only rank 1 gets SIGTERM
(after step 2 of 6, as a preemption notice reaching one node first) and each rank records its results.
"""

import json
import os
import signal
import sys
from pathlib import Path

from accelerate import Accelerator

import transformers_mixedae.tasks.masked_image_modeling as pretraining
from transformers_mixedae.training import final_save
from transformers_mixedae.tasks.masked_image_modeling_data import SeededTransform
from transformers_mixedae.training.loop import TrainingCallback

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


class SigtermToRankOne(TrainingCallback):
    def on_log(self, state, logs):
        if state.accelerator.process_index == 1 and state.progress.completed_steps == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def sigterm_rank_1(output_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    results = pretraining.run_pretraining(*arguments(output_dir, max_steps=6), accelerator=accelerator,
                                          callbacks=[SigtermToRankOne()])
    Path(output_dir, f"results_{accelerator.process_index}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    sigterm_rank_1(sys.argv[1]) if sys.argv[2:] == ["sigterm_rank_1"] else main(sys.argv[1])
