"""Constant-time resume of the training stream: a loader restored from `state_dict()` continues with exactly the
examples (and per-sample seeds) an uninterrupted loader gives, and decodes none of those it had already yielded."""

import gc
import shutil

import datasets
import pytest
import torch

import tiny_runs
from transformers_mixedae.data import build_pretraining_dataloader, streaming
from transformers_mixedae.tasks.masked_image_modeling import run_pretraining
from transformers_mixedae.tasks.masked_image_modeling_data import SeededTransform

from test_data import NUM_TRAIN, id_records, identify, load_shards, write_shards
from test_pretraining import final_weights


@pytest.fixture(autouse=True)
def _no_stream_shutdown_stall(monkeypatch):
    # A shuffled multi-shard Parquet stream sleeps 5 s whenever an iterator closes (arrow#45214 workaround).
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for num_shards in (4, 3):
        write_shards(root / f"train{num_shards}", id_records(range(NUM_TRAIN)), num_shards, "train")
    write_shards(root / "validation", id_records(range(1000, 1010)), 1, "validation")
    return root


@pytest.fixture
def decode_log(tmp_path, monkeypatch):
    """A file with one line per decoded image, written by every process (DataLoader workers included)."""
    path = tmp_path / "decoded.txt"
    path.touch()
    original = streaming.load_rgb_image

    def counted(value):
        with open(path, "a") as log:
            log.write("1\n")
        return original(value)

    monkeypatch.setattr(streaming, "load_rgb_image", counted)
    return path


def decoded(path) -> int:
    return len(path.read_text().splitlines())


class SeedRecorder:
    """`identify` behind a `SeededTransform`: each item also carries the first draw of its per-sample generator."""

    def __init__(self):
        self.seeded = SeededTransform(self._transform, seed=5, rank=0)

    @staticmethod
    def _transform(image, generator):
        item = identify(image)
        item["pixel_values"] = torch.cat([item["pixel_values"], torch.randint(0, 2**30, (1,), generator=generator)])
        return item


def loader_for(dataset, num_workers, world_size=1, rank=0, transform=None):
    return build_pretraining_dataloader(dataset, transform or SeedRecorder().seeded, batch_size=4, rank=rank,
                                        world_size=world_size, seed=3, num_workers=num_workers, drop_last=False,
                                        shuffle_buffer_size=8)


def rows(loader) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in row) for batch in loader for row in batch["pixel_values"]]


