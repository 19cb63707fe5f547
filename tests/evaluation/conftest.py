"""A tiny MoSLoRA stage checkpoint and a small ShapesVQA data root, shared by the evaluation tests."""
import pytest
import torch

from helpers import randomize_adapters


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bases, tmp_path_factory):
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


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    from llava_moslora.data.synth import write_shapesvqa

    root = tmp_path_factory.mktemp("lmudata")
    write_shapesvqa(root, seed=1, num_pretrain=0, num_instruct=0, num_test=6, progress=False)
    return root
