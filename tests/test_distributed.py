"""Sharded training through Accelerate: the ready configurations in examples/accelerate_configs/, FSDP's wrapping of
our models, the final save of sharded weights, and what happens where accelerate cannot shard (CPU)."""

import logging
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator, PartialState
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, is_deepspeed_available
from accelerate.utils.dataclasses import get_module_class_from_name
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

from helpers import tiny_models
from tiny_runs import REPOSITORY, RUN_MIM, command_line
from transformers_mixedae.models.vit_layers import ViTLayer
from transformers_mixedae.training.final_save import save_final_model
from transformers_mixedae.training.loop import refuse_what_sharding_breaks, warn_if_sharding_is_not_applied

CONFIGS = REPOSITORY / "examples" / "accelerate_configs"


def test_the_ready_configurations_parse_with_accelerates_loader():
    ddp = load_config_from_file(str(CONFIGS / "ddp.yaml"))
    fsdp = load_config_from_file(str(CONFIGS / "fsdp_full_shard.yaml"))
    deepspeed = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU
    assert fsdp.distributed_type == DistributedType.FSDP
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == ViTLayer.__name__
    assert deepspeed.distributed_type == DistributedType.DEEPSPEED
    assert deepspeed.deepspeed_config["zero_stage"] == 2
    assert deepspeed.deepspeed_config["gradient_accumulation_steps"] == "auto"


def test_fsdp_wraps_every_transformer_layer_of_both_models_and_nothing_else():
    config = load_config_from_file(str(CONFIGS / "fsdp_full_shard.yaml")).fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=config["fsdp_version"], auto_wrap_policy=config["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=config["fsdp_transformer_layer_cls_to_wrap"].split(","),
    )
    for model in tiny_models():
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        wrapped = [name for name, module in model.named_modules() if policy(module)]
        layers = [name for name, module in model.named_modules() if isinstance(module, ViTLayer)]
        assert wrapped == layers and len(layers) >= 2, type(model).__name__  # encoder and decoder layers


def test_no_split_modules_name_classes_each_model_has():
    for model in tiny_models():
        for name in model._no_split_modules:
            assert get_module_class_from_name(model, name) is not None, (type(model).__name__, name)
        assert ViTLayer.__name__ in model._no_split_modules


def test_the_final_save_gathers_sharded_weights_on_every_rank_and_saves_them(tmp_path):
    PartialState(cpu=True)  # accelerate's logger needs its state
    model, _ = tiny_models()
    gathered = {name: torch.full_like(tensor, 0.5) for name, tensor in model.state_dict().items()}
    calls = []

    def accelerator(is_main_process):
        return SimpleNamespace(
            distributed_type=DistributedType.FSDP, is_main_process=is_main_process, wait_for_everyone=lambda: None,
            unwrap_model=lambda module: module,
            get_state_dict=lambda module: calls.append(is_main_process) or gathered,
        )

    processor = SimpleNamespace(save_pretrained=lambda directory: None)
    save_final_model(accelerator(False), model, processor, tmp_path, {})
    assert calls == [False] and not (tmp_path / "model.safetensors").exists()  # joined the gather, wrote nothing
    save_final_model(accelerator(True), model, processor, tmp_path, {})
    assert calls == [False, True]
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved and all(torch.equal(tensor, torch.full_like(tensor, 0.5)) for tensor in saved.values())


def test_the_final_save_gathers_a_compiled_models_inner_weights_without_the_compile_prefix(tmp_path):
    PartialState(cpu=True)
    model, _ = tiny_models()
    compiled = torch.nn.Module()
    compiled._orig_mod = model  # what torch.compile's wrapper holds
    gathered_from = []
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP, is_main_process=True, wait_for_everyone=lambda: None,
        unwrap_model=lambda module: module,
        get_state_dict=lambda module: gathered_from.append(module) or module.state_dict(),
    )
    save_final_model(accelerator, compiled, SimpleNamespace(save_pretrained=lambda directory: None), tmp_path, {})
    assert gathered_from == [model]
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(model.state_dict())


