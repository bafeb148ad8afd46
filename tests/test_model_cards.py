"""Model cards: the reference cards in `model_cards/` and `generate_model_card` parse with huggingface_hub, their
metadata is valid and says where every number comes from, and every usage snippet runs against a tiny local
checkpoint (`import transformers_mixedae` snippets in this process, `trust_remote_code` ones without the package)."""

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import tiny_cae_config, tiny_mixedae_config
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from tiny_checkpoints import random_image, tiny_mixedae_processor, tiny_processor_kwargs
from transformers.pipelines import SUPPORTED_TASKS
from without_package import run_without_package

from transformers_mixedae import (
    CAEForPreTraining,
    CAEImageProcessorPil,
    MixedAEConfig,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
)
from transformers_mixedae.hub.model_card import classification_eval_results, generate_model_card
from transformers_mixedae.hub.remote_code import save_pretrained_with_remote_code

CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
CARD_PATHS = sorted(CARDS_DIR.glob("*.md"))
CARD_IDS = [path.stem for path in CARD_PATHS]

# The results the CAE paper reports: pre-training epochs -> (linear, attentive, fine-tuning, ADE20K, COCO box, COCO mask).
CAE_REPORTED = {
    "cae-vit-base-patch16": {
        300: (64.5, 74.0, 83.6, 48.1, 48.3, 42.7),
        800: (68.9, 75.9, 83.8, 49.7, 49.9, 43.9),
        1600: (70.3, 77.2, 83.9, 50.3, 50.3, 44.2),
    },
    "cae-vit-large-patch16": {1600: (77.8, 81.2, 86.2, 54.9, 54.5, 47.5)},
}
METRIC_COLUMNS = ("linear probing", "attentive probing", "fine-tuning", "mIoU", "Box AP", "Mask AP")
LABELS = {0: "cat", 1: "dog", 2: "fish"}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def localise(code: str, folder: Path) -> str:
    """Point the snippet's `repo_id` at a local folder."""
    match = re.search(r'^repo_id = "([^"]+)"$', code, flags=re.MULTILINE)
    assert match, 'every usage snippet names its checkpoint in a `repo_id = "..."` line'
    return code.replace(f'"{match.group(1)}"', repr(str(folder)))


def run_snippet(code: str, name: str) -> None:
    exec(compile(code, name, "exec"), {"__name__": "__main__"})


def reference_card(path: Path) -> ModelCard:
    return ModelCard(path.read_text(encoding="utf-8"))


