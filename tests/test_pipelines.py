"""`pipeline("image-feature-extraction")` and `pipeline("image-classification")` on our checkpoints (local folders,
package imported) and on their native exports (ViT for MixedAE, BEiT for CAE)."""

import pytest
import torch
from helpers import tiny_cae_config, tiny_mixedae_config
from tiny_checkpoints import random_image, tiny_processor_kwargs
from transformers import pipeline

from transformers_mixedae import (
    CAEForImageClassification,
    CAEForPreTraining,
    CAEImageProcessorPil,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
    MixedAEImageProcessorPil,
)
from transformers_mixedae.hub.export import export_to_transformers

ATOL = 1e-5
LABELS = {0: "cat", 1: "dog", 2: "fish"}
LABEL_SETTINGS = {"id2label": LABELS, "label2id": {name: index for index, name in LABELS.items()}}

# family -> (pre-training class, classifier class, tiny config, processor class, classifier pooling)
FAMILIES = {
    # ViTForImageClassification pools [CLS], so the MixedAE classifier that exports exactly is the [CLS] one.
    "mixedae": (
        MixedAEForPreTraining,
        MixedAEForImageClassification,
        tiny_mixedae_config,
        MixedAEImageProcessorPil,
        "cls",
    ),
    "cae": (CAEForPreTraining, CAEForImageClassification, tiny_cae_config, CAEImageProcessorPil, "mean"),
}
NUM_TOKENS = {"mixedae": 1 + 64, "cae": 1 + 16}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per family: `pretraining` and `classification` folders, and their native exports `native` and
    `native-classification`."""
    root = tmp_path_factory.mktemp("pipelines")
    torch.manual_seed(0)
    models = {}
    for family, (pretraining_class, classifier_class, config, processor_class, pooling) in FAMILIES.items():
        pretraining = pretraining_class(config()).eval()
        classifier = classifier_class(config(classifier_pooling=pooling, **LABEL_SETTINGS)).eval()
        processor = processor_class(**tiny_processor_kwargs())
        for model, name in ((pretraining, "pretraining"), (classifier, "classification")):
            model.save_pretrained(root / family / name)
            processor.save_pretrained(root / family / name)
        export_to_transformers(root / family / "pretraining", root / family / "native")
        export_to_transformers(
            root / family / "classification", root / family / "native-classification", task="image-classification"
        )
        models[family] = (pretraining, classifier, processor)
    return root, models


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("folder", ["pretraining", "native"])
def test_image_feature_extraction(checkpoints, family, folder):
    root, models = checkpoints
    pretraining, _, processor = models[family]
    extractor = pipeline("image-feature-extraction", model=str(root / family / folder))
    images = [random_image(0), random_image(1)]
    with torch.no_grad():
        expected = pretraining.base_model(processor(images, return_tensors="pt").pixel_values)

    features = extractor(images)
    assert len(features) == 2
    torch.testing.assert_close(torch.tensor(features[1][0]), expected.last_hidden_state[1], atol=ATOL, rtol=0)
    pooled = extractor(images[0], pool=True)  # the [CLS] token, for ours and for the exports' poolers
    torch.testing.assert_close(torch.tensor(pooled[0]), expected.pooler_output[0], atol=ATOL, rtol=0)
    assert extractor(images[0], return_tensors=True).shape == (1, NUM_TOKENS[family], 32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("folder", ["classification", "native-classification"])
def test_image_classification(checkpoints, family, folder):
    root, models = checkpoints
    _, classifier, processor = models[family]
    image_classifier = pipeline("image-classification", model=str(root / family / folder))
    image = random_image(2)
    with torch.no_grad():
        probabilities = classifier(processor(image, return_tensors="pt").pixel_values).logits.softmax(-1)[0]

    predictions = image_classifier(image, top_k=3)
    assert [p["label"] for p in predictions] == [LABELS[int(i)] for i in probabilities.argsort(descending=True)]
    expected_scores = probabilities.sort(descending=True).values
    torch.testing.assert_close(torch.tensor([p["score"] for p in predictions]), expected_scores, atol=ATOL, rtol=0)