def test_an_fsdp_configuration_that_accelerate_does_not_apply_is_named_in_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    caplog.set_level(logging.WARNING, logger="transformers_mixedae")
    accelerator = Accelerator(cpu=True)
    warn_if_sharding_is_not_applied(accelerator)
    assert accelerator.distributed_type != DistributedType.FSDP
    assert any("asks for FSDP, but this run is" in record.getMessage() and "cpu" in record.getMessage()
               for record in caplog.records)
    caplog.clear()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    warn_if_sharding_is_not_applied(accelerator)
    assert not caplog.records


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_model_ema_is_refused_under_sharding_and_allowed_otherwise(kind):
    sharded = SimpleNamespace(distributed_type=kind)
    with pytest.raises(ValueError, match=f"--model_ema is not supported under {kind.value}: each rank holds only"):
        refuse_what_sharding_breaks(sharded, SimpleNamespace(model_ema_decay=0.9999))
    refuse_what_sharding_breaks(sharded, SimpleNamespace(model_ema_decay=None))
    refuse_what_sharding_breaks(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU),
                                SimpleNamespace(model_ema_decay=0.9999))


@pytest.mark.skipif(not is_deepspeed_available() or not torch.cuda.is_available(),
                    reason="DeepSpeed runs need the deepspeed package and a GPU (not installed / none here)")
def test_deepspeed_zero2_trains_a_tiny_run_that_loads(tmp_path):
    run_launched(tmp_path, "deepspeed_zero2.yaml", max_steps=2)
    assert AutoModelForPreTraining.from_pretrained(tmp_path / "run").config.model_type == "mixedae"


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="accelerate 1.15 applies FSDP only on GPUs and other accelerators (on CPU it runs "
                           "MULTI_CPU data parallel), and no GPU is here")
def test_fsdp_checkpoints_resume_and_the_final_model_loads(tmp_path):
    settings = dict(max_steps=4, save_steps=2, save_total_limit=5)
    run_launched(tmp_path / "whole", "fsdp_full_shard.yaml", **settings)
    shutil.copytree(tmp_path / "whole" / "run" / "checkpoints" / "step_2",
                    tmp_path / "resumed" / "run" / "checkpoints" / "step_2")
    output = run_launched(tmp_path / "resumed", "fsdp_full_shard.yaml", resume_from_checkpoint="latest", **settings)
    assert "Resumed from" in output and "at step 2" in output
    assert (tmp_path / "resumed" / "run" / "checkpoints" / "step_4").is_dir()
    # Sharded states are gathered for the final save; a resumed run ends where the uninterrupted one did.
    expected, actual = (load_file(str(tmp_path / name / "run" / "model.safetensors")) for name in ("whole", "resumed"))
    assert expected.keys() == actual.keys()
    assert all(torch.allclose(expected[key], actual[key], rtol=0, atol=1e-6) for key in expected)
    assert AutoModelForPreTraining.from_pretrained(tmp_path / "resumed" / "run").config.model_type == "mixedae"


def run_launched(tmp_path, config: str, processes: int | None = None, **overrides) -> str:
    processes = processes or max(1, min(2, torch.cuda.device_count()))
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", str(processes), "--mixed_precision", "no", str(RUN_MIM),
               *command_line(tmp_path / "run", **overrides)]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return finished.stdout + finished.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the FSDP configuration shards (test above)")
def test_the_fsdp_configuration_on_two_cpu_processes_runs_data_parallel_checkpoints_resumes_and_loads(tmp_path):
    # Launched without --cpu: with it accelerate 1.15 starts a single process whatever the configuration says.
    settings = dict(max_steps=2, save_steps=1, save_total_limit=5, max_eval_train_samples=8, max_eval_samples=4)
    output = run_launched(tmp_path / "whole", "fsdp_full_shard.yaml", processes=2, **settings)
    assert "asks for FSDP, but this run is MULTI_CPU on cpu (2 processes)" in output
    shutil.copytree(tmp_path / "whole" / "run" / "checkpoints" / "step_1",
                    tmp_path / "resumed" / "run" / "checkpoints" / "step_1")
    output = run_launched(tmp_path / "resumed", "fsdp_full_shard.yaml", processes=2, resume_from_checkpoint="latest",
                          **settings)
    assert "Resumed from" in output and "at step 1" in output
    expected, actual = (load_file(str(tmp_path / name / "run" / "model.safetensors")) for name in ("whole", "resumed"))
    assert expected.keys() == actual.keys() and all(torch.equal(expected[key], actual[key]) for key in expected)
    assert AutoModelForPreTraining.from_pretrained(tmp_path / "resumed" / "run").config.model_type == "mixedae"
