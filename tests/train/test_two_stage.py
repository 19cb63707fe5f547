"""Two-stage training through the launch scripts, 2 CPU processes, DeepSpeed ZeRO (gloo).

Each run goes through scripts/pretrain.sh or scripts/finetune.sh exactly as on a GPU cluster;
the scripts and the trainer detect the missing CUDA device themselves.
"""
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import FAST, losses, run_script, stage2_env

pytestmark = pytest.mark.slow


def assert_checkpoint_contract(directory):
    names = {p.name for p in directory.iterdir()}
    assert {"llava_moslora.json", "trainable.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "preprocessor_config.json"} <= names, names
    assert not names & {"model.safetensors", "pytorch_model.bin"}  # never the frozen base weights
    recipe = json.loads((directory / "llava_moslora.json").read_text())
    assert set(load_file(str(directory / "trainable.safetensors"))) == set(recipe["trained_tensors"])
    return recipe


def assert_learned(values, label):
    start, end = sum(values[:3]) / 3, sum(values[-5:]) / 5
    print(f"\n[{label}] loss: first 3 steps {start:.3f}, last 5 steps {end:.3f} ({len(values)} steps)")
    assert end < 0.9 * start, values


@pytest.fixture(scope="module")
def stage2_moslora(stage1, shapes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "stage2-moslora"
    result = run_script("finetune.sh", stage2_env(shapes_data, stage1, out, ADAPTER="moslora"), "--max_steps", "30", *FAST)
    return out, result


def test_stage1_learns_and_meets_the_checkpoint_contract(stage1):
    recipe = assert_checkpoint_contract(stage1)
    assert recipe["stage"] == 1 and recipe["template"] == "plain"
    assert any(n.startswith("model.multi_modal_projector.") for n in recipe["trained_tensors"])
    assert_checkpoint_contract(stage1 / "checkpoint-20")
    assert_learned(losses(stage1), "stage 1, ZeRO-2")


def test_stage2_moslora_zero2_learns(stage2_moslora, stage1):
    out, result = stage2_moslora
    assert "no CUDA device: training on the CPU" in result.stdout or torch.cuda.is_available()
    assert "mm_projector" in result.stdout and "language_model" in result.stdout  # the trainable table
    assert "processed with padding" in result.stdout  # the end-of-run summary: real and processed tokens
    recipe = assert_checkpoint_contract(out)
    assert recipe["stage"] == 2 and recipe["llm_adapter"]["kind"] == "moslora"
    stored = load_file(str(out / "trainable.safetensors"))
    assert any(k.endswith(".lora_M") for k in stored)
    # stage 1 trained the whole LLM here: those tensors travel on under their un-adapted names
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in stored
    assert_checkpoint_contract(out / "checkpoint-30")
    assert_learned(losses(out), "stage 2 moslora, ZeRO-2")


def assert_built_partitioned(printed, world=2):
    """The bases were loaded under zero.Init: rank 0 holds its share of them (a whole build has
    nothing partitioned until DeepSpeed starts)."""
    held, whole = map(float, re.search(r"ZeRO-3: the bases loaded partitioned, this rank holds ([\d.]+) MiB of "
                                       r"their ([\d.]+) MiB", printed).groups())
    assert 0 < whole and held <= whole / world * 1.05 + 0.1, (held, whole)  # DeepSpeed pads each slice a little


def test_stage2_zero3_from_stage1(stage1, stage2_moslora, shapes_data, tmp_path):
    out = tmp_path / "stage2-zero3"
    result = run_script("finetune.sh", stage2_env(shapes_data, stage1, out, ADAPTER="moslora", ZERO="3"),
                        "--max_steps", "30", *FAST)
    assert_built_partitioned(result.stdout)
    assert_checkpoint_contract(out)
    stage1_projector = load_file(str(stage1 / "trainable.safetensors"))["model.multi_modal_projector.linear_1.weight"]
    stored = load_file(str(out / "trainable.safetensors"))
    assert stored["model.multi_modal_projector.linear_1.weight"].shape == stage1_projector.shape  # not [0]
    assert_learned(losses(out), "stage 2 moslora, ZeRO-3")
    # Same seed, data and steps as the ZeRO-2 run: the gathered ZeRO-3 tensors must match its.
    zero2 = load_file(str(stage2_moslora[0] / "trainable.safetensors"))
    assert set(zero2) == set(stored)
    for name, tensor in zero2.items():
        torch.testing.assert_close(stored[name], tensor, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_stage2_moelora_riemannian_sqrt_zero2(stage1, shapes_data, tmp_path):
    out = tmp_path / "stage2-moe"
    run_script("finetune.sh", stage2_env(shapes_data, stage1, out, ADAPTER="moelora", NUM_EXPERTS="4",
                                                  TOP_K="2", GATE_RESCALE="sqrt", RIEMANNIAN="1", LR="1e-2",
                                                  ROUTER_LR="1e-4"),
                        "--max_steps", "30", *FAST)
    recipe = assert_checkpoint_contract(out)
    assert recipe["llm_adapter"]["gate_rescale"] == "sqrt"
    state = json.loads((out / "trainer_state.json").read_text())
    assert all("expert_load_max" in e for e in state["log_history"] if "loss" in e)
    assert_learned(losses(out), "stage 2 moelora + Riemannian + sqrt, ZeRO-2")


# Slowest ten of the suite (CI, 2 cores): ~60 s, most of it DeepSpeed compiling its cpu_adam op on a fresh
# machine (once); the mapping to DeepSpeedCPUAdam only happens in a real offloaded launch.
@pytest.fixture(scope="module")
def moelora_offload(stage1, shapes_data, tmp_path_factory):
    """Two MoE-LoRA steps under ZeRO-3 with CPU offload: (output folder, the launch's result)."""
    out = tmp_path_factory.mktemp("run") / "stage2-offload"
    result = run_script("finetune.sh", stage2_env(shapes_data, stage1, out, ADAPTER="moelora", NUM_EXPERTS="2",
                                                  TOP_K="1", ZERO="3_offload", LR="1e-2", MM_PROJECTOR_LR="1e-3",
                                                  ROUTER_LR="1e-4"), "--max_steps", "2", *FAST)
    return out, result


def test_zero3_offload_keeps_the_projector_and_router_rates(moelora_offload):
    """With CPU offload accelerate maps the Trainer's AdamW to DeepSpeedCPUAdam; the optimizer
    groups create_optimizer made keep their rates through that mapping."""
    out, result = moelora_offload
    assert ("[llava-moslora] optimizer DeepSpeedCPUAdam; learning rates: mm_projector 0.001, the rest 0.01, "
            "routers 0.0001") in result.stdout, result.stdout[-3000:]
    assert_built_partitioned(result.stdout)
    assert_checkpoint_contract(out)


def test_riemannian_under_zero3_is_refused_before_the_ranks_start(stage1, shapes_data, tmp_path):
    env = stage2_env(shapes_data, stage1, tmp_path / "refused", RIEMANNIAN="1", ZERO="3")
    result = run_script("finetune.sh", env, "--max_steps", "2", *FAST, succeed=False)
    assert result.returncode == 2 and "--riemannian needs each adapter factor whole" in result.stderr, result.stderr
    assert "CPUs for this node's" not in result.stdout  # the launch checks said it; no rank was started


def assert_deepspeed_states_hold_only_trained(checkpoint):
    """DeepSpeed's part of a checkpoint-N: the trained tensors and their optimizer states, nothing
    of the frozen base (which DeepSpeed would otherwise write whole, again at every save)."""
    step_dir = next(checkpoint.glob("global_step*"))
    on_disk = sum(f.stat().st_size for f in step_dir.iterdir())
    for model_states in step_dir.glob("*model_states.pt"):  # one file (ZeRO-2), one per rank (ZeRO-3)
        states = torch.load(model_states, weights_only=False, map_location="cpu")
        module = states["module"]
        assert module and all(".lora_" in k or "multi_modal_projector." in k for k in module), sorted(module)
        assert not states.get("frozen_param_fragments")
    trained = sum(shape.numel() for group in states["param_shapes"] for shape in group.values())
    print(f"\nDeepSpeed's checkpoint: {on_disk} bytes for {trained} trained values")
    # the optimizer's fp32 master copy and Adam's two moments (12 B), the fp32 weights in the model
    # states under ZeRO-2 (4 B; ZeRO-3 keeps placeholders), plus pickle framing
    assert 12 * trained <= on_disk < 16 * trained + 256 * 1024


RESUME_FLAGS = ["--lr_scheduler_type", "constant", "--save_steps", "5", "--dataloader_num_workers", "0",
                "--warmup_steps", "0", "--model_max_length", "256", "--save_total_limit", "3"]


@pytest.mark.parametrize("zero", ["2", "3"])
def test_resume_gives_the_same_losses(zero, stage1, shapes_data, uninterrupted, tmp_path):
    """Against tests/train/conftest.py's 10 uninterrupted ZeRO-2 steps (ZeRO-3 trains the same:
    test_stage2_zero3_from_stage1); checkpoints do not change the losses."""
    part = tmp_path / "part"
    run_script("finetune.sh", stage2_env(shapes_data, stage1, part, ZERO=zero), "--max_steps", "5", *RESUME_FLAGS)
    run_script("finetune.sh", stage2_env(shapes_data, stage1, part, ZERO=zero), "--max_steps", "10",
               "--resume_from_checkpoint", str(part / "checkpoint-5"), *RESUME_FLAGS)
    assert_deepspeed_states_hold_only_trained(part / "checkpoint-5")
    whole, resumed = losses(uninterrupted), losses(part)
    print(f"\nlosses after step 5: uninterrupted {whole[5:]}, resumed {resumed[-5:]}")
    # Tolerance: float32 on CPU, same seeds and data order; allow summation-order noise only.
    assert resumed[-5:] == pytest.approx(whole[5:], rel=1e-3)


MERGED_LOGITS = """
import sys, torch
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1])
torch.manual_seed(0)
ids = torch.tensor([[1] + [model.config.image_token_id] * model.config.image_seq_length + [5, 6, 7]])
with torch.no_grad():
    logits = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32)).logits
torch.save({"logits": logits, "modules": sorted(m for m in sys.modules if m.startswith("llava_moslora"))}, sys.argv[2])
"""


def reference_logits(model):
    torch.manual_seed(0)
    ids = torch.tensor([[1] + [model.config.image_token_id] * model.config.image_seq_length + [5, 6, 7]])
    with torch.no_grad():
        return model.eval()(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32)).logits


def test_merge_loads_in_plain_transformers_with_the_same_logits(stage2_moslora, tmp_path):
    from llava_moslora.model import load_checkpoint
    out, _ = stage2_moslora
    merged = tmp_path / "merged"
    subprocess.run([sys.executable, "-m", "llava_moslora", "merge", "--checkpoint", str(out), "--out", str(merged)],
                   check=True, capture_output=True, text=True)
    subprocess.run([sys.executable, "-c", MERGED_LOGITS, str(merged), str(tmp_path / "logits.pt")], check=True,
                   capture_output=True, text=True)
    result = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert result["modules"] == []  # the check ran without this package
    torch.testing.assert_close(result["logits"], reference_logits(load_checkpoint(out).model), rtol=1e-4, atol=1e-4)


def test_export_peft_loads_on_the_base_with_the_same_logits(stage1, stage2_moslora, tmp_path):
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    from llava_moslora.model import load_checkpoint
    out, _ = stage2_moslora
    base, export = tmp_path / "stage1-merged", tmp_path / "peft"
    for command in (["merge", "--checkpoint", str(stage1), "--out", str(base)],
                    ["export-peft", "--checkpoint", str(out), "--out", str(export), "--base", str(base)]):
        subprocess.run([sys.executable, "-m", "llava_moslora", *command], check=True, capture_output=True, text=True)
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert config["modules_to_save"] == ["model.multi_modal_projector"]  # the LLM weights stage 1 trained are in base
    peft_model = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(base), str(export))
    torch.testing.assert_close(reference_logits(peft_model), reference_logits(load_checkpoint(out).model),
                               rtol=1e-4, atol=1e-4)


def test_export_peft_carries_a_trained_vision_tower_or_refuses(stage1, shapes_data, tmp_path):
    """A stage 2 that also trains the whole vision tower: the export carries the tower, PEFT's
    model computes what ours does; over a base that lacks stage 1's LLM weights, the export
    refuses and names them (they sit inside LoRA-adapted layers, which PEFT keeps frozen)."""
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    from llava_moslora.model import load_checkpoint
    out, base, export = tmp_path / "stage2-tower", tmp_path / "stage1-merged", tmp_path / "peft"
    run_script("finetune.sh", stage2_env(shapes_data, stage1, out, ADAPTER="lora"), "--max_steps", "2",
               "--tune_vision_tower", "full", *FAST)
    assert any(n.startswith("model.vision_tower.") for n in json.loads((out / "llava_moslora.json").read_text())
               ["trained_tensors"])
    for command in (["merge", "--checkpoint", str(stage1), "--out", str(base)],
                    ["export-peft", "--checkpoint", str(out), "--out", str(export), "--base", str(base)]):
        subprocess.run([sys.executable, "-m", "llava_moslora", *command], check=True, capture_output=True, text=True)
    config = json.loads((export / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["model.multi_modal_projector", "model.vision_tower"]
    peft_model = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(base), str(export))
    torch.testing.assert_close(reference_logits(peft_model), reference_logits(load_checkpoint(out).model),
                               rtol=1e-4, atol=1e-4)

    # a base without stage 1's training: the LLM weights it changed cannot travel
    raw, other = tmp_path / "raw-base", LlavaForConditionalGeneration.from_pretrained(base)
    with torch.no_grad():
        other.model.language_model.layers[0].self_attn.q_proj.weight += 1.0
    other.save_pretrained(raw)
    refused = subprocess.run([sys.executable, "-m", "llava_moslora", "export-peft", "--checkpoint", str(out), "--out",
                              str(tmp_path / "peft-refused"), "--base", str(raw)], capture_output=True, text=True)
    assert refused.returncode != 0, refused.stdout
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in refused.stderr
    assert not (tmp_path / "peft-refused" / "adapter_model.safetensors").exists()


def test_moelora_refuses_to_merge(moelora_offload, tmp_path):
    out, _ = moelora_offload
    result = subprocess.run([sys.executable, "-m", "llava_moslora", "merge", "--checkpoint", str(out),
                             "--out", str(tmp_path / "merged")], capture_output=True, text=True)
    assert result.returncode != 0 and "MoE-LoRA adapters, which cannot be merged" in result.stderr
    from llava_moslora.model import load_checkpoint
    assert load_checkpoint(out).recipe.llm_adapter["kind"] == "moelora"  # still loadable
