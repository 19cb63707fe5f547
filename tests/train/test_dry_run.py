"""--dry_run: the model from its configs on the meta device (no weight file read), the trainable
table, the batch arithmetic and the ZeRO-2/3 memory estimate, through the stage scripts."""
import json
import shutil

import pytest

from helpers import FAST, run_script, stage2_env


@pytest.fixture(scope="module")
def weightless_bases(tiny_bases, tmp_path_factory):
    """The tiny bases with every weight file removed: only configs and tokenizers remain."""
    root = tmp_path_factory.mktemp("weightless")
    copies = {}
    for role, path in tiny_bases.items():
        copy = root / role
        shutil.copytree(path, copy)
        for weights in [*copy.glob("*.safetensors"), *copy.glob("*.bin")]:
            weights.unlink()
        copies[role] = str(copy)
    return copies


def test_dry_run_reads_no_weights_and_reports_the_run(weightless_bases, shapes_data, tmp_path):
    out = tmp_path / "never-written"
    result = run_script("pretrain.sh", {"MODEL": weightless_bases["language_model"],
                                        "VISION_TOWER": weightless_bases["vision_tower"],
                                        "DATA_PATH": str(shapes_data / "captions.json"),
                                        "IMAGE_FOLDER": str(shapes_data / "images"), "OUTPUT_DIR": str(out),
                                        "NNODES": "2", "NODE_RANK": "1", "NUM_GPUS": "4", "GLOBAL_BATCH": "64",
                                        "PER_DEVICE_BATCH": "4", "ZERO": "3"},
                        "--dry_run", "--bf16", "True")
    printed = result.stdout
    assert "8 process(es) x per-device batch 4 x accumulation 2 = global batch 64" in printed
    # 32 captions over 8 processes x 4 = 1 batch per rank; accumulation 2 still steps once
    assert "32 records -> 1 optimizer steps per epoch; 1 epoch(s) -> 1 steps" in printed
    assert "mm_projector" in printed and "weights at 2 bytes" in printed and "this run: ZeRO-3" in printed
    for kind in ("weights", "gradients", "optimizer states", "activations (rough)", "total"):
        assert f"\n  {kind} " in printed, kind
    assert "each checkpoint-N on disk, estimated: " in printed and "--save_total_limit keeps 1" in printed
    assert not out.exists()  # nothing was trained or written


def test_checkpoint_size_closed_form():
    from llava_moslora.train.dry_run import checkpoint_bytes

    # 1,000 trained values: bf16 in the stage checkpoint and (ZeRO-2) DeepSpeed's model states, 12 optimizer bytes
    assert checkpoint_bytes(1000, 2, 2) == 1000 * (2 + 2 + 12)
    assert checkpoint_bytes(1000, 2, 3) == 1000 * (2 + 12)


def test_meta_model_counts_match_the_loaded_model(tiny_bases):
    from llava_moslora.adapters import AdapterConfig
    from llava_moslora.model import Recipe, apply_tuning, build_llava, parameter_counts

    counts = []
    for weights in (True, False):
        bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], weights=weights)
        recipe = Recipe(**{**bundle.recipe.to_dict(), "tune_language_model": "adapter", "tune_mm_projector": "full",
                           "llm_adapter": AdapterConfig(kind="moslora", r=4).to_dict()})
        apply_tuning(bundle.model, recipe)
        on_meta = {p.is_meta for p in bundle.model.parameters()}
        assert on_meta == {not weights}
        counts.append(parameter_counts(bundle.model))
    assert counts[0] == counts[1]


