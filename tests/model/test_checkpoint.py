"""Stage checkpoints: contents, round trip, strict loading, merged directories."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import randomize_adapters
from llava_moslora.model import (RECIPE_FILE, TRAINABLE_FILE, CheckpointError, Recipe, apply_tuning, build_llava, load_checkpoint,
                                 save_checkpoint)
from llava_moslora.adapters import AdapterConfig


def tuned_bundle(tiny_bases, kind="moslora", r=4):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    adapter = AdapterConfig(kind=kind, r=r, num_experts=3, top_k=2).to_dict()
    bundle.recipe = Recipe(**{**bundle.recipe.to_dict(), "stage": 2, "tune_language_model": "adapter",
                              "llm_adapter": adapter})
    apply_tuning(bundle.model, bundle.recipe)
    randomize_adapters(bundle.model, scale=0.05)
    with torch.no_grad():
        bundle.model.model.multi_modal_projector.linear_1.weight.add_(0.1)
    return bundle


def logits(bundle):
    torch.manual_seed(1)
    ids = torch.tensor([[1] + [bundle.model.config.image_token_id] * 16 + [5, 6, 7]])
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        return bundle.model.eval()(input_ids=ids, pixel_values=pixel_values).logits


@pytest.mark.parametrize("kind", ["moslora", "moelora"])
def test_round_trip_gives_the_same_logits(tiny_bases, tmp_path, kind):
    bundle = tuned_bundle(tiny_bases, kind)
    save_checkpoint(bundle, tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {RECIPE_FILE, TRAINABLE_FILE, "tokenizer.json", "processor_config.json", "preprocessor_config.json"} <= files
    stored = load_file(str(tmp_path / "ckpt" / TRAINABLE_FILE))
    assert set(stored) == {n for n, p in bundle.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.multi_modal_projector.") for n in stored)
    assert all(n.startswith("model.multi_modal_projector.") or ".lora_" in n for n in stored)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.recipe.stage == 2 and loaded.recipe.llm_adapter["kind"] == kind
    torch.testing.assert_close(logits(loaded), logits(bundle), rtol=0, atol=0)


def test_loading_never_depends_on_the_folder_name(tiny_bases, tmp_path):
    bundle = tuned_bundle(tiny_bases)
    save_checkpoint(bundle, tmp_path / "llava-v1.5-7b-lora-merged-pretrain")  # a name LLaVA would misread
    assert load_checkpoint(tmp_path / "llava-v1.5-7b-lora-merged-pretrain").recipe.tune_language_model == "adapter"


def test_earlier_stage_tensors_are_kept(tiny_bases, tmp_path):
    stage1 = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], template="plain")
    apply_tuning(stage1.model, stage1.recipe)
    save_checkpoint(stage1, tmp_path / "stage1")
    stage2 = load_checkpoint(tmp_path / "stage1")
    stage2.recipe = Recipe(**{**stage2.recipe.to_dict(), "tune_mm_projector": "frozen", "tune_language_model": "adapter",
                              "llm_adapter": AdapterConfig(kind="lora", r=2).to_dict()})
    apply_tuning(stage2.model, stage2.recipe)
    save_checkpoint(stage2, tmp_path / "stage2")
    stored = load_file(str(tmp_path / "stage2" / TRAINABLE_FILE))
    assert "model.multi_modal_projector.linear_1.weight" in stored  # frozen now, but trained in stage 1


def test_missing_pieces_are_named(tiny_bases, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a stage checkpoint"):
        load_checkpoint(tmp_path / "empty")
    bundle = tuned_bundle(tiny_bases)
    save_checkpoint(bundle, tmp_path / "ckpt")
    (tmp_path / "ckpt" / TRAINABLE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {TRAINABLE_FILE}"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_different_adapter_shape_is_an_error_that_says_so(tiny_bases, tmp_path):
    save_checkpoint(tuned_bundle(tiny_bases, r=4), tmp_path / "ckpt")
    recipe = json.loads((tmp_path / "ckpt" / RECIPE_FILE).read_text())
    recipe["llm_adapter"]["r"] = 8
    (tmp_path / "ckpt" / RECIPE_FILE).write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match=r"lora_A has shape \(4, \d+\), the model expects \(8, \d+\) \(a different rank"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_tensor_the_model_lacks_is_named(tiny_bases, tmp_path):
    save_checkpoint(tuned_bundle(tiny_bases), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / TRAINABLE_FILE
    tensors = load_file(str(path))
    tensors["model.language_model.layers.0.self_attn.q_proj.lora_X"] = torch.zeros(1)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="lora_X"):
        load_checkpoint(tmp_path / "ckpt")


def test_merged_directory_loads_as_it_is(tiny_bases, tmp_path):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    bundle.model.save_pretrained(tmp_path / "merged")
    bundle.tokenizer.save_pretrained(tmp_path / "merged")
    bundle.processor().save_pretrained(tmp_path / "merged")
    bundle.image_processor.save_pretrained(tmp_path / "merged")
    loaded = load_checkpoint(tmp_path / "merged")
    torch.testing.assert_close(logits(loaded), logits(bundle), rtol=1e-6, atol=1e-6)
    assert loaded.recipe.num_image_tokens == 16


def test_resuming_from_another_adapter_kind_or_rank_says_what_differs(tiny_bases, tmp_path):
    from llava_moslora.model.checkpoint import check_resumable

    save_checkpoint(tuned_bundle(tiny_bases, kind="moslora", r=4), tmp_path / "ckpt")
    this_run = tuned_bundle(tiny_bases, kind="lora", r=8)
    with pytest.raises(ValueError, match="cannot resume from") as raised:
        check_resumable(tmp_path / "ckpt", this_run.model, this_run.recipe)
    message = str(raised.value)
    assert "llm_adapter.kind: checkpoint 'moslora', this run 'lora'" in message
    assert "llm_adapter.r: checkpoint 4, this run 8" in message
    assert "lora_M: in the checkpoint, not in this model" in message
    assert "lora_A: checkpoint (4, " in message and "this model (8, " in message
    same = tuned_bundle(tiny_bases, kind="moslora", r=4)
    check_resumable(tmp_path / "ckpt", same.model, same.recipe)  # the same setup fits


def test_every_torch_load_in_the_package_refuses_pickled_code():
    """Loading is safetensors or torch.load(weights_only=True), never a bare pickle."""
    import ast
    from pathlib import Path

    import llava_moslora
    calls = []
    for source in Path(llava_moslora.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                keywords = {k.arg: k.value for k in node.keywords}
                calls.append(source.name)
                assert isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True, \
                    f"{source}:{node.lineno} calls torch.load without weights_only=True"
    assert calls  # the projector loader is one


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_pickled_projector_with_code_in_it_is_refused(tiny_bases, tmp_path):
    from llava_moslora.train.projector import load_projector

    torch.save({"model.mm_projector.0.weight": Payload()}, tmp_path / "mm_projector.bin")
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_projector(bundle.model, tmp_path / "mm_projector.bin")


def test_damaged_files_are_named_when_loading(tiny_checkpoint, tmp_path):
    """A truncated trainable.safetensors (a stage checkpoint) or weight shard (a merged folder),
    and a shard its index names but the folder lacks, are CheckpointErrors naming the file."""
    import shutil
    import subprocess
    import sys

    from llava_moslora.model import CheckpointError, load_checkpoint

    stage = tmp_path / "stage"
    shutil.copytree(tiny_checkpoint, stage)
    data = (stage / "trainable.safetensors").read_bytes()
    (stage / "trainable.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="trainable.safetensors: .*incomplete metadata"):
        load_checkpoint(stage)
    merged = tmp_path / "merged"
    subprocess.run([sys.executable, "-m", "llava_moslora", "merge", "--checkpoint", str(tiny_checkpoint), "--out",
                    str(merged)], check=True, capture_output=True)
    weights = next(merged.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{weights.name}: "):
        load_checkpoint(merged)
    (merged / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="names model-00002.safetensors, which is missing"):
        load_checkpoint(merged)
