"""Coming from LLaVA: docs/TRAINING.md's table covers every flag of LLaVA-1.5's own scripts, names
only what our scripts' --help lists, says "refused" exactly where we refuse; and LLaVA's flags
passed to our scripts are read as ours (or refused in one line)."""
import re
import subprocess

import pytest

from helpers import ROOT, run_script

from llava_moslora.train.llava_flags import translate

# haotian-liu/LLaVA, scripts/v1_5/finetune_lora.sh and scripts/v1_5/pretrain.sh (their flags and values)
FINETUNE_LORA = """--lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5
    --deepspeed ./scripts/zero3.json --model_name_or_path lmsys/vicuna-13b-v1.5 --version v1
    --data_path ./playground/data/llava_v1_5_mix665k.json --image_folder ./playground/data
    --vision_tower openai/clip-vit-large-patch14-336
    --pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin --mm_projector_type mlp2x_gelu
    --mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad
    --group_by_modality_length True --bf16 True --output_dir ./checkpoints/llava-v1.5-13b-lora --num_train_epochs 1
    --per_device_train_batch_size 16 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1
    --evaluation_strategy no --save_strategy steps --save_steps 50000 --save_total_limit 1 --learning_rate 2e-4
    --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1 --tf32 True
    --model_max_length 2048 --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True
    --report_to wandb""".split()
PRETRAIN = """--deepspeed ./scripts/zero2.json --model_name_or_path lmsys/vicuna-13b-v1.5 --version plain
    --data_path ./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json
    --image_folder ./playground/data/LLaVA-Pretrain/images --vision_tower openai/clip-vit-large-patch14-336
    --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True --mm_vision_select_layer -2
    --mm_use_im_start_end False --mm_use_im_patch_token False --bf16 True
    --output_dir ./checkpoints/llava-v1.5-13b-pretrain --num_train_epochs 1 --per_device_train_batch_size 32
    --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy no --save_strategy steps
    --save_steps 24000 --save_total_limit 1 --learning_rate 1e-3 --weight_decay 0. --warmup_ratio 0.03
    --lr_scheduler_type cosine --logging_steps 1 --tf32 True --model_max_length 2048 --gradient_checkpointing True
    --dataloader_num_workers 4 --lazy_preprocess True --report_to wandb""".split()


def flag_pairs(args):
    return [(a, args[i + 1]) for i, a in enumerate(args) if a.startswith("--")]


def table():
    """(LLaVA cell, ours cell, how cell) of each row of docs/TRAINING.md's "Coming from LLaVA"."""
    text = (ROOT / "docs" / "TRAINING.md").read_text()
    section = text.split("## Coming from LLaVA")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")][1:]
    return [tuple(cell.strip() for cell in row.strip("|").split(" | ")) for row in rows]


def code_spans(cell):
    return re.findall(r"`([^`]+)`", cell)


@pytest.fixture(scope="module")
def helps():
    scripts = "".join(subprocess.run(["bash", str(ROOT / "scripts" / s), "--help"], capture_output=True, text=True,
                                     check=True).stdout for s in ("pretrain.sh", "finetune.sh"))
    train = subprocess.run([str(ROOT / ".venv" / "bin" / "llava-moslora"), "train", "--help"], capture_output=True,
                           text=True, check=True).stdout
    return scripts, train


def test_the_table_covers_every_flag_of_llavas_scripts():
    covered = {flag for llava, _ours, _how in table() for span in code_spans(llava)
               for flag in re.findall(r"--\w+", span)}
    wanted = {flag for flag, _ in flag_pairs(FINETUNE_LORA + PRETRAIN)}
    assert wanted - covered == set()


def test_every_name_of_ours_is_in_the_scripts_help(helps):
    scripts, train = helps
    for _llava, ours, how in table():
        for span in code_spans(ours) + code_spans(how):
            for variable in re.findall(r"\b([A-Z][A-Z0-9_]{2,})=", span) + (
                    [span] if re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", span) else []):
                assert re.search(rf"\b{variable}\b", scripts), variable
            for flag in re.findall(r"--\w+", span):
                assert flag in train, flag


def test_the_table_says_refused_exactly_where_we_refuse():
    values = dict(flag_pairs(FINETUNE_LORA + PRETRAIN))
    for llava, _ours, how in table():
        for flag in {f for span in code_spans(llava) for f in re.findall(r"--\w+", span)}:
            _argv, _notes, refused = translate([flag, values.get(flag, "True")])
            assert bool(refused) == how.startswith("refused"), (flag, refused, how)


def test_renamed_flags_exist_here_under_the_new_name(helps):
    _scripts, train = helps
    translated, notes, refused = translate(FINETUNE_LORA)
    assert [r.split()[0] for r in refused] == ["--lora_enable"]
    for flag, _value in flag_pairs(translated):
        if flag != "--deepspeed":  # transformers' own, not listed by our --help's groups
            assert flag in train, flag
    assert "LLaVA's --gradient_checkpointing True read as --activation_checkpointing True" in notes


@pytest.mark.slow
def test_llavas_own_flags_run_through_our_scripts(tiny_bases, shapes_data, tmp_path):
    """LLaVA's pretrain.sh and finetune_lora.sh flags, paths pointed here, through our scripts'
    dry run: read as ours with a note each; --lora_enable is refused in one line before any load."""
    here = {"--model_name_or_path": tiny_bases["language_model"], "--vision_tower": tiny_bases["vision_tower"],
            "--data_path": str(shapes_data / "captions.json"), "--image_folder": str(shapes_data / "images"),
            "--output_dir": str(tmp_path / "out"), "--report_to": "none", "--bf16": "False", "--tf32": "False"}
    projector = tmp_path / "mm_projector.bin"
    projector.write_bytes(b"")  # the dry run reads no weights

    def ours(args, **more):
        pairs = flag_pairs(args)
        return [item for flag, value in pairs if flag != "--deepspeed"
                for item in (flag, more.get(flag, here.get(flag, value)))]

    stage1 = run_script("pretrain.sh", {}, "--dry_run", *ours(PRETRAIN))
    assert "LLaVA's --tune_mm_mlp_adapter True read as --tune_mm_projector full" in stage1.stdout
    assert "LLaVA's --version plain read as --template plain" in stage1.stdout
    stage2 = ours(FINETUNE_LORA, **{"--pretrain_mm_mlp_adapter": str(projector)})
    refused = run_script("finetune.sh", {"ADAPTER": "lora"}, "--dry_run", *stage2, succeed=False)
    assert refused.returncode == 2
    assert "--lora_enable is LLaVA's; here: the adapter is a choice" in refused.stderr
    lora_enable = stage2.index("--lora_enable")
    accepted = run_script("finetune.sh", {"ADAPTER": "lora"}, "--dry_run",
                          *stage2[:lora_enable], *stage2[lora_enable + 2:])
    for note in ("--version v1 read as --template vicuna_v1", "--warmup_ratio 0.03 read as --warmup_steps 0.03",
                 "--image_aspect_ratio pad needs no flag here", "--evaluation_strategy no read as --eval_strategy no"):
        assert note in accepted.stdout, note
    assert "dry run: nothing was trained" in accepted.stdout
