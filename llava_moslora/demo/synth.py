"""ShapesVQA: a synthetic visual-question-answering set that a tiny LLaVA can learn on a laptop.

Each image holds 1-4 coloured shapes (scenes.py). The generator writes:
stage-1 captions (LLaVA pretrain format), stage-2 multi-turn instructions (LLaVA mix format,
with multiple-choice items and text-only samples), and held-out benchmarks in VLMEvalKit's TSV
formats (multiple choice with MMBench-style ability labels, yes/no, and free-form questions scored
by normalized exact match per question type). Deterministic per seed.
"""
from __future__ import annotations

import base64
import io
import random

from PIL import Image

from ..data.prompts import LETTERS
from .scenes import (DESCRIBE, L2_OF, Question, Shape, as_mcq, caption, draw_scene, open_questions, question_turns,
                     questions, random_benchmark_scene, random_scene, scene_key, short_answer, yes_no)

DESCRIBE_FRACTION = 0.1  # of the instruction conversations about an image

TEXT_ONLY = [
    ("Which shapes can appear in these pictures?", "Circles, squares and triangles."),
    ("Which colors can the shapes have?", "Red, green, blue and yellow."),
    ("How many corners does a triangle have?", "3."),  # numbers as digits, as every count is answered
    ("How many corners does a square have?", "4."),
    ("Does a circle have corners?", "No."),
]


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- writing the data set -------------------------------------------------------------------

def _instruction(scene: list[Shape], rng: random.Random, mcq_fraction: float) -> list[dict]:
    """A multi-turn conversation in LLaVA's format, the image before the first question. Some
    ask for a description instead, as LLaVA's mix has detailed descriptions beside its questions
    (without them, stage 2 trains the captioning of stage 1 away)."""
    if rng.random() < DESCRIBE_FRACTION:
        turns = [(DESCRIBE, caption(scene))]
    else:
        turns = question_turns(scene, rng, mcq_fraction)
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    return [{"from": role, "value": text} for pair in turns for role, text in zip(("human", "gpt"), pair)]


def write_shapesvqa(out_dir, *, seed: int = 0, num_pretrain: int = 2000, num_instruct: int = 4000,
                    num_test: int = 400, num_val: int = 0, image_size: int = 64, text_only_fraction: float = 0.05,
                    mcq_fraction: float = 0.8, progress: bool = True) -> dict:
    """Write images, pretrain.json, instruct.json, ShapesVQA_MCQ.tsv, ShapesVQA_YN.tsv,
    ShapesVQA_Open.tsv (free-form questions on the test scenes) and scenes.json (each image's scene_key). Held-out scenes come from the benchmark half of the
    layouts (reserved_for_benchmarks); training scenes from all of them. num_val > 0 also writes
    ShapesVQA_MCQ_val.tsv and ShapesVQA_YN_val.tsv, a validation split for choosing
    hyperparameters: held-out scenes of layouts the test split does not use, drawn after every
    other file's, so the rest of a seed's files do not change with it."""
    import json
    from pathlib import Path

    import pandas as pd
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pretrain, instruct, layouts = [], [], {}
    total = num_pretrain + num_instruct + num_test + num_val
    bar = tqdm(total=total, desc="ShapesVQA", unit="image", disable=not progress)
    for i in range(num_pretrain + num_instruct):
        scene = random_scene(rng)
        name = f"train_{i:06d}.png"
        layouts[name] = scene_key(scene)
        draw_scene(scene, image_size, rng).save(out / "images" / name)
        if i < num_pretrain:
            pretrain.append({"id": f"pretrain-{i}", "image": name, "conversations": [
                {"from": "human", "value": f"<image>\n{DESCRIBE}"}, {"from": "gpt", "value": caption(scene)}]})
        elif rng.random() < text_only_fraction:
            question, answer = rng.choice(TEXT_ONLY)
            instruct.append({"id": f"text-{i}", "conversations": [{"from": "human", "value": question},
                                                                 {"from": "gpt", "value": answer}]})
        else:
            instruct.append({"id": f"instruct-{i}", "image": name, "conversations": _instruction(scene, rng, mcq_fraction)})
        bar.update()
    mcq_rows, yn_rows = _benchmark_rows(num_test, "test", rng, out, image_size, layouts, bar)
    test_layouts = set(layouts[row["image_path"]] for row in mcq_rows)
    val_rows = _benchmark_rows(num_val, "val", rng, out, image_size, layouts, bar, avoid=test_layouts)
    # drawn from their own generator: the other files of a seed are the same with or without them
    open_rows = _open_rows(mcq_rows, random.Random(f"ShapesVQA_Open-{seed}"))
    bar.close()
    (out / "pretrain.json").write_text(json.dumps(pretrain))
    (out / "instruct.json").write_text(json.dumps(instruct))
    (out / "scenes.json").write_text(json.dumps(layouts, indent=0))  # image -> what it shows
    counts = {"pretrain": len(pretrain), "instruct": len(instruct), "mcq": len(mcq_rows), "yes_no": len(yn_rows),
              "open": len(open_rows)}
    if open_rows:
        pd.DataFrame(open_rows)[OPEN_COLUMNS].to_csv(out / "ShapesVQA_Open.tsv", sep="\t", index=False)
    for (mcq, yn), suffix in (((mcq_rows, yn_rows), ""), (val_rows, "_val")):
        if not mcq:
            continue
        pd.DataFrame(mcq)[MCQ_COLUMNS].to_csv(out / f"ShapesVQA_MCQ{suffix}.tsv", sep="\t", index=False)
        pd.DataFrame(yn)[YN_COLUMNS].to_csv(out / f"ShapesVQA_YN{suffix}.tsv", sep="\t", index=False)
    if num_val:
        counts.update(mcq_val=len(val_rows[0]), yes_no_val=len(val_rows[1]))
    return counts


