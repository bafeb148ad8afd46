"""Pre-training data across ranks: when one rank is over `--max_skipped_fraction`, every rank stops together."""

import logging
import types

import pytest
import torch

def test_every_rank_stops_together_when_one_rank_is_over_the_skip_limit(tmp_path):
    from transformers_mixedae.tasks.masked_image_modeling_data import PretrainingData

    class OtherRankOverLimit:
        num_processes, process_index, device = 2, 1, torch.device("cpu")

        def __init__(self, other_ranks_over_limit: int):
            self.other_ranks_over_limit = other_ranks_over_limit

        def reduce(self, tensor, reduction):
            assert reduction == "sum"
            return tensor + self.other_ranks_over_limit

    def rank_state(other_ranks_over_limit):
        return types.SimpleNamespace(
            stats=types.SimpleNamespace(num_skipped=0, num_loaded=100),
            data_args=types.SimpleNamespace(max_skipped_fraction=0.05),
            training_args=types.SimpleNamespace(output_dir=str(tmp_path)),
            accelerator=OtherRankOverLimit(other_ranks_over_limit),
        )

    PretrainingData.check_skipped_fraction(rank_state(0))  # nobody over the limit: training goes on
    with pytest.raises(RuntimeError, match=r"Another rank could not decode more than --max_skipped_fraction 0\.05"):
        PretrainingData.check_skipped_fraction(rank_state(1))


def test_without_a_validation_split_every_task_skips_evaluation_with_a_warning(caplog):
    from types import SimpleNamespace

    from accelerate import PartialState

    from transformers_mixedae.tasks.masked_image_modeling_data import PretrainingData

    PartialState(cpu=True)  # accelerate's logger needs its state

    def must_not_run(model, step):
        raise AssertionError("evaluated without a validation split")

    data = SimpleNamespace(datasets=SimpleNamespace(validation=None), _evaluate=must_not_run)
    caplog.set_level(logging.WARNING)
    assert PretrainingData.evaluate(data, model=None, step=3) == {}
    assert "No validation split: skipping evaluation." in caplog.text


def test_a_checkpoint_of_another_number_of_processes_gives_no_loader_position_and_says_why():
    from transformers_mixedae.data.streaming import SkippedSampleStats
    from transformers_mixedae.tasks.masked_image_modeling_data import DataState

    position = {"epoch": 0, "batches": 3, "num_workers": 0, "shuffle_buffer_size": 1000, "loader": {}}
    saved = {"ranks": [{"num_skipped": 1, "num_loaded": 24, "position": position}]}  # written by one process
    same = DataState(SkippedSampleStats(), types.SimpleNamespace(process_index=0, num_processes=1))
    same.load_state_dict(saved)
    assert same.resume_position == position and same.resume_note is None
    other = DataState(SkippedSampleStats(), types.SimpleNamespace(process_index=0, num_processes=2))
    other.load_state_dict(saved)
    assert other.resume_position is None and other.stats.num_loaded == 24
    assert other.resume_note.startswith("the checkpoint was written by 1 process and this run has 2")
