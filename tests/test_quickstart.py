"""A shortened quickstart (tiny data, few steps) end to end, exactly as a newcomer runs it: README.md's
command in a checkout (the readme_workdir fixture, which tests/test_readme.py goes on from)."""
import subprocess

import pytest
from safetensors.torch import load_file

from helpers import ROOT


@pytest.mark.slow
def test_shortened_quickstart_runs_end_to_end(readme_workdir):
    work, result = readme_workdir
    out = work / "runs" / "quickstart"
    for path in ("data/ShapesVQA_MCQ.tsv", "data/scenes.json", "stage1/trainable.safetensors",
                 "stage2/llava_moslora.json", "eval/stage2/stage2_ShapesVQA_MCQ_acc.csv",
                 "eval/stage2/stage2_ShapesVQA_YN_score.csv", "eval/abilities/abilities.md"):
        assert (out / path).is_file(), path
    assert "| Overall | overall |" in result.stdout and "== sample answers about" in result.stdout
    assert "quickstart: done in" in result.stdout
    # LLaVA's recipe: stage 1 trains the projector alone, stage 2 adapters and the projector,
    # and no stage trains a weight of the LLM or the vision tower itself
    stage1 = set(load_file(out / "stage1" / "trainable.safetensors"))
    stage2 = set(load_file(out / "stage2" / "trainable.safetensors"))
    assert stage1 and all(".multi_modal_projector." in name for name in stage1), sorted(stage1)[:5]
    assert stage1 <= stage2
    adapters = stage2 - stage1
    assert adapters and all(".language_model." in n and ".lora_" in n for n in adapters), sorted(adapters)[:5]
    # nothing a user cannot act on
    for noise in ("FutureWarning", "deprecated", "requires torchvision", "OMP_NUM_THREADS", "Failed to load"):
        assert noise not in result.stdout + result.stderr, noise


def test_an_output_folder_of_other_files_is_refused_not_emptied(tmp_path):
    (tmp_path / "thesis.tex").write_text("months of work")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "holds files the quickstart did not write" in result.stderr
    assert (tmp_path / "thesis.tex").read_text() == "months of work"
