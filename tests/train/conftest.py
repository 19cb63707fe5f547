"""A tiny learnable image dataset for the training tests."""
import json

import pytest
from PIL import Image

from helpers import FAST, STEADY, run_script, stage2_env

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """Solid-colour images; stage 1 captions them, stage 2 answers questions about the colour."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    captions, instructions = [], []
    for i in range(32):
        name = list(COLORS)[i % 4]
        size = (24 + 4 * (i % 3), 24 + 2 * (i % 5))
        Image.new("RGB", size, COLORS[name]).save(root / "images" / f"{i}.png")
        captions.append({"id": f"cap-{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": f"A {name} image."}]})
        instructions.append({"id": f"qa-{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "What color is the image?\n<image>"},
            {"from": "gpt", "value": f"The image is {name}."}]})
    for i in range(4):
        instructions.append({"id": f"text-{i}", "conversations": [
            {"from": "human", "value": "Describe a circle."}, {"from": "gpt", "value": "A circle is round."}]})
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "instructions.jsonl").write_text("\n".join(json.dumps(r) for r in instructions))
    return root


# Slowest ten of the suite (CI, 2 cores): ~35 s, once per worker (charged to the first test that uses it).
# A real 2-process stage 1 through pretrain.sh; every stage-2 test in tests/train starts from it.
@pytest.fixture(scope="session")
def stage1(tiny_bases, shapes_data, tmp_path_factory):
    """Stage 1. The tiny base LLM here is random, so it trains with the projector (the quickstart
    starts from the pretrained bases and trains the projector alone)."""
    out = tmp_path_factory.mktemp("run") / "stage1"
    run_script("pretrain.sh", {"MODEL": tiny_bases["language_model"], "VISION_TOWER": tiny_bases["vision_tower"],
                               "DATA_PATH": str(shapes_data / "captions.json"),
                               "IMAGE_FOLDER": str(shapes_data / "images"), "OUTPUT_DIR": str(out),
                               "GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": "4"},
               "--max_steps", "20", "--tune_language_model", "full", "--activation_checkpointing", "False", *FAST)
    return out


@pytest.fixture(scope="session")
def uninterrupted(shapes_data, stage1, tmp_path_factory):
    """Stage 2 for 10 steps on 2 processes of one node, the reference for resumed and other-launcher runs.
    It keeps every checkpoint (3, 6, 9 and the last, 10): a test that needs a run stopped after a save
    copies one."""
    out = tmp_path_factory.mktemp("run") / "whole"
    run_script("finetune.sh", stage2_env(shapes_data, stage1, out), "--max_steps", "10", "--save_steps", "3",
               "--save_total_limit", "4", *STEADY)
    return out
