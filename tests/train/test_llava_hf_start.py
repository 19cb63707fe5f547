"""Stage 2 from a trained LLaVA (llava-hf layout) named by its hub id and found in the Hugging
Face cache, offline: it trains through finetune.sh, the stage-2 checkpoint reloads on that LLaVA's
weights, and merges; LLaVA's original layout gets a message naming the conversion."""
import json
import subprocess
import sys

import pytest
import torch

from helpers import FAST, losses, run_script, stage2_env
from llava_moslora.model import CheckpointError, build_llava, load_checkpoint

COMMIT = "0" * 40


def cached_llava_hf(bases, cache, repo="tiny-org/llava-tiny-hf"):
    """A llava-hf model (weights unlike the bases': a trained projector and LM) saved with
    save_pretrained into a hub cache folder as `repo` would be downloaded."""
    bundle = build_llava(bases["vision_tower"], bases["language_model"])
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in bundle.model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    bundle.model.save_pretrained(snapshot)
    bundle.tokenizer.save_pretrained(snapshot)
    bundle.image_processor.save_pretrained(snapshot)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return repo, snapshot, bundle.model


@pytest.mark.slow
def test_stage2_from_a_cached_llava_hf_id_trains_reloads_and_merges(tiny_bases, shapes_data, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo, snapshot, start_model = cached_llava_hf(tiny_bases, cache)
    out = tmp_path / "stage2"
    env = {**stage2_env(shapes_data, repo, out), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    run_script("finetune.sh", env, "--max_steps", "6", *FAST)
    assert len(losses(out)) == 6
    recipe = json.loads((out / "llava_moslora.json").read_text())
    assert recipe["language_model"] == recipe["vision_tower"] == repo  # rebuilt from it, wherever the cache is

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read when imported, else
    trained = load_checkpoint(out).model.eval()
    # the LLaVA's own weights under the adapters: its (frozen) LM layers, not the bases'
    name = "model.language_model.layers.0.mlp.down_proj.base_layer.weight"
    assert torch.equal(dict(trained.named_parameters())[name],
                       dict(start_model.named_parameters())[name.replace(".base_layer", "")])
    merged = tmp_path / "merged"
    result = subprocess.run([sys.executable, "-m", "llava_moslora", "merge", "--checkpoint", str(out), "--out",
                             str(merged)], capture_output=True, text=True,
                            env={**__import__("os").environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    torch.manual_seed(0)
    ids = torch.tensor([[1] + [trained.config.image_token_id] * trained.config.image_seq_length + [5, 6, 7]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = trained(input_ids=ids, pixel_values=pixels).logits
        theirs = load_checkpoint(merged).model.eval()(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_an_uncached_hub_id_offline_and_the_original_llava_layout_are_explained(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="hf download someone/not-cached"):
        load_checkpoint("someone/not-cached")
    original = tmp_path / "llava-v1.5-7b"  # LLaVA's own repository's layout
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaForCausalLM"],
                                                      "model_type": "llava_llama", "mm_projector_type": "mlp2x_gelu"}))
    with pytest.raises(CheckpointError, match="original layout.*convert_llava_weights_to_hf"):
        load_checkpoint(original)
