# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Save a model as a self-contained `trust_remote_code` folder (or Hub repository).

The folder holds the weights, `config.json` and `preprocessor_config.json` with an `auto_map`, and flat copies
of the modules that define the classes (`configuration_*.py`, `modeling_*.py`, `vit_layers.py`,
`image_processing_*.py`). `AutoConfig` / `AutoModel` / `AutoModelForPreTraining` /
`AutoModelForImageClassification` / `AutoBackbone` / `AutoImageProcessor.from_pretrained(folder,
trust_remote_code=True)` and
`pipeline(..., trust_remote_code=True)` then work where `transformers_mixedae` is not installed.

transformers only writes an `auto_map` entry for the class being saved, and only while that class is registered
with `register_for_auto_class`, which is process-wide state. `save_pretrained_with_remote_code` therefore
registers the classes, pre-seeds the full `auto_map` (every Auto class our package registers for this
`model_type`), saves, and restores the previous state, so a later plain `save_pretrained` stays plain.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from transformers import (
    AutoBackbone,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    PreTrainedModel,
)
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from .upload import upload_folder_to_hub

# The Auto classes our package registers (see `registration.py`), in the order they appear in `auto_map`.
MODEL_AUTO_CLASSES = {
    "AutoModel": AutoModel,
    "AutoModelForPreTraining": AutoModelForPreTraining,
    "AutoModelForImageClassification": AutoModelForImageClassification,
    "AutoBackbone": AutoBackbone,
}
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

_MISSING = object()