SOURCES = {
    "streamed, 4 shards": (4, True, 1),
    "streamed, 3 shards on rank 1 of 2 (split by example)": (3, True, 2),
    "map-style": (4, False, 1),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("source", list(SOURCES))
def test_a_restored_loader_continues_exactly_and_decodes_only_new_images(shard_dirs, decode_log, source,
                                                                          num_workers):
    num_shards, stream, world_size = SOURCES[source]
    dataset = load_shards(shard_dirs, num_shards=num_shards, streaming=stream).train
    rank = world_size - 1
    epoch = 1

    def fresh():
        loader = loader_for(dataset, num_workers, world_size, rank)
        loader.set_epoch(epoch)
        loader.stream.transform.set_epoch(epoch)
        return loader

    expected = rows(fresh())
    assert len(expected) > 24 and len({sample for sample, _ in expected}) == len(expected)

    interrupted = fresh()
    iterator = iter(interrupted)
    consumed = [tuple(int(v) for v in row) for _ in range(6) for row in next(iterator)["pixel_values"]]
    state = interrupted.state_dict()
    del iterator, interrupted
    gc.collect()  # shuts its workers down: what they read ahead is logged before the count below
    assert consumed == expected[:24]

    before = decoded(decode_log)
    resumed = fresh()
    resumed.load_state_dict(state)
    rest = rows(resumed)
    assert rest == expected[24:]  # same images, same per-sample random draws
    assert decoded(decode_log) - before == len(expected) - 24  # nothing consumed before the checkpoint is decoded


def test_state_dict_is_plain_data_a_checkpoint_can_load_safely(shard_dirs, tmp_path):
    loader = loader_for(load_shards(shard_dirs).train, num_workers=2)
    iterator = iter(loader)
    next(iterator)
    path = tmp_path / "state.pt"
    torch.save(loader.state_dict(), path)
    assert torch.load(path, weights_only=True) == loader.state_dict()


# ---------------------------------------------------------------------------------------------- whole runs
def training_transform_log(tmp_path, monkeypatch):
    """A file with one line per training image transformed (= decoded), by any process; evaluation transforms
    (seeded differently) are not counted."""
    path = tmp_path / "transformed.txt"
    original = SeededTransform.__call__

    def counted(self, image):
        if self.seed == tiny_runs.SETTINGS["seed"]:
            with open(path, "a") as log:
                log.write("1\n")
        return original(self, image)

    monkeypatch.setattr(SeededTransform, "__call__", counted)
    return path


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_run_resumed_late_in_an_epoch_decodes_only_the_rest_and_ends_with_the_same_weights(
    tmp_path, monkeypatch, num_workers
):
    # 64 images / batch 8 = 8 batches per epoch; the checkpoint after batch 7 leaves one batch of the epoch.
    settings = dict(max_steps=8, save_steps=7, save_total_limit=None, dataloader_num_workers=num_workers,
                    max_eval_train_samples=8)
    uninterrupted = tmp_path / "uninterrupted"
    run_pretraining(*tiny_runs.arguments(uninterrupted, **settings))

    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_7", resumed / "checkpoints" / "step_7")
    log = training_transform_log(tmp_path, monkeypatch)
    run_pretraining(*tiny_runs.arguments(resumed, resume_from_checkpoint="latest", **settings))
    assert len(log.read_text().splitlines()) == 8  # the last batch only (a replay decodes all 64)

    expected, actual = final_weights(uninterrupted), final_weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_an_epoch_cut_short_by_accumulation_decodes_only_the_batches_it_uses(tmp_path, monkeypatch):
    # 8 batches of 8 per epoch, 3 accumulated per step: 2 steps (6 batches) per epoch, the last 2 batches unused.
    log = training_transform_log(tmp_path, monkeypatch)
    run_pretraining(*tiny_runs.arguments(tmp_path / "run", max_steps=3, gradient_accumulation_steps=3,
                                         max_eval_train_samples=8))
    assert len(log.read_text().splitlines()) == (6 + 3) * 8  # epoch 0's six batches, then three of epoch 1


def test_a_resume_mid_epoch_with_another_number_of_workers_is_refused_naming_the_checkpoints(tmp_path):
    # The order of an epoch's examples depends on the number of workers: replaying the consumed batches with another
    # number would drop other examples than those already used.
    settings = dict(max_steps=3, save_steps=2, max_eval_train_samples=8)
    run_pretraining(*tiny_runs.arguments(tmp_path / "first", **settings))
    shutil.copytree(tmp_path / "first" / "checkpoints" / "step_2", tmp_path / "second" / "checkpoints" / "step_2")
    with pytest.raises(ValueError, match=r"^--dataloader_num_workers 2 is not the checkpoint's \(0\), and the order "
                                         r"of an epoch's examples depends on it: resume with --dataloader_num_workers "
                                         r"0\.$"):
        run_pretraining(*tiny_runs.arguments(tmp_path / "second", resume_from_checkpoint="latest",
                                             dataloader_num_workers=2, **settings))


def test_a_resume_with_another_shuffle_block_size_is_refused_naming_the_checkpoints(tmp_path):
    settings = dict(max_steps=3, save_steps=2, max_eval_train_samples=8)
    run_pretraining(*tiny_runs.arguments(tmp_path / "first", **settings))
    shutil.copytree(tmp_path / "first" / "checkpoints" / "step_2", tmp_path / "second" / "checkpoints" / "step_2")
    with pytest.raises(ValueError, match=r"--shuffle_buffer_size 7 is not the checkpoint's \(10000\): resume with "
                                         r"--shuffle_buffer_size 10000"):
        run_pretraining(*tiny_runs.arguments(tmp_path / "second", resume_from_checkpoint="latest",
                                             shuffle_buffer_size=7, **settings))
    assert sorted(path.name for path in (tmp_path / "second" / "checkpoints").iterdir()) == ["step_2"]
