import logging
import os

# Tests never reach the Hub: every from_pretrained/load_dataset runs on local folders and shards.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fresh_warning_once():
    # warning_once remembers what it said for the whole process; each test must see its own first warning.
    logging.Logger.warning_once.cache_clear()
    yield
    logging.Logger.warning_once.cache_clear()
