"""Against the real VLMEvalKit: its infer_data_job and evaluate drive our model class, and the
builtin backend writes identical scores. Needs vlmeval, which CI does not install (it imports
torchvision); run it in a venv that has it (README, Evaluation):
    /path/to/vlmeval-venv/bin/python -m pytest tests/evaluation/test_vlmeval_backend.py
"""
import shutil

import pytest

pytest.importorskip("vlmeval")


def test_vlmeval_and_builtin_backends_agree(tiny_checkpoint, shapes_root, tmp_path):
    from llava_moslora.evaluation.runner import evaluate_checkpoint

    root = tmp_path / "lmu"  # vlmeval unpacks images next to the TSVs: work on a copy
    root.mkdir()
    for name in ("ShapesVQA_MCQ", "ShapesVQA_YN"):
        shutil.copy(shapes_root / f"{name}.tsv", root)
    benchmarks = ["ShapesVQA_MCQ", "ShapesVQA_YN"]
    real = evaluate_checkpoint(tiny_checkpoint, benchmarks, tmp_path / "vlmeval", backend="vlmeval", root=str(root))
    ours = evaluate_checkpoint(tiny_checkpoint, benchmarks, tmp_path / "builtin", backend="builtin", root=str(root))
    for name, kind in (("ShapesVQA_MCQ", "acc"), ("ShapesVQA_YN", "score")):
        assert real[name][kind].read_text() == ours[name][kind].read_text(), name
    # vlmeval's own exact-matching record exists: its evaluate really ran
    assert (tmp_path / "vlmeval" / f"{tiny_checkpoint.name}_ShapesVQA_MCQ_exact_matching_result.xlsx").is_file()
