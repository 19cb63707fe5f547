"""Fixtures shared by every test room."""
from collections import Counter

import pytest
import torch

from helpers import TwoLayer, save_bases, save_tiny_checkpoint


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under scripts/test.sh's `-n 2 --dist loadfile` a file's tests run on one worker (its module
    fixtures are made once) and the files go out in this order: the files with the most slow
    tests first, so the workers end together instead of one waiting on the other's last long file."""
    slow = Counter(item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def two_layer():
    return TwoLayer()


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """A tiny CLIP tower (16 patch tokens) and a tiny Llama with a Vicuna-style tokenizer."""
    return save_bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture(scope="session")
def tiny_base_factory(tmp_path_factory):
    root = tmp_path_factory.mktemp("more-bases")
    return lambda style, architecture: save_bases(root, style, architecture)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bases, tmp_path_factory):
    """A stage-2 checkpoint: MoSLoRA (r=4, random non-zero adapters) on the tiny bases."""
    return save_tiny_checkpoint(tiny_bases, tmp_path_factory.mktemp("ckpt") / "moslora-tiny")
