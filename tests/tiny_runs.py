"""Tiny pre-training runs on the bundled data (16 px images, 4 px patches, width 32, batches of 8), as argument groups
(`arguments`) or run_mim.py command lines (`command_line`); shared by the misuse and fault tests. `load_run_mim` imports run_mim.py
to call its `main` in this process."""

import hashlib
import importlib.util
from pathlib import Path

from transformers_mixedae.training.arguments import (
    DataArguments,
    ModelArguments,
    PretrainingEvaluationArguments,
    TrainingArguments,
)

REPOSITORY = Path(__file__).resolve().parents[1]
RUN_MIM = REPOSITORY / "examples" / "run_mim.py"
RUN_IMAGE_CLASSIFICATION = REPOSITORY / "examples" / "run_image_classification.py"
TINY_MIXEDAE = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,decoder_hidden_size=16,"
    "decoder_num_hidden_layers=1,decoder_num_attention_heads=2,decoder_intermediate_size=32"
)
TINY_CAE = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,decoder_hidden_size=32,"
    "regressor_num_layers=1,decoder_num_layers=1,decoder_num_attention_heads=4,num_masking_patches=8,"
    "mask_min_num_patches=2,target=pixels"
)
SETTINGS = dict(
    model_type="mixedae", config_overrides=TINY_MIXEDAE, image_size=16, patch_size=4, attn_implementation="eager",
    max_train_samples=64, max_eval_samples=8, max_eval_train_samples=16, per_device_train_batch_size=8,
    per_device_eval_batch_size=16, max_steps=4, logging_steps=1, linear_probe_epochs=1, seed=3,
    save_visualizations=False,
)
MODEL_FIELDS = set(ModelArguments.__dataclass_fields__)
DATA_FIELDS = set(DataArguments.__dataclass_fields__)
EVALUATION_FIELDS = set(PretrainingEvaluationArguments.__dataclass_fields__)


def arguments(output_dir, **overrides):
    """The four argument groups of a tiny run (`SETTINGS` + overrides)."""
    values = {**SETTINGS, "output_dir": str(output_dir), **overrides}
    if values["model_type"] == "cae" and "config_overrides" not in overrides:
        values["config_overrides"] = TINY_CAE
    model = {key: value for key, value in values.items() if key in MODEL_FIELDS}
    data = {key: value for key, value in values.items() if key in DATA_FIELDS}
    evaluation = {key: value for key, value in values.items() if key in EVALUATION_FIELDS}
    training = {key: value for key, value in values.items()
                if key not in MODEL_FIELDS | DATA_FIELDS | EVALUATION_FIELDS}
    return (ModelArguments(**model), DataArguments(**data), TrainingArguments(**training),
            PretrainingEvaluationArguments(**evaluation))


def command_line(output_dir, **overrides) -> list[str]:
    """The same run as `arguments(output_dir, **overrides)`, as run_mim.py arguments."""
    values = {**SETTINGS, "output_dir": str(output_dir), **overrides}
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


def folder_fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file below `folder`."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(Path(folder).rglob("*")) if path.is_file()
    }


def load_run_mim():
    """examples/run_mim.py as a module (its `main(argv)` runs a job in this process)."""
    spec = importlib.util.spec_from_file_location("run_mim", RUN_MIM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