def test_memory_estimate_closed_form():
    from llava_moslora.train.dry_run import Batches, estimate

    parts = estimate(trainable=1000, frozen=9000, world=4, width=2, activations=7, bucket_elements=10, max_live=3000)
    assert parts[2] == {"weights": 20000, "gradients": 1000 * 2 / 4 + 2 * 10 * 2, "optimizer states": 1000 * 12 / 4,
                        "activations (rough)": 7}
    assert parts[3]["weights"] == 10000 * 2 / 4 + 3000 * 2  # the partition + what may stay gathered
    assert {k: v for k, v in parts[3].items() if k != "weights"} == {k: v for k, v in parts[2].items() if k != "weights"}
    batches = Batches(world=2, per_device=2, accumulation=3, records=36, epochs=2, max_steps=-1)
    assert (batches.global_batch, batches.steps_per_epoch, batches.total_steps) == (12, 3, 6)


@pytest.mark.slow
def test_dry_run_steps_are_the_trainers(stage1, shapes_data, tmp_path):
    """The dry run's step count is what the Trainer then runs (36 records, 2 processes x 2 x 3)."""
    out = tmp_path / "stage2"
    env = stage2_env(shapes_data, stage1, out, GLOBAL_BATCH="12", PER_DEVICE_BATCH="2", EPOCHS="1")
    flags = [*FAST, "--save_steps", "1000"]
    planned = run_script("finetune.sh", env, *flags, "--dry_run").stdout
    assert "36 records -> 3 optimizer steps per epoch; 1 epoch(s) -> 3 steps" in planned
    run_script("finetune.sh", env, *flags)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["max_steps"] == 3 and state["global_step"] == 3


def test_moelora_defaults_to_its_papers_rank_per_expert(stage1, shapes_data, tmp_path):
    """ADAPTER=moelora alone gives the paper's 20 experts of rank 4 (alpha 16), not 20 of LoRA's 128."""
    def language_model_trainable(**variables):
        env = {k: v for k, v in stage2_env(shapes_data, stage1, tmp_path / "x", ADAPTER="moelora").items()
               if k not in ("LORA_R", "LORA_ALPHA")}
        printed = run_script("finetune.sh", {**env, **variables}, "--dry_run").stdout
        return int(next(line.split()[1] for line in printed.splitlines()
                        if line.startswith("language_model")).replace(",", ""))

    default = language_model_trainable()
    assert default == language_model_trainable(LORA_R="4", LORA_ALPHA="16")
    assert language_model_trainable(LORA_R="128", LORA_ALPHA="256") > 10 * default


def test_the_vision_tower_can_take_lora_beside_a_moslora_llm(weightless_bases, shapes_data, tmp_path):
    """--vision_adapter lora (the MoSLoRA paper's InternLM2 run: no mixer on the ViT): the tower's
    adapters lose exactly their r x r mixers, one per adapted linear layer; the LLM's keep theirs."""
    from transformers import CLIPVisionConfig

    def trainable(*flags):
        printed = run_script("pretrain.sh", {"MODEL": weightless_bases["language_model"],
                                             "VISION_TOWER": weightless_bases["vision_tower"],
                                             "DATA_PATH": str(shapes_data / "captions.json"),
                                             "IMAGE_FOLDER": str(shapes_data / "images"),
                                             "OUTPUT_DIR": str(tmp_path / "never-written")},
                             "--dry_run", "--tune_vision_tower", "adapter", "--tune_language_model", "adapter",
                             "--adapter", "moslora", "--vision_lora_r", "4", *flags).stdout
        table = printed.split("trainable by kind")[0]  # the per-component table
        rows = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in table.splitlines()
                if line.split() and line.split()[0] in ("vision_tower", "language_model")}
        return rows["vision_tower"], rows["language_model"]

    moslora_tower, moslora_llm = trainable()
    lora_tower, lora_llm = trainable("--vision_adapter", "lora")
    config = CLIPVisionConfig.from_pretrained(weightless_bases["vision_tower"])
    linears = config.num_hidden_layers * 6  # q, k, v, out_proj, fc1, fc2 in each encoder layer
    assert moslora_tower - lora_tower == linears * 4 * 4
    assert lora_llm == moslora_llm
