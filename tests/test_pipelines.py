"""`pipeline("image-feature-extraction")` and `pipeline("image-classification")` on our checkpoints (local folders,
package imported) and on their native exports."""

import pytest
import torch
from helpers import tiny_mixedae_config
from tiny_checkpoints import random_image, tiny_mixedae_processor
from transformers import pipeline

from transformers_mixedae import MixedAEForImageClassification, MixedAEForPreTraining
from transformers_mixedae.export import export_to_transformers

ATOL = 1e-5
LABELS = {0: "cat", 1: "dog", 2: "fish"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    torch.manual_seed(0)
    pretraining = MixedAEForPreTraining(tiny_mixedae_config()).eval()
    classifier = MixedAEForImageClassification(
        tiny_mixedae_config(classifier_pooling="cls", id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    ).eval()
    for model, name in ((pretraining, "pretraining"), (classifier, "classification")):
        model.save_pretrained(root / name)
        tiny_mixedae_processor().save_pretrained(root / name)
    export_to_transformers(root / "pretraining", root / "vit")
    export_to_transformers(root / "classification", root / "vit-classification", task="image-classification")
    return root, pretraining, classifier


@pytest.mark.parametrize("folder", ["pretraining", "vit"])
def test_image_feature_extraction(checkpoints, folder):
    root, pretraining, _ = checkpoints
    extractor = pipeline("image-feature-extraction", model=str(root / folder))
    images = [random_image(0), random_image(1)]
    pixel_values = tiny_mixedae_processor()(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = pretraining.vit(pixel_values)

    features = extractor(images)
    assert len(features) == 2
    torch.testing.assert_close(torch.tensor(features[1][0]), expected.last_hidden_state[1], atol=ATOL, rtol=0)
    pooled = extractor(images[0], pool=True)  # the [CLS] token, for ours and for the identity pooler of the export
    torch.testing.assert_close(torch.tensor(pooled[0]), expected.pooler_output[0], atol=ATOL, rtol=0)
    tensors = extractor(images[0], return_tensors=True)
    assert tensors.shape == (1, 1 + 64, 32)


@pytest.mark.parametrize("folder", ["classification", "vit-classification"])
def test_image_classification(checkpoints, folder):
    root, _, classifier = checkpoints
    image_classifier = pipeline("image-classification", model=str(root / folder))
    image = random_image(2)
    with torch.no_grad():
        probabilities = classifier(tiny_mixedae_processor()(image, return_tensors="pt").pixel_values).logits.softmax(
            -1
        )[0]

    predictions = image_classifier(image, top_k=3)
    assert [p["label"] for p in predictions] == [LABELS[int(i)] for i in probabilities.argsort(descending=True)]
    torch.testing.assert_close(
        torch.tensor([p["score"] for p in predictions]), probabilities.sort(descending=True).values, atol=ATOL, rtol=0
    )
