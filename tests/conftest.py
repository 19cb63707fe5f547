"""Fixtures shared by every test room."""
import pytest
import torch

from helpers import TwoLayer, save_bases, save_tiny_checkpoint


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
