"""Fixtures shared by every test room."""
import pytest
import torch

from helpers import TwoLayer, randomize_adapters, save_bases


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
    from llava_moslora.adapters import AdapterConfig
    from llava_moslora.model import Recipe, apply_tuning, build_llava, save_checkpoint

    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    bundle.recipe = Recipe(**{**bundle.recipe.to_dict(), "stage": 2, "tune_language_model": "adapter",
                              "llm_adapter": AdapterConfig(kind="moslora", r=4).to_dict()})
    apply_tuning(bundle.model, bundle.recipe)
    torch.manual_seed(0)
    randomize_adapters(bundle.model, scale=0.05)
    out = tmp_path_factory.mktemp("ckpt") / "moslora-tiny"
    save_checkpoint(bundle, out)
    return out
