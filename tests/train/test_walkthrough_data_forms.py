"""Issue 33's walk-through, as a user would do it: ShapesVQA with two-image comparison questions,
converted to one parquet file (messages + images, images inside), mixed 0.7 / 0.3 with the
original JSON, fine-tuned from a merged stage-2 model through finetune.sh; then evaluated on the
two-image benchmark and asked about two images in chat."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from helpers import FAST, ROOT, losses, run_script


def cli(*args, timeout=600):
    result = subprocess.run([sys.executable, "-m", "llava_moslora", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_parquet_pairs_and_json_mixed_from_a_merged_model_train_evaluate_and_chat(uninterrupted, tmp_path):
    data = tmp_path / "shapes"
    cli("synth", "--out", str(data), "--seed", "2", "--num_pretrain", "0", "--num_instruct", "60", "--num_test", "8",
        "--num_pairs", "40")
    merged = tmp_path / "merged"
    cli("merge", "--checkpoint", str(uninterrupted), "--out", str(merged))
    table = tmp_path / "pairs.parquet"
    cli("convert-data", "--data_path", f"{data / 'pairs.json'},{data / 'instruct.json'}",
        "--image_folder", str(data / "images"), "--out", str(table))

    out = tmp_path / "mixed"
    env = {"STAGE1_DIR": str(merged), "DATA_MIXTURE": f"{table}:0.7,{data / 'instruct.json'}:0.3",
           "IMAGE_FOLDER": str(data / "images"), "OUTPUT_DIR": str(out), "GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": "4",
           "LORA_R": "8", "LORA_ALPHA": "16", "LORA_DROPOUT": "0", "LR": "1e-3"}
    result = run_script("finetune.sh", env, "--max_steps", "4", *FAST)
    assert len(losses(out)) == 4
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert sum(metrics["mixture"].values()) == 100 + 60  # the weighted sources' sizes together
    assert f"mixture: {table} " in result.stdout

    lmu = tmp_path / "lmu"
    lmu.mkdir()
    pairs = pd.read_csv(data / "ShapesVQA_Pairs.tsv", sep="\t")
    pairs.to_csv(lmu / "My_Pairs.tsv", sep="\t", index=False)  # a custom name, as a user's own benchmark
    cli("eval", "--model", str(out), "--benchmarks", "My_Pairs", "--data-root", str(lmu),
        "--work-dir", str(tmp_path / "eval"), "--backend", "builtin")
    predictions = list((tmp_path / "eval").rglob("*My_Pairs*.xlsx"))
    assert predictions and len(pd.read_excel(predictions[0])) == len(pairs)
    images = sorted((data / "images").glob("test_*.png"))[:2]
    answer = cli("chat", "--model", str(out), "--image", str(images[0]), "--image", str(images[1]),
                 "--prompt", "Which image has more shapes?", "--max_new_tokens", "4")
    assert len(answer.stdout.splitlines()) == 1


def test_the_example_script_says_what_it_needs_first(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "scripts" / "examples" / "pairs_mixture.sh"), str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "run bash scripts/quickstart.sh first" in result.stderr
