"""A tiny learnable image dataset for the training tests."""
import json

import pytest
from PIL import Image

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
