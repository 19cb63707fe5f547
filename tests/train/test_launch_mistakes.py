"""Mistakes at launch fail fast, in one line: each named variable checked before any process
group starts or any weight loads (train/preflight.py), exit 2; the project's own errors from
inside a run are said once, on rank 0, without a traceback per rank."""
import subprocess
import sys

import pytest

from helpers import ROOT, run_script, stage2_env


def failed_in_one_line(result, *expected):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "component" not in result.stdout  # no model was built
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("variable, value, expected", [
    ("DATA_PATH", "/nonexistent.json", "is no file or folder"),
    ("STAGE1_DIR", "checkpoints/llava-typo", "hf download checkpoints/llava-typo"),
    ("IMAGE_FOLDER", "/no/images", "no such folder"),
    ("ADAPTER", "dora", "accepted: lora, moslora, moelora"),
    ("TEMPLATE", "vicuna", "accepted: plain, vicuna_v1"),
    ("DATA_MIXTURE", "a.json:0", "above 0"),
    ("REPORT_TO", "tensorbord", "accepted: none, all,"),
])
def test_finetune_names_the_variable_that_is_wrong(shapes_data, stage1, tmp_path, variable, value, expected):
    env = {**stage2_env(shapes_data, stage1, tmp_path / "out"), variable: value}
    result = run_script("finetune.sh", env, succeed=False)
    failed_in_one_line(result, f"{variable}={value}", expected)


def test_a_tracker_that_is_not_installed_names_the_install(shapes_data, stage1, tmp_path):
    import importlib.util

    missing = next(name for name in ("wandb", "mlflow", "tensorboard", "trackio") if importlib.util.find_spec(name) is None)
    env = {**stage2_env(shapes_data, stage1, tmp_path / "out"), "REPORT_TO": missing}
    failed_in_one_line(run_script("finetune.sh", env, succeed=False), f"REPORT_TO={missing}", f"pip install {missing}")


def test_a_missing_model_or_tower_and_an_unknown_zero_stop_pretrain(tiny_bases, shapes_data, tmp_path):
    env = {"MODEL": tiny_bases["language_model"], "VISION_TOWER": tiny_bases["vision_tower"],
           "DATA_PATH": str(shapes_data / "captions.json"), "IMAGE_FOLDER": str(shapes_data / "images"),
           "OUTPUT_DIR": str(tmp_path / "s1"), "GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": "4"}
    failed_in_one_line(run_script("pretrain.sh", {**env, "MODEL": str(tmp_path / "vicuna")}, succeed=False),
                       "MODEL=", "no such file or folder")
    failed_in_one_line(run_script("pretrain.sh", {**env, "VISION_TOWER": str(tmp_path)}, succeed=False),
                       "VISION_TOWER=", "neither llava_moslora.json nor config.json")
    failed_in_one_line(run_script("pretrain.sh", {**env, "ZERO": "4"}, succeed=False), "ZERO must be 2, 3 or 3_offload")


def test_an_output_folder_holding_another_run_is_refused_unless_resuming(shapes_data, stage1, uninterrupted, tmp_path):
    env = stage2_env(shapes_data, stage1, uninterrupted)
    failed_in_one_line(run_script("finetune.sh", env, succeed=False), "OUTPUT_DIR=", "holds another run",
                       "--resume_from_checkpoint auto")
    dry = run_script("finetune.sh", env, "--dry_run")  # a dry run writes nothing: allowed
    assert "component" in dry.stdout


