"""Tiny configurations shared by the tests (<= 2 layers, < 1M parameters)."""

import functools
import sys

import pytest
import torch

from transformers_mixedae import CAEConfig, CAEForPreTraining, MixedAEConfig, MixedAEForPreTraining

# torchrun with two local processes; `--standalone` lets the rendezvous pick and hold a free port itself (a port
# probed here and handed over could be taken by another process in between).
TORCHRUN_TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def tiny_mixedae_config(**overrides) -> MixedAEConfig:
    values = dict(
        image_size=32,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=20,
        attn_implementation="eager",
    )
    values.update(overrides)
    return MixedAEConfig(**values)


def tiny_mae_mode_overrides() -> dict:
    """MixedAE settings that reduce it to MAE."""
    return dict(
        mixing_ratio=1.0,
        mask_ratio=0.75,
        segment_embedding="none",
        homologous_attention_layers=[],
        homologous_contrastive_weight=0.0,
    )


def tiny_cae_config(**overrides) -> CAEConfig:
    """32 px images, 8 px patches (4x4 grid), 6 of 16 patches masked, with a width projection (32 -> 16)."""
    values = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        decoder_hidden_size=16,
        regressor_num_layers=2,
        decoder_num_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=24,
        vocab_size=50,
        num_masking_patches=6,
        mask_min_num_patches=2,
        drop_path_rate=0.0,
        attn_implementation="eager",
    )
    values.update(overrides)
    return CAEConfig(**values)


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's tiny models on one thread: they gain nothing from two, and on a busy 2-core machine the
    second thread's spin-waiting makes them an order of magnitude slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.cache
def tiny_models() -> tuple[MixedAEForPreTraining, CAEForPreTraining]:
    """16 px images, 4 px patches (4x4 grid), 3 channels; MixedAE mixes groups of 4, CAE masks 6 of 16 patches."""
    torch.manual_seed(0)
    common = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, decoder_hidden_size=16, decoder_num_attention_heads=2,
                  attn_implementation="eager")
    mixedae = MixedAEForPreTraining(MixedAEConfig(**common, decoder_num_hidden_layers=1, decoder_intermediate_size=32))
    cae = CAEForPreTraining(CAEConfig(**common, regressor_num_layers=1, decoder_num_layers=1, num_masking_patches=6,
                                      mask_min_num_patches=2, target="pixels", drop_path_rate=0.0))
    return mixedae, cae


def make_the_first_loss_nonfinite(monkeypatch, task_class) -> list:
    """Patch `task_class.loss` so that the first micro-batch's loss is infinite (that optimizer step is skipped);
    returns the list of calls, one entry per micro-batch."""
    calls = []
    original_loss = task_class.loss

    def loss_with_a_nonfinite_first_step(self, model, batch):
        calls.append(1)
        loss = original_loss(self, model, batch)
        return loss * float("inf") if len(calls) == 1 else loss

    monkeypatch.setattr(task_class, "loss", loss_with_a_nonfinite_first_step)
    return calls


def fake_hub(monkeypatch) -> dict:
    """Replace `huggingface_hub.HfApi` by a recorder: `token`, `created` (repo id, private), `uploaded` (full repo id,
    folder), `files` (the folder's files, relative, that the upload's ignore patterns leave) and `revision`. Bare
    names resolve to `user/<name>`, as the Hub does for the logged-in user."""
    import fnmatch
    from pathlib import Path

    calls = {}

    class RecordingApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["created"] = (repo_id, private)
            return type("RepoUrl", (), {"repo_id": repo_id if "/" in repo_id else f"user/{repo_id}"})()

        def create_branch(self, repo_id, branch, exist_ok=False):
            calls["branch"] = branch

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None, ignore_patterns=None):
            folder = Path(folder_path)
            files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
            calls["uploaded"], calls["revision"] = (repo_id, folder), revision
            calls["files"] = [name for name in files
                              if not any(fnmatch.fnmatch(name, pattern) for pattern in ignore_patterns or ())]
            calls["file_contents"] = {name: (folder / name).read_bytes() for name in calls["files"]}

    monkeypatch.setattr("huggingface_hub.HfApi", RecordingApi)
    return calls
