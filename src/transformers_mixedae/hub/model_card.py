# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Hub model cards for MixedAE and CAE checkpoints.

`generate_model_card` writes the card of a trained checkpoint from its config and the `all_results.json` of
the run that produced it. The `model-index` metadata holds only measured results passed in (never numbers from
the papers; the reference cards in `model_cards/` carry those, labelled as reported by the authors).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from ..models.presets import vit_size_name
from .remote_code import local_auto_map_references

DEFAULT_TAGS = ("vision", "image-feature-extraction", "masked-image-modeling", "self-supervised-learning")
PACKAGE_TAG = "transformers_mixedae"  # on every card this package writes: a README.md without it is someone else's


@dataclass(frozen=True)
class ModelFamily:
    """What a card says about one method, whatever the checkpoint."""

    model_type: str
    display_name: str
    paper_title: str
    arxiv_id: str
    summary: str
    provenance: str
    limitations: tuple[str, ...]
    objective_fields: tuple[str, ...]
    native_class: str  # what `export.export_to_transformers` writes the encoder as
    bibtex: str

    @property
    def paper_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv_id}"


MIXEDAE = ModelFamily(
    model_type="mixedae",
    display_name="MixedAE",
    paper_title="Mixed Autoencoder for Self-supervised Visual Representation Learning",
    arxiv_id="2303.17152",
    summary=(
        "MixedAE (Chen et al., CVPR 2023) pre-trains a Vision Transformer like MAE, but on mixed inputs: the "
        "visible patches of a group of images are mixed into one sequence, an unmixing decoder reconstructs every "
        "image's hidden patches, and an auxiliary *homologous recognition* task (homologous top-k attention and a "
        "homologous contrastive loss) makes each patch recognise the patches of its own source image. The encoder "
        "is a plain ViT downstream: global attention, no mixing."
    ),
    provenance=(
        "**MixedAE has no official code: this implementation is a reconstruction.** The paper states the method "
        "(mixing, homologous recognition through homologous attention, segment embeddings and a homologous "
        "contrastive term added to MAE's reconstruction loss). This package chose the details the paper does not "
        "give, each exposed as a config field: groups of g = 1/r consecutive images sharing one noise draw, with "
        "the kept positions dealt to the images in turn (`mixing_ratio`, default 0.25; `mask_ratio`, default 0); "
        "segment embeddings added at the encoder input (`segment_embedding`); homologous attention in every "
        "encoder layer keeping the top k = N·r + 1 logits per patch query (`homologous_attention_layers`, "
        "`homologous_topk`); a supervised InfoNCE loss over final-layer patch tokens with temperature 0.1 and "
        "weight 0.1 (`homologous_contrastive_temperature`, `homologous_contrastive_weight`); the MAE pre-training "
        "recipe. With `mixing_ratio=1.0, mask_ratio=0.75` and the homologous parts off, the model is exactly MAE."
    ),
    limitations=(
        "The homologous-recognition details above are this package's reconstruction, not the authors' code; "
        "results may differ from the paper's.",
        "The defaults of the homologous parts (segment embedding, homologous layers and top-k, contrastive weight) "
        "are the best arm of a small CPU ablation in which the MixedAE variants were within noise of each other "
        "(docs/ablations.md of transformers-mixedae); they are not verified at ImageNet scale.",
        "Pre-trained for representation learning: fine-tune or probe before using it for a task. Its decoder "
        "predicts (by default per-patch normalised) pixels, not images for display.",
        "Trained on the data named in the metadata; biases of that data carry over to the features.",
    ),
    objective_fields=(
        "mixing_ratio",
        "mask_ratio",
        "segment_embedding",
        "homologous_attention_layers",
        "homologous_topk",
        "homologous_contrastive_weight",
        "homologous_contrastive_temperature",
        "norm_pix_loss",
    ),
    native_class="ViTModel",
    bibtex="""@inproceedings{chen2023mixedae,
  title     = {Mixed Autoencoder for Self-supervised Visual Representation Learning},
  author    = {Chen, Kai and Liu, Zhili and Hong, Lanqing and Xu, Hang and Li, Zhenguo and Yeung, Dit-Yan},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023},
  eprint    = {2303.17152},
  archivePrefix = {arXiv}
}""",
)