def test_train_itself_checks_and_says_data_errors_once(shapes_data, stage1, tmp_path):
    direct = subprocess.run([sys.executable, "-m", "llava_moslora", "train", "--data_path", "/nonexistent.json",
                             "--pretrain_mm_mlp_adapter", str(stage1), "--output_dir", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    failed_in_one_line(direct, "--data_path /nonexistent.json", "is no file or folder")
    # an error met inside the run (here: every sample's image missing), from both ranks: one line
    broken = tmp_path / "broken.json"
    broken.write_text((shapes_data / "captions.json").read_text().replace('.png"', '.gone.png"'))
    env = {**stage2_env(shapes_data, stage1, tmp_path / "run"), "DATA_PATH": str(broken)}
    result = run_script("finetune.sh", env, succeed=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert result.stderr.count("bad samples in") == 1


BLOCKER = '''import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED}:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Blocked())
'''


@pytest.mark.parametrize("family, blocked, expected", [
    ("vicuna", ("google",), "(sentencepiece, no tokenizer.json) needs protobuf to load: pip install protobuf"),
    ("llama3_tiktoken", ("tiktoken",), "(tiktoken, no tokenizer.json) needs tiktoken to load: pip install tiktoken"),
])
def test_a_tokenizer_that_cannot_load_names_the_install(family, blocked, expected, tiny_bases, shapes_data, tmp_path):
    """A SentencePiece-only LLM (Vicuna, LLaVA-1.5) without protobuf, Llama 3's tiktoken file without
    tiktoken: one line naming the folder and the install, before any process starts. The libraries
    are hidden from Python by a sitecustomize, as on a machine without them."""
    from real_tokenizers import save_real_tokenizer_lm

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER.replace("{BLOCKED}", repr(set(blocked))))
    model = save_real_tokenizer_lm(tmp_path / "models", family)
    env = {"MODEL": str(model), "VISION_TOWER": tiny_bases["vision_tower"], "PYTHONPATH": str(tmp_path / "site"),
           "DATA_PATH": str(shapes_data / "captions.json"), "IMAGE_FOLDER": str(shapes_data / "images"),
           "OUTPUT_DIR": str(tmp_path / "s1")}
    failed_in_one_line(run_script("pretrain.sh", env, succeed=False), f"MODEL={model}", expected)


@pytest.mark.parametrize("choice, expected", [
    ("cls_patch", "cls_patch keeps a CLS token, which a siglip_vision_model tower does not have"),
    ("default", "default drops the first token, which on a siglip_vision_model tower (no CLS token) is a patch"),
    ("cls", "unknown feature selection 'cls'; accepted: auto, patch, cls_patch"),
])
def test_a_feature_choice_the_tower_cannot_give_is_refused(choice, expected, tiny_bases, shapes_data, tmp_path):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    tower = tmp_path / "siglip"
    SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tower)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tower)
    env = {"MODEL": tiny_bases["language_model"], "VISION_TOWER": str(tower), "OUTPUT_DIR": str(tmp_path / "s1"),
           "DATA_PATH": str(shapes_data / "captions.json"), "IMAGE_FOLDER": str(shapes_data / "images")}
    failed_in_one_line(run_script("pretrain.sh", env, "--mm_vision_select_feature", choice, succeed=False),
                       f"VISION_TOWER={tower}", expected)


@pytest.mark.parametrize("argv", [
    ["--dry_run"], ["--dry_run", "True"], ["--dry_run", "false"], ["--dry_run=true"], ["--dry_run=False"],
    ["--dry-run", "yes"], ["--dry_run", "no"], ["--dry_run", "t"], ["--dry_run", "1", "--dry_run", "0"],
    ["--output_dir", "a", "--output-dir", "b"], ["--output_dir=c"], ["--trust_remote_code"],
    ["--trust-remote-code", "n"], ["--mm_vision_select_feature", "cls_patch"], ["--mm-vision-select-feature=patch"],
    ["--riemannian", "--bits", "4"], ["--riemannian=0", "--bits=8"],
])
def test_the_launch_checks_read_argv_as_the_trainer_does(argv):
    """preflight.flag_value / flag_is_on against HfArgumentParser, the trainer's own parse."""
    from transformers import HfArgumentParser

    from llava_moslora.model import ModelArguments
    from llava_moslora.train.arguments import DataArguments, LlavaTrainingArguments
    from llava_moslora.train.preflight import flag_is_on, flag_value

    required = ["--output_dir", "x"] if not any(a.startswith(("--output_dir", "--output-dir")) for a in argv) else []
    model, data, training = HfArgumentParser((ModelArguments, DataArguments, LlavaTrainingArguments)) \
        .parse_args_into_dataclasses(required + argv + ["--use_cpu", "True"])
    assert flag_is_on(argv, "--dry_run") == training.dry_run
    assert flag_is_on(argv, "--trust_remote_code") == model.trust_remote_code
    assert (flag_value(required + argv, "--output_dir") or "x") == training.output_dir
    assert (flag_value(argv, "--mm_vision_select_feature") or "auto") == model.mm_vision_select_feature
    assert flag_is_on(argv, "--riemannian") == training.riemannian
    assert int(flag_value(argv, "--bits") or 16) == model.bits


def test_riemannian_preconditioning_is_refused_in_fp16():
    """fp16's loss scaling meets the preconditioner's large inverse while B is near zero: refused
    in one line (a V100 rank picks fp16 itself, so the message says how to train instead)."""
    from types import SimpleNamespace

    from llava_moslora.train.main import refuse_impossible

    training = SimpleNamespace(riemannian=True, fp16=True, zero_stage=lambda: 2)
    with pytest.raises(SystemExit, match=r"--riemannian with fp16: .* bf16 .* or fp32 \(--fp16 False\)"):
        refuse_impossible(SimpleNamespace(), training)
