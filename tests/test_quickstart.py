"""A shortened quickstart (tiny data, few steps) end to end, exactly as a newcomer runs it."""
import os
import subprocess

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_shortened_quickstart_runs_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(NUM_PRETRAIN="48", NUM_INSTRUCT="48", NUM_TEST="8", STAGE1_EPOCHS="1", STAGE2_EPOCHS="1",
               OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), "--out", str(tmp_path / "qs")],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = tmp_path / "qs"
    for path in ("data/ShapesVQA_MCQ.tsv", "base/llm/config.json", "stage1/trainable.safetensors",
                 "stage2/llava_moslora.json", "eval/stage2/stage2_ShapesVQA_MCQ_acc.csv",
                 "eval/stage2/stage2_ShapesVQA_YN_score.csv", "eval/abilities/abilities.md"):
        assert (out / path).is_file(), path
    assert "| coarse perception | l2-category |" in result.stdout and "Sample answers about" in result.stdout
    assert "quickstart: done in" in result.stdout