CAE = ModelFamily(
    model_type="cae",
    display_name="CAE",
    paper_title="Context Autoencoder for Self-Supervised Representation Learning",
    arxiv_id="2202.03026",
    summary=(
        "CAE (Context Autoencoder, Chen et al., IJCV 2023) pre-trains a Vision Transformer by masked image "
        "modeling in the latent space: the encoder sees only the visible patches, a latent regressor of "
        "cross-attention blocks predicts the representations of the masked patches from them, those predictions "
        "are aligned with the encoder's own representations of the masked patches, and a decoder predicts the "
        "masked patches' discrete tokenizer ids (8192 classes). Downstream, only the encoder is used."
    ),
    provenance=(
        "This implementation follows the official CAE v1 code (github.com/Atten4Vis/CAE). The official "
        "pre-training targets are DALL-E tokenizer ids; the tokenizer weights are not bundled. A normalised-pixel "
        "head, where present, is a non-official variant."
    ),
    limitations=(
        "Pre-training needs the DALL-E tokenizer (not included) or pre-computed token ids; the normalised-pixel "
        "target is a non-official variant and its results are not comparable with the paper's.",
        "The official fine-tuning recipe adds relative position bias and mean pooling; features from the bare "
        "encoder are not the fine-tuned model's.",
        "Pre-trained for representation learning: fine-tune or probe before using it for a task.",
        "Trained on the data named in the metadata; biases of that data carry over to the features.",
    ),
    objective_fields=(
        "target",
        "vocab_size",
        "align_loss_weight",
        "mask_type",
        "num_masking_patches",
        "layer_scale_init_value",
        "decoder_hidden_size",
        "regressor_num_layers",
        "decoder_num_layers",
        "decoder_num_attention_heads",
        "decoder_layer_scale_init_value",
    ),
    native_class="BeitModel",
    bibtex="""@article{chen2023cae,
  title   = {Context Autoencoder for Self-Supervised Representation Learning},
  author  = {Chen, Xiaokang and Ding, Mingyu and Wang, Xiaodi and Xin, Ying and Mo, Shentong and Wang, Yunhao and
             Han, Shumin and Luo, Ping and Zeng, Gang and Wang, Jingdong},
  journal = {International Journal of Computer Vision},
  year    = {2023},
  eprint  = {2202.03026},
  archivePrefix = {arXiv}
}""",
)

MODEL_FAMILIES = {family.model_type: family for family in (MIXEDAE, CAE)}

# (hidden_size, num_hidden_layers) -> the usual ViT size name.

# Result keys as written by transformers scripts and `evaluate`: "<split>_<metric>", e.g. "eval_accuracy".
_SPLIT_PREFIXES = {"eval": "validation", "validation": "validation", "test": "test", "predict": "test"}
_TOP5_PATTERN = re.compile(r"^(top_?5(_accuracy)?|acc(uracy)?_?5|accuracy_top_?5)$")
_TOP1_PATTERN = re.compile(r"^(accuracy|acc|top_?1(_accuracy)?|acc(uracy)?_?1|accuracy_top_?1)$")
_PROTOCOL_NAMES = {
    "fine-tuning": "fine-tuning", "linear-probing": "linear probing", "linear probing": "linear probing",
    "attentive-probing": "attentive probing", "attentive probing": "attentive probing",
}


# ---------------------------------------------------------------------------------------------- inputs
def _resolve_config(model_or_config) -> tuple[PreTrainedConfig, PreTrainedModel | None, Path | None]:
    if isinstance(model_or_config, PreTrainedModel):
        return model_or_config.config, model_or_config, None
    if isinstance(model_or_config, PreTrainedConfig):
        return model_or_config, None, None
    path = Path(model_or_config)
    return AutoConfig.from_pretrained(path), None, path if path.is_dir() else None


def ships_remote_code(folder: Path) -> bool:
    """Whether `folder`'s `config.json` has an `auto_map` whose every module file is in the folder (a map copied
    from another folder without its code does not make the folder loadable with `trust_remote_code`)."""
    auto_map = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    # References to another repository ("<repo>--<module>.<Class>") are fetched by `trust_remote_code` itself.
    return bool(auto_map) and all(
        (folder / f"{reference.split('.')[0]}.py").is_file() for reference in local_auto_map_references(auto_map)
    )