def family_of(card: ModelCard) -> str:
    return "cae" if "cae" in card.data.tags else "mixedae"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny checkpoints with their processor and remote code, an `example.jpg`, and the measured results."""
    folder = tmp_path_factory.mktemp("cards")
    random_image().save(folder / "example.jpg")
    torch.manual_seed(0)
    mixedae_processor = tiny_mixedae_processor()
    checkpoints = {
        "tiny-mixedae": (MixedAEForPreTraining(tiny_mixedae_config()), mixedae_processor),
        "tiny-mixedae-classifier": (
            MixedAEForImageClassification(
                tiny_mixedae_config(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
            ),
            mixedae_processor,
        ),
        "tiny-cae": (CAEForPreTraining(tiny_cae_config()), CAEImageProcessorPil(**tiny_processor_kwargs())),
    }
    for name, (model, processor) in checkpoints.items():
        save_pretrained_with_remote_code(model, folder / name, image_processor=processor)
    results = {"epoch": 2.0, "eval_accuracy": 0.625, "eval_top5_accuracy": 0.875, "eval_loss": 1.1, "train_loss": 1.3}
    (folder / "all_results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture(scope="module")
def cards(workdir) -> dict[str, tuple[ModelCard, Path]]:
    """Every card to test, with the local checkpoint its snippets run against."""
    cards = {}
    for path in CARD_PATHS:
        card = reference_card(path)
        cards[path.stem] = (card, workdir / f"tiny-{family_of(card)}")
    cards["generated"] = (
        generate_model_card(
            workdir / "tiny-mixedae",
            workdir / "all_results.json",
            "accelerate launch examples/run_image_classification.py --model_name_or_path tiny-mixedae",
            eval_dataset="imagefolder",
            eval_dataset_name="bundled sample",
            evaluation_protocol="fine-tuning",
            training_datasets=["imagefolder"],
        ),
        workdir / "tiny-mixedae",
    )
    cards["generated-classifier"] = (
        generate_model_card(workdir / "tiny-mixedae-classifier", workdir / "all_results.json"),
        workdir / "tiny-mixedae-classifier",
    )
    return cards


@pytest.fixture(scope="module")
def remote_snippet_results(workdir, cards) -> dict[str, str]:
    """Run every `trust_remote_code` snippet of every card in one process without the package."""
    snippets = {
        f"{name}:{index}": localise(code, folder)
        for name, (card, folder) in cards.items()
        for index, code in enumerate(python_blocks(card.content))
        if "trust_remote_code=True" in code
    }
    (workdir / "snippets.json").write_text(json.dumps(snippets))
    run_without_package(
        """
        import json
        import traceback

        results = {"package_hidden": PACKAGE_HIDDEN}
        for name, code in json.load(open("snippets.json")).items():
            try:
                exec(compile(code, name, "exec"), {"__name__": "__main__"})
                results[name] = "ok"
            except Exception:
                results[name] = traceback.format_exc()
        json.dump(results, open("snippet_results.json", "w"))
        """,
        workdir,
    )
    return json.loads((workdir / "snippet_results.json").read_text())


# ---------------------------------------------------------------------------------------------- reference cards
def test_there_is_a_card_per_reference_model():
    assert CARD_IDS == ["cae-vit-base-patch16", "cae-vit-large-patch16", "mixedae-vit-base-patch16"]


@pytest.mark.parametrize("path", CARD_PATHS, ids=CARD_IDS)
def test_card_metadata_is_valid(path):
    card = reference_card(path)
    data = card.data
    assert data.license == "apache-2.0"
    assert data.library_name == "transformers"
    assert data.pipeline_tag in SUPPORTED_TASKS
    assert data.datasets == ["ILSVRC/imagenet-1k"]
    assert {"vision", "masked-image-modeling", "transformers_mixedae", path.stem.split("-")[0]} <= set(data.tags)
    metadata = data.to_dict()
    assert set(metadata) <= {"license", "library_name", "pipeline_tag", "datasets", "tags", "model-index"}
    if "model-index" in metadata:
        model_name, eval_results = model_index_to_eval_results(metadata["model-index"])
        assert model_name == path.stem and eval_results
    for heading in ("## Intended uses", "## Limitations", "## How to use", "## Training procedure", "## Citation"):
        assert heading in card.text, heading
    assert "@" in card.text.split("## Citation")[1]


@pytest.mark.parametrize("name", sorted(CAE_REPORTED))
def test_cae_cards_report_exactly_the_authors_numbers(name):
    card = reference_card(CARDS_DIR / f"{name}.md")
    expected = {
        (column, epochs): value
        for epochs, values in CAE_REPORTED[name].items()
        for column, value in zip(METRIC_COLUMNS, values)
    }
    found = {}
    for result in card.data.eval_results:
        assert "reported by the authors" in result.metric_name and "reported by the authors" in result.source_name
        assert result.source_url == "https://github.com/Atten4Vis/CAE"
        epochs = int(re.search(r"(\d+)-epoch pre-training", result.metric_name).group(1))
        column = next(column for column in METRIC_COLUMNS if column in result.metric_name)
        found[(column, epochs)] = result.metric_value
    assert found == expected
    for epochs, values in CAE_REPORTED[name].items():  # the body's table says the same
        assert f"| {epochs} | " + " | ".join(str(value) for value in values) + " |" in card.text


def test_mixedae_card_separates_the_paper_from_the_reconstruction():
    card = reference_card(CARDS_DIR / "mixedae-vit-base-patch16.md")
    assert card.data.eval_results is None  # the paper's numbers are relative; unverified ones stay out of metadata
    assert "no official code" in card.text.lower() and "reconstruction" in card.text
    assert "2303.17152" in card.text
    for field in ("mixing_ratio", "segment_embedding", "homologous_topk", "homologous_contrastive_weight"):
        assert field in MixedAEConfig.__dataclass_fields__ and f"`{field}`" in card.text


# ---------------------------------------------------------------------------------------------- snippets
ALL_CARDS = [*CARD_IDS, "generated", "generated-classifier"]


@pytest.mark.parametrize("name", ALL_CARDS)
def test_card_snippets_with_the_package_run(name, cards, workdir, monkeypatch):
    card, folder = cards[name]
    monkeypatch.chdir(workdir)  # snippets read example.jpg and write exports next to it
    blocks = [code for code in python_blocks(card.content) if "trust_remote_code" not in code]
    assert blocks and "import transformers_mixedae" in blocks[0]
    for index, code in enumerate(blocks):
        run_snippet(localise(code, folder), f"{name}:{index}")


@pytest.mark.parametrize("name", ALL_CARDS)
def test_card_snippets_with_remote_code_run_without_the_package(name, remote_snippet_results):
    assert remote_snippet_results["package_hidden"] is True
    names = [key for key in remote_snippet_results if key.startswith(f"{name}:")]
    assert names, "every card of a checkpoint that ships its code shows the trust_remote_code route"
    for key in names:
        assert remote_snippet_results[key] == "ok", remote_snippet_results[key]


# ---------------------------------------------------------------------------------------------- generated cards
def test_generated_card_metadata_holds_only_the_measured_accuracies(cards):
    card = ModelCard(str(cards["generated"][0]))  # through text, as the Hub reads it
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == "image-feature-extraction" and "mixedae" in data.tags
    assert data.datasets == ["imagefolder"]
    results = {result.metric_name: result.metric_value for result in data.eval_results}
    assert results == {"Top-1 accuracy (fine-tuning)": 0.625, "Top-5 accuracy (fine-tuning)": 0.875}
    assert {(result.dataset_type, result.dataset_split) for result in data.eval_results} == {
        ("imagefolder", "validation")
    }
    assert "reported by the authors" not in card.text
    assert "--model_name_or_path tiny-mixedae" in card.text and "`train_loss` | 1.3" in card.text
    assert "reconstruction" in card.text and "2303.17152" in card.text


def test_generated_classifier_card(cards):
    card = ModelCard(str(cards["generated-classifier"][0]))
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.eval_results is None  # no evaluation dataset named: results stay in the body only
    assert "| Classes | 3 |" in card.text and 'pipeline("image-classification"' in card.text


def test_generated_card_from_a_config_alone():
    config = tiny_mixedae_config(num_labels=3, architectures=["MixedAEForImageClassification"])
    card = ModelCard(str(generate_model_card(config, {"eval_accuracy": 0.5})))
    assert card.data.eval_results is None and card.data.pipeline_tag == "image-classification"
    assert "trust_remote_code" not in card.text  # a config alone says nothing about shipped code
    assert "The training command was not recorded." in card.text

    empty = generate_model_card(MixedAEConfig())
    assert "No evaluation results were recorded" in empty.text and "mixedae-vit-base-patch16" in empty.text


def test_generated_card_for_cae(workdir):
    card = generate_model_card(workdir / "tiny-cae")
    assert "cae" in card.data.tags and "2202.03026" in card.text and "non-official" in card.text
    assert "trust_remote_code=True" in card.text  # the folder ships its code
    assert "`align_loss_weight`" in card.text and "Non-official" not in card.text

    pixels = generate_model_card(tiny_cae_config(target="pixels"))
    assert "**Non-official pre-training target.**" in pixels.text


def test_only_the_models_own_accuracies_reach_the_model_index():
    results = {"eval_accuracy": 0.5, "eval_top5_accuracy": 0.9, "eval_ema_accuracy": 0.4,
               "eval_ema_top5_accuracy": 0.7, "eval_knn_top5_accuracy": 0.6, "eval_linear_probe_top5_accuracy": 0.8}
    reported = {result.metric_name: result.metric_value
                for result in classification_eval_results(results, "imagefolder", evaluation_protocol="fine-tuning")}
    assert reported == {"Top-1 accuracy (fine-tuning)": 0.5, "Top-5 accuracy (fine-tuning)": 0.9}


def test_local_folders_named_in_the_evaluation_data_stay_out_of_the_card():
    config = tiny_mixedae_config(num_labels=3, architectures=["MixedAEForImageClassification"])
    card = generate_model_card(config, {"eval_accuracy": 0.5}, eval_dataset="imagefolder",
                               eval_dataset_name="image folders /home/me/data/train, ~/data/validation")
    assert "/home/me" not in str(card) and "~/data" not in str(card)
    assert card.data.eval_results[0].dataset_name == "image folders train, validation"


def test_the_model_index_names_the_split_configuration_and_sample_of_the_evaluation():
    from transformers_mixedae.tasks.image_classification import evaluation_data_card
    from transformers_mixedae.training.arguments import DataArguments

    config = tiny_mixedae_config(num_labels=3, architectures=["MixedAEForImageClassification"])
    hub = evaluation_data_card(DataArguments(dataset_name="uoft-cs/cifar10", dataset_config_name="plain_text",
                                             validation_split_name="test"), "uoft-cs/cifar10 (plain_text)")
    card = ModelCard(str(generate_model_card(config, {"eval_accuracy": 0.5}, eval_dataset="uoft-cs/cifar10", **hub)))
    [result] = card.data.eval_results
    assert (result.dataset_type, result.dataset_split, result.dataset_config) == ("uoft-cs/cifar10", "test", "plain_text")
    assert card.data.datasets == ["uoft-cs/cifar10"]
    assert card.data.pipeline_tag == "image-classification" and "image-feature-extraction" not in card.data.tags

    # The embedded default: 1,000 images of Fashion-MNIST's test split; a cut names the count actually evaluated.
    embedded = evaluation_data_card(DataArguments(max_eval_samples=5000), "embedded default (Fashion-MNIST subset)",
                                    evaluated=1000)
    assert embedded == dict(eval_dataset_name="embedded default (Fashion-MNIST subset), 1000 examples",
                            eval_split="test", eval_dataset_config=None,
                            training_datasets=["zalando-datasets/fashion_mnist"])
    streamed = evaluation_data_card(DataArguments(dataset_name="owner/data", max_eval_samples=32), "owner/data")
    assert streamed["eval_dataset_name"] == "owner/data, at most 32 examples"
    assert evaluation_data_card(DataArguments(), "embedded default")["eval_dataset_name"] == "embedded default"
