"""Two-image questions over ShapesVQA's images ("Which image has more shapes?"): samples with
several images, for training (pairs.json, LLaVA's form with an image list) and a held-out
multi-image benchmark (ShapesVQA_Pairs.tsv, VLMEvalKit's MCQ form with a list of images per row).

Pairs are drawn after synth's files are written, from their own seed, so asking for pairs does
not change any other file of a seed.
"""
from __future__ import annotations

import base64
import json
import random
from pathlib import Path

from ..data.prompts import mcq_prompt

QUESTION = "Which image has more shapes?"
OPTIONS = ("the first image", "the second image")
CATEGORY, ABILITY = "count comparison", "cross-image reasoning"


def shape_count(scene_key: str) -> int:
    """Shapes in a scene, from its key (scenes.caption names each shape "... at the <cell>")."""
    return scene_key.count(" at the ")


def _pairs(names: list[str], scenes: dict, count: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """`count` (first, second, answer letter) pairs of images whose shape counts differ."""
    found = []
    while len(found) < count:
        first, second = rng.sample(names, 2)
        a, b = shape_count(scenes[first]), shape_count(scenes[second])
        if a != b:
            found.append((first, second, "A" if a > b else "B"))
    return found


def write_pairs(out_dir, *, num_pairs: int, num_test_pairs: int, seed: int = 0) -> dict:
    """Write pairs.json (training pairs of the training images) and ShapesVQA_Pairs.tsv (pairs of
    the held-out test images) into a folder synth wrote."""
    import pandas as pd

    out = Path(out_dir)
    scenes = json.loads((out / "scenes.json").read_text())
    rng = random.Random(f"pairs-{seed}")
    prompt = mcq_prompt(QUESTION, OPTIONS)
    train = sorted(name for name in scenes if name.startswith("train_"))
    test = sorted(name for name in scenes if name.startswith("test_"))
    samples = [{"id": f"pair-{k}", "image": [first, second],
                "conversations": [{"from": "human", "value": f"<image>\n<image>\n{prompt}"},
                                  {"from": "gpt", "value": letter}]}
               for k, (first, second, letter) in enumerate(_pairs(train, scenes, num_pairs, rng))]
    (out / "pairs.json").write_text(json.dumps(samples))

    def encoded(name: str) -> str:
        return base64.b64encode((out / "images" / name).read_bytes()).decode("ascii")

    rows = [{"index": k, "image": str([encoded(first), encoded(second)]), "question": QUESTION, "hint": None,
             "A": OPTIONS[0], "B": OPTIONS[1], "answer": letter, "category": CATEGORY, "l2-category": ABILITY,
             "split": "dev"}
            for k, (first, second, letter) in enumerate(_pairs(test, scenes, num_test_pairs, rng) if len(test) > 1 else [])]
    if rows:
        pd.DataFrame(rows).to_csv(out / "ShapesVQA_Pairs.tsv", sep="\t", index=False)
    return {"pairs": len(samples), "test_pairs": len(rows)}