def without_local_paths(text: str | None) -> str | None:
    """`text` with every absolute or home-relative path shortened to its last component: a run's data source names
    the local folder it read ("ADE-layout folder /home/me/data/ADE"), which does not belong in a public card."""
    if text is None:
        return None
    return " ".join(Path(word).name if word.startswith(("/", "~")) and len(word) > 1 else word
                    for word in text.split(" "))


def load_results(results: Mapping[str, float] | str | os.PathLike | None) -> dict[str, float]:
    """Numeric entries of a results dict or of an `all_results.json` file (others, e.g. dataset names, dropped)."""
    if results is None:
        return {}
    if not isinstance(results, Mapping):
        results = json.loads(Path(results).read_text(encoding="utf-8"))
    return {
        key: value for key, value in results.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _eval_results(
    results: Mapping[str, float],
    task_type: str,
    metric_of: Callable[[str, float], tuple[str, str] | None],
    dataset: str,
    dataset_name: str | None,
    protocol: str | None,
    eval_split: str | None = None,
    dataset_config: str | None = None,
) -> list[EvalResult]:
    """One `EvalResult` per `split_metric` key of `results` that `metric_of(metric, value)` names as
    `(metric type, label)`; values are kept as measured. `eval_*` results are on `eval_split` (default
    `validation`)."""
    eval_results = []
    for key, value in results.items():
        prefix, _, metric = key.partition("_")
        split = (eval_split or _SPLIT_PREFIXES["eval"]) if prefix == "eval" else _SPLIT_PREFIXES.get(prefix)
        named = metric_of(metric, value) if split is not None and metric else None
        if named is None:
            continue
        metric_type, label = named
        eval_results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=dataset,
                dataset_name=dataset_name or dataset,
                dataset_split=split,
                dataset_config=dataset_config,
                metric_type=metric_type,
                metric_value=value,
                metric_name=f"{label} ({protocol})" if protocol else label,
            )
        )
    return eval_results


def _accuracy_metric(metric: str, value: float) -> tuple[str, str] | None:
    if _TOP1_PATTERN.match(metric):
        return "accuracy", "Top-1 accuracy"
    if _TOP5_PATTERN.match(metric):
        return "accuracy", "Top-5 accuracy"
    return None


def classification_eval_results(
    results: Mapping[str, float],
    dataset: str,
    dataset_name: str | None = None,
    evaluation_protocol: str | None = None,
    **where: str | None,
) -> list[EvalResult]:
    """`EvalResult`s for the top-1 / top-5 accuracies among `results` (keys such as `eval_accuracy`,
    `eval_top5_accuracy`, `test_accuracy_top1`). Values are kept as measured (fraction or percent). `where`:
    `eval_split`, `dataset_config` (see `_eval_results`)."""
    protocol = _PROTOCOL_NAMES.get(evaluation_protocol or "", evaluation_protocol)
    return _eval_results(results, "image-classification", _accuracy_metric, dataset, dataset_name, protocol, **where)


# Semantic-segmentation scores (`evaluation.segmentation_metrics`): result key -> (metric type, label).
_SEGMENTATION_METRICS = {
    "mean_iou": ("mean_iou", "Mean IoU"),
    "mean_accuracy": ("mean_accuracy", "Mean accuracy"),
    "overall_accuracy": ("accuracy", "Pixel accuracy"),
}


def _segmentation_metric(metric: str, value: float) -> tuple[str, str] | None:
    if value != value:  # NaN: nothing was measured
        return None
    return _SEGMENTATION_METRICS.get(metric)


def segmentation_eval_results(
    results: Mapping[str, float],
    dataset: str,
    dataset_name: str | None = None,
    evaluation_protocol: str | None = None,
    **where: str | None,
) -> list[EvalResult]:
    """`EvalResult`s for the mean IoU, mean accuracy and pixel accuracy among `results` (`eval_mean_iou`, ...);
    values as measured (fractions). `where`: `eval_split`, `dataset_config` (see `_eval_results`)."""
    return _eval_results(results, "image-segmentation", _segmentation_metric, dataset, dataset_name,
                         evaluation_protocol, **where)


def default_model_name(config: PreTrainedConfig) -> str:
    """E.g. `mixedae-vit-base-patch16`, or `cae-vit-h512-l8-patch16` for a non-standard size."""
    size = vit_size_name(config.hidden_size, config.num_hidden_layers)
    size = size or f"h{config.hidden_size}-l{config.num_hidden_layers}"
    return f"{config.model_type}-vit-{size}-patch{config.patch_size}"