def class_reference(cls: type) -> str:
    """`"<module file stem>.<ClassName>"`, the form `auto_map` uses for code stored next to the weights."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def model_auto_map(config_class: type) -> dict[str, str]:
    """`auto_map` entries for the config and every model class registered for `config_class`."""
    auto_map = {"AutoConfig": class_reference(config_class)}
    for auto_name, auto_class in MODEL_AUTO_CLASSES.items():
        model_class = auto_class._model_mapping.get(config_class, None)
        if model_class is not None:
            auto_map[auto_name] = class_reference(model_class)
    return auto_map


def image_processor_auto_map(config_class: type) -> dict[str, str]:
    """`{"torchvision": ..., "pil": ...}` references of the processors registered for `config_class`.

    `AutoImageProcessor` picks the entry of the backend it resolves, so a folder saved here with the PIL class
    still gives the torchvision class to a user who has torchvision, and the other way round.
    """
    processors = IMAGE_PROCESSOR_MAPPING.get(config_class, None) or {}
    return {backend: class_reference(cls) for backend, cls in processors.items() if isinstance(cls, type)}


@contextmanager
def _temporary_attribute(owner, name: str, value) -> Iterator[None]:
    previous = owner.__dict__.get(name, _MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if previous is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, previous)


def save_pretrained_with_remote_code(
    model: PreTrainedModel,
    output_dir: str | os.PathLike,
    image_processor: ImageProcessingMixin | None = None,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    commit_message: str = "Upload model with remote code",
    **save_kwargs,
) -> Path:
    """Save `model` (and `image_processor`) to `output_dir` so that it loads with `trust_remote_code=True`.

    `save_kwargs` go to `model.save_pretrained` (e.g. `max_shard_size`), except the upload's `token`, `private`
    and `revision`. With `push_to_hub=True` the finished folder is uploaded to `repo_id` (default: the folder's
    name; created if needed, private with `private=True`). Returns the folder.
    Raises `RuntimeError` if a copied module would import anything that is not in the folder, `transformers`,
    or an installable third-party package.
    """
    if save_kwargs.pop("push_to_hub", False):
        push_to_hub = True  # accept transformers' keyword name too
    upload_settings = {name: save_kwargs.pop(name) for name in ("token", "private", "revision") if name in save_kwargs}
    output_dir = Path(output_dir)
    config = model.config
    config_class, model_class = type(config), type(model)
    auto_map = model_auto_map(config_class)
    model_auto_class = next((name for name, ref in auto_map.items() if ref == class_reference(model_class)), None)
    if model_auto_class is None or model_auto_class == "AutoConfig":
        raise ValueError(
            f"{model_class.__name__} is not registered with any Auto class for {config_class.__name__}: "
            "import transformers_mixedae (which registers its models) or register the class first."
        )

    with ExitStack() as stack:
        stack.enter_context(_temporary_attribute(config_class, "_auto_class", "AutoConfig"))
        stack.enter_context(_temporary_attribute(model_class, "_auto_class", model_auto_class))
        stack.enter_context(_temporary_attribute(config, "auto_map", dict(auto_map)))
        model.save_pretrained(output_dir, **save_kwargs)
    if image_processor is not None:
        # transformers stores the processor's auto_map on the instance; keep the caller's object unchanged.
        with (
            _temporary_attribute(type(image_processor), "_auto_class", "AutoImageProcessor"),
            _temporary_attribute(image_processor, "auto_map", {}),
        ):
            image_processor.save_pretrained(output_dir)
        _write_backend_auto_map(output_dir / PREPROCESSOR_CONFIG_NAME, image_processor_auto_map(config_class))

    check_remote_code_folder(output_dir)
    if push_to_hub:
        upload_folder_to_hub(output_dir, repo_id or output_dir.name, commit_message=commit_message, **upload_settings)
    return output_dir


def _write_backend_auto_map(processor_config_file: Path, backend_references: dict[str, str]) -> None:
    """Replace the single-class `AutoImageProcessor` reference transformers wrote by the per-backend map."""
    if not backend_references:
        return
    processor_config = json.loads(processor_config_file.read_text(encoding="utf-8"))
    processor_config.setdefault("auto_map", {})["AutoImageProcessor"] = backend_references
    processor_config_file.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- checks
def check_remote_code_folder(folder: str | os.PathLike) -> list[str]:
    """Check that the code in `folder` is self-contained; return the referenced module files.

    Every `auto_map` reference must name a `.py` file of the folder; every relative import of those files must
    resolve to a file of the folder; no file may import `transformers_mixedae` (it is absent where remote code
    is used). Raises `RuntimeError` listing every problem.
    """
    folder = Path(folder)
    problems: list[str] = []
    referenced: set[str] = set()
    for config_name in ("config.json", PREPROCESSOR_CONFIG_NAME):
        config_file = folder / config_name
        if not config_file.is_file():
            continue
        auto_map = json.loads(config_file.read_text(encoding="utf-8")).get("auto_map", {})
        for reference in local_auto_map_references(auto_map):
            module = reference.split(".")[0]
            referenced.add(module)
            if not (folder / f"{module}.py").is_file():
                problems.append(f"{config_name}: auto_map names {reference} but {module}.py is not in the folder")

    to_visit, visited = sorted(referenced), set()
    while to_visit:
        module = to_visit.pop()
        if module in visited or not (folder / f"{module}.py").is_file():
            continue
        visited.add(module)
        tree = ast.parse((folder / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                if node.level > 1 or node.module is None:
                    problems.append(
                        f"{module}.py: `from {'.' * node.level}{node.module or ''} import ...` leaves the folder"
                    )
                elif not (folder / f"{node.module}.py").is_file():
                    problems.append(f"{module}.py imports .{node.module}, which is not in the folder")
                else:
                    to_visit.append(node.module)
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "transformers_mixedae" for name in names):
                problems.append(f"{module}.py imports transformers_mixedae, which remote-code users do not have")
    if problems:
        raise RuntimeError("the remote-code folder is not self-contained:\n  " + "\n  ".join(problems))
    return sorted(f"{module}.py" for module in visited)


def local_auto_map_references(auto_map: dict) -> Iterator[str]:
    """The `"module.Class"` references of an `auto_map` whose code is meant to sit next to it."""
    for value in auto_map.values():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for reference in values:
            if reference:
                # "repo--module.Class" points at another repository; only local references concern this folder.
                if "--" not in reference:
                    yield reference


__all__ = [
    "check_remote_code_folder",
    "class_reference",
    "image_processor_auto_map",
    "model_auto_map",
    "save_pretrained_with_remote_code",
]