MCQ_COLUMNS = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split"]
YN_COLUMNS = ["index", "image", "question", "answer", "category"]
OPEN_COLUMNS = ["index", "image", "question", "answer", "category"]
OPEN_TYPES = ("count", "color", "shape", "size", "place", "description")
DESCRIBE_EVERY = 4  # of the test scenes, the ones ShapesVQA_Open asks to describe


def _open_rows(mcq_rows: list[dict], rng: random.Random) -> list[dict]:
    """ShapesVQA_Open: the free-form questions (open_questions) about each held-out test scene, a
    description for every DESCRIBE_EVERY-th (a description takes ten times a short answer's
    generation), grouped by type. A scene's image is stored once; its other rows give that row's
    index instead, as VLMEvalKit's TSVs do."""
    by_type: dict[str, list[tuple[dict, Question]]] = {kind: [] for kind in OPEN_TYPES}
    for number, row in enumerate(mcq_rows):
        for question in open_questions(row["scene"], rng, describe=number % DESCRIBE_EVERY == 0):
            by_type[question.category].append((row, question))
    rows, image_row = [], {}
    for kind in OPEN_TYPES:
        for row, question in by_type[kind]:
            index = len(rows)
            image = image_row.setdefault(row["image_path"], index)
            rows.append({"index": index, "image": row["image"] if image == index else str(image),
                         "question": question.question, "answer": short_answer(question), "category": kind})
    return rows


def _benchmark_rows(count: int, prefix: str, rng: random.Random, out, image_size: int, layouts: dict, bar,
                    avoid: frozenset = frozenset()) -> tuple[list[dict], list[dict]]:
    """`count` held-out scenes (none of whose layouts is in `avoid`), each asked one MCQ and one
    yes/no question; images are written as {prefix}_NNNNNN.png."""
    mcq_rows, yn_rows = [], []
    for i in range(count):
        scene = random_benchmark_scene(rng)
        while scene_key(scene) in avoid:
            scene = random_benchmark_scene(rng)
        image = draw_scene(scene, image_size, rng)
        name = f"{prefix}_{i:06d}.png"
        layouts[name] = scene_key(scene)
        image.save(out / "images" / name)
        encoded = encode_png(image)
        question = rng.choice(questions(scene, rng))
        _, options, letter = as_mcq(question, rng)
        mcq_rows.append({"index": i, "image": encoded, "question": question.question,
                         "hint": None, **{LETTERS[k]: option for k, option in enumerate(options)},
                         "answer": letter, "category": question.category, "l2-category": L2_OF[question.category],
                         "split": "dev", "image_path": name, "scene": scene})
        yn_question, yn_answer, yn_category = yes_no(scene, rng)
        yn_rows.append({"index": i, "image": encoded, "question": yn_question, "answer": yn_answer,
                        "category": yn_category, "image_path": name})
        bar.update()
    return mcq_rows, yn_rows


def corpus(out_dir) -> list[str]:
    """Every text a tokenizer for this data set should know (for init-tiny)."""
    import json
    from pathlib import Path

    import pandas as pd

    out = Path(out_dir)
    texts = []
    for name in ("pretrain.json", "instruct.json"):
        for record in json.loads((out / name).read_text()):
            texts += [turn["value"] for turn in record["conversations"]]
    mcq = pd.read_csv(out / "ShapesVQA_MCQ.tsv", sep="\t")
    texts += [f"{q}\n{a}\n{b}\n{c}\n{d}" for q, a, b, c, d in zip(mcq.question, mcq.A, mcq.B, mcq.C, mcq.D)]
    texts += list(pd.read_csv(out / "ShapesVQA_YN.tsv", sep="\t").question)
    return texts


def add_arguments(parser, name: str = "synth") -> None:
    parser.add_argument("--out", default="runs/quickstart/data", help="output directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument("--num_pretrain", type=int, default=2000, help="stage-1 caption samples")
    parser.add_argument("--num_instruct", type=int, default=4000, help="stage-2 instruction samples")
    parser.add_argument("--num_test", type=int, default=400, help="held-out benchmark rows (MCQ and yes/no each)")
    parser.add_argument("--num_val", type=int, default=0,
                        help="validation rows (MCQ and yes/no each, written as ShapesVQA_*_val.tsv): held-out "
                             "scenes apart from the test rows, for choosing hyperparameters")
    parser.add_argument("--image_size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--mcq_fraction", type=float, default=0.8, help="share of training questions in MCQ form")
    parser.add_argument("--num_pairs", type=int, default=0,
                        help="also write pairs.json: this many two-image training samples (\"Which image has more "
                             "shapes?\"), and ShapesVQA_Pairs.tsv: --num_test two-image benchmark rows [0: neither]")


def run(args, name: str = "synth") -> int:
    counts = write_shapesvqa(args.out, seed=args.seed, num_pretrain=args.num_pretrain, num_instruct=args.num_instruct,
                             num_test=args.num_test, num_val=args.num_val, image_size=args.image_size, mcq_fraction=args.mcq_fraction)
    if args.num_pairs:
        from .pairs import write_pairs

        counts.update(write_pairs(args.out, num_pairs=args.num_pairs, num_test_pairs=args.num_test, seed=args.seed))
    print(f"ShapesVQA written to {args.out}: {counts}")
    return 0