# ---------------------------------------------------------------------------------------------- card
def generate_model_card(
    model_or_config: PreTrainedModel | PreTrainedConfig | str | os.PathLike,
    results: Mapping[str, float] | str | os.PathLike | None = None,
    training_command: str | None = None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    training_datasets: Sequence[str] = (),
    eval_dataset: str | None = None,
    eval_dataset_name: str | None = None,
    eval_split: str | None = None,
    eval_dataset_config: str | None = None,
    evaluation_protocol: str | None = None,
    base_model: str | None = None,
    tags: Sequence[str] = (),
    remote_code: bool | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The Hub card of a MixedAE or CAE checkpoint.

    Args:
        model_or_config: a model, its config, or the checkpoint folder (then `remote_code` is detected from the
            `auto_map` in its `config.json` and the code files it names, next to it).
        results: measured metrics, a dict or the path of `all_results.json`. Accuracies (`eval_accuracy`,
            `eval_top5_accuracy`, ...) go to `model-index` when `eval_dataset` is given; every number is listed in
            the card's results table.
        training_command: the command that produced the checkpoint, shown verbatim.
        model_name: title and `model-index` name (default e.g. `mixedae-vit-base-patch16`).
        repo_id: the id used in the usage snippets (default `model_name`).
        training_datasets: Hub ids of the training data (metadata `datasets`).
        eval_dataset, eval_dataset_name: Hub id (or `imagefolder`) and display name of the evaluation data.
        eval_split, eval_dataset_config: the split the `eval_*` results were measured on (default `validation`) and
            the dataset configuration, for `model-index`.
        evaluation_protocol: `"fine-tuning"` or `"linear probing"`, named in the metric labels.
        base_model: the checkpoint this one was fine-tuned or continued from.
        tags: extra tags.
        remote_code: whether the repository ships the model code (`save_pretrained_with_remote_code`); adds the
            `trust_remote_code=True` usage snippet.
        license: SPDX id of the weights' license.
    """
    config, model, path = _resolve_config(model_or_config)
    # A dense model of transformers' own (UperNet) on one of our backbones: the card describes the backbone.
    encoder_config = getattr(config, "backbone_config", None) or config
    family = MODEL_FAMILIES.get(encoder_config.model_type)
    if family is None:
        raise ValueError(
            f"no model card template for model_type {encoder_config.model_type!r}; known: {sorted(MODEL_FAMILIES)}"
        )
    if remote_code is None:
        remote_code = ships_remote_code(path) if path is not None else bool(getattr(config, "auto_map", None))
    measured = load_results(results)
    model_name = model_name or (path.name if path is not None else default_model_name(encoder_config))
    repo_id = repo_id or model_name
    architectures = config.architectures or ([type(model).__name__] if model is not None else [])
    is_classifier = any(name.endswith("ForImageClassification") for name in architectures)
    is_segmenter = any(name.endswith("ForSemanticSegmentation") for name in architectures)
    pipeline_tag = (
        "image-classification" if is_classifier else "image-segmentation" if is_segmenter else "image-feature-extraction"
    )

    eval_results = []
    if eval_dataset is not None:
        eval_dataset_name = without_local_paths(eval_dataset_name)
        where = dict(eval_split=eval_split, dataset_config=eval_dataset_config)
        eval_results = classification_eval_results(measured, eval_dataset, eval_dataset_name, evaluation_protocol,
                                                   **where)
        eval_results += segmentation_eval_results(measured, eval_dataset, eval_dataset_name, evaluation_protocol,
                                                  **where)
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        # `model_name` only names the model-index; without results it would be a stray top-level key.
        model_name=model_name if eval_results else None,
        # A classifier or segmenter is not a feature extractor: its pipeline tag says what it is.
        tags=_unique([*(tag for tag in DEFAULT_TAGS if tag != "image-feature-extraction" or pipeline_tag == tag),
                      family.model_type, PACKAGE_TAG, *tags]),
        datasets=list(training_datasets) or None,
        base_model=base_model,
        eval_results=eval_results or None,
    )
    sections = [
        f"# {model_name}",
        f"{family.summary} Paper: [{family.paper_title}]({family.paper_url}).",
        family.provenance,
        *_variant_notices(encoder_config),
        "## Model details\n\n" + _details(encoder_config, model, architectures, is_classifier, family, config),
        "## Intended uses\n\n" + _intended_uses(is_classifier, is_segmenter),
        "## Limitations\n\n" + "\n".join(f"- {line}" for line in family.limitations),
        "## How to use\n\n" + usage_snippets(repo_id, is_classifier, remote_code and not is_segmenter,
                                                 is_segmenter=is_segmenter),
        "## Training procedure\n\n" + _training_section(encoder_config, family, training_command, training_datasets),
        "## Evaluation results\n\n" + _results_section(measured, eval_results, eval_dataset),
        "## Citation\n\n```bibtex\n" + family.bibtex + "\n```",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def usage_snippets(repo_id: str, is_classifier: bool, remote_code: bool, is_segmenter: bool = False) -> str:
    """Markdown with the `import transformers_mixedae` snippet and, with `remote_code`, the `trust_remote_code` one."""
    text = [
        "With the `transformers_mixedae` package installed, importing it registers the model with the "
        "transformers Auto classes and pipelines:",
        _python_block(_segmentation_snippet(repo_id) if is_segmenter else _snippet(repo_id, is_classifier, False)),
    ]
    if remote_code:
        text += [
            "Without the package: the repository ships the model code, so `trust_remote_code=True` loads it (read "
            "the code first, it runs on your machine):",
            _python_block(_snippet(repo_id, is_classifier, remote_code=True)),
        ]
    return "\n\n".join(text)


def _snippet(repo_id: str, is_classifier: bool, remote_code: bool) -> str:
    task = "image-classification" if is_classifier else "image-feature-extraction"
    auto_class = "AutoModelForImageClassification" if is_classifier else "AutoModel"
    trust = ", trust_remote_code=True" if remote_code else ""
    lines = [
        "import torch",
        "from PIL import Image",
        f"from transformers import AutoImageProcessor, {auto_class}, pipeline",
        "",
    ]
    if not remote_code:
        lines += ["import transformers_mixedae  # noqa: F401  (registers the model with the Auto classes)", ""]
    lines += [
        f'repo_id = "{repo_id}"',
        'image = Image.open("example.jpg").convert("RGB")  # any RGB image',
        "",
        f"processor = AutoImageProcessor.from_pretrained(repo_id{trust})",
        f"model = {auto_class}.from_pretrained(repo_id{trust}).eval()",
        'inputs = processor(images=image, return_tensors="pt")',
        "with torch.no_grad():",
        "    outputs = model(**inputs)",
    ]
    if is_classifier:
        lines += [
            "predicted = model.config.id2label[outputs.logits.argmax(-1).item()]",
            "",
            f'classifier = pipeline("{task}", model=repo_id{trust})',
            "print(predicted, classifier(image)[:3])",
        ]
    else:
        lines += [
            "features = outputs.last_hidden_state  # (1, 1 + number of patches, hidden size), [CLS] first",
            "",
            f'extractor = pipeline("{task}", model=repo_id{trust})',
            "cls_feature = extractor(image, pool=True)  # the [CLS] token of the final layer",
            "print(features.shape, len(cls_feature[0]))",
        ]
    return "\n".join(lines)


def _segmentation_snippet(repo_id: str) -> str:
    return "\n".join([
        "import torch",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline",
        "",
        "import transformers_mixedae  # noqa: F401  (registers the backbone with the Auto classes)",
        "",
        f'repo_id = "{repo_id}"',
        'image = Image.open("example.jpg").convert("RGB")  # any RGB image',
        "",
        "processor = AutoImageProcessor.from_pretrained(repo_id)",
        "model = AutoModelForSemanticSegmentation.from_pretrained(repo_id).eval()",
        "with torch.no_grad():",
        '    outputs = model(**processor(images=image, return_tensors="pt"))',
        "# class ids at the image's own size",
        "class_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]",
        "",
        'segmenter = pipeline("image-segmentation", model=repo_id)',
        'print(class_map.shape, [segment["label"] for segment in segmenter(image)])',
    ])


def _python_block(code: str) -> str:
    return f"```python\n{code}\n```"


def _details(
    config: PreTrainedConfig,
    model: PreTrainedModel | None,
    architectures: Sequence[str],
    is_classifier: bool,
    family: ModelFamily,
    model_config: PreTrainedConfig | None = None,
) -> str:
    """`config` is the encoder's (for a segmenter, its backbone's); `model_config` the whole model's."""
    model_config = model_config or config
    height, width = _image_hw(config)
    rows = [
        ("Architecture", ", ".join(architectures) or "not recorded"),
        (
            "Encoder",
            f"ViT, {config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads, "
            f"MLP {config.intermediate_size}",
        ),
        ("Input", f"{height}x{width} pixels, {config.patch_size}x{config.patch_size} patches, [CLS] token"),
    ]
    if model is not None:
        rows.append(("Parameters", f"{sum(p.numel() for p in model.parameters()):,}"))
    if is_classifier or model_config is not config:
        rows.append(("Classes", str(len(model_config.id2label))))
    if model_config is not config:
        rows.append(("Backbone stages", f"out_indices {list(config.out_indices)}, multi-scale neck "
                                        f"{bool(getattr(config, 'backbone_multi_scale', False))}"))
    return _table(("", ""), rows) + (
        f"\n\nThe encoder can also be exported to a native `transformers.{family.native_class}` with the same "
        "features (`transformers_mixedae.hub.export.export_to_transformers`), for use without this package."
    )


def _variant_notices(config: PreTrainedConfig) -> list[str]:
    """Warnings for settings that make a checkpoint differ from the published method."""
    if config.model_type == CAE.model_type and getattr(config, "target", "tokens") == "pixels":
        return [
            "**Non-official pre-training target.** This checkpoint was pre-trained to predict normalised pixels "
            '(`target="pixels"`) instead of the official DALL-E token ids; its results are not comparable with '
            "the paper's."
        ]
    return []


def _intended_uses(is_classifier: bool, is_segmenter: bool = False) -> str:
    if is_segmenter:
        return (
            "Semantic segmentation over the labels in `config.id2label` (one class per pixel), on images like those "
            'it was trained on (`pipeline("image-segmentation")`); further fine-tuning on other label sets.'
        )
    if is_classifier:
        return (
            "Image classification over the labels in `config.id2label`, on images like those it was fine-tuned on; "
            "further fine-tuning on other label sets."
        )
    return (
        "Image features for downstream tasks: fine-tuning or linear probing for classification, a backbone for "
        'detection and segmentation, feature extraction (`pipeline("image-feature-extraction")`). Research on '
        "masked image modeling."
    )


def _training_section(
    config: PreTrainedConfig, family: ModelFamily, training_command: str | None, training_datasets: Sequence[str]
) -> str:
    parts = []
    if training_datasets:
        parts.append("Data: " + ", ".join(f"`{name}`" for name in training_datasets) + ".")
    if training_command:
        parts.append("Command:\n\n```bash\n" + training_command.strip() + "\n```")
    else:
        parts.append("The training command was not recorded.")
    objective = [
        (f"`{name}`", f"`{getattr(config, name)!r}`") for name in family.objective_fields if hasattr(config, name)
    ]
    if objective:
        parts.append(
            f"{family.display_name} pre-training settings recorded in the config:\n\n"
            + _table(("field", "value"), objective)
        )
    return "\n\n".join(parts)


def _results_section(measured: Mapping[str, float], eval_results: list[EvalResult], eval_dataset: str | None) -> str:
    if not measured:
        return "No evaluation results were recorded for this checkpoint."
    where = f" on `{eval_dataset}`" if eval_dataset else ""
    text = f"Measured{where} by the run that produced this checkpoint (`all_results.json`):\n\n"
    text += _table(("metric", "value"), [(f"`{key}`", f"{value:.6g}") for key, value in sorted(measured.items())])
    if eval_results:
        text += "\n\nThe accuracies and mean IoU above are also in the `model-index` metadata."
    return text


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {left} | {right} |" for left, right in rows]
    return "\n".join(lines)


def _image_hw(config: PreTrainedConfig) -> tuple[int, int]:
    size = config.image_size
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


__all__ = [
    "CAE",
    "MIXEDAE",
    "MODEL_FAMILIES",
    "ModelFamily",
    "classification_eval_results",
    "default_model_name",
    "generate_model_card",
    "load_results",
    "segmentation_eval_results",
    "usage_snippets",
]
