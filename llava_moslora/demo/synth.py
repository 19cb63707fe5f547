"""ShapesVQA: a synthetic visual-question-answering set that a tiny LLaVA can learn on a laptop.

Each image holds 1-4 coloured shapes, one per cell of a 2 x 2 grid, each (colour, shape) pair at
most once, so every object can be named unambiguously ("the red circle"). The generator writes:
stage-1 captions (LLaVA pretrain format), stage-2 multi-turn instructions (LLaVA mix format,
with multiple-choice items and text-only samples), and held-out benchmarks in VLMEvalKit's TSV
formats (multiple choice with MMBench-style ability labels, yes/no, and free-form questions scored
by normalized exact match per question type). Deterministic per seed.
"""
from __future__ import annotations

import base64
import hashlib
import io
import random
from dataclasses import dataclass
from typing import Optional

from PIL import Image, ImageDraw

from ..data.prompts import LETTERS, mcq_prompt, short_prompt

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
DISTRACTOR_SHAPE = "star"  # offered as an option, never drawn
SIZES = ("small", "large")

# MMBench-style abilities: l2-category -> categories (question families)
ABILITIES = {
    "coarse perception": ("counting",),
    "fine-grained single-instance perception": ("color recognition", "shape recognition"),
    "fine-grained cross-instance perception": ("spatial relation", "size comparison"),
    "reasoning": ("counting after removal",),
}
L2_OF = {category: l2 for l2, categories in ABILITIES.items() for category in categories}
# How often each question family is drawn into a training conversation, relative to the others:
# families that need two objects located at once are learned last by a tiny model, so it sees them more.
TRAINING_WEIGHTS = {"counting": 1.0, "color recognition": 1.0, "shape recognition": 2.0, "spatial relation": 3.0,
                    "size comparison": 2.0, "counting after removal": 1.0, "yes/no": 1.0,
                    "object position": 1.0, "object size": 1.0}


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    size: str
    row: int  # 0 top, 1 bottom
    col: int  # 0 left, 1 right

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Question:
    """One question about a scene: its category, the short answer, and the options for MCQ."""

    category: str
    question: str
    answer: str
    options: list[str]


def random_scene(rng: random.Random) -> list[Shape]:
    count = rng.randint(1, 4)
    cells = rng.sample(range(4), count)
    pairs = rng.sample([(s, c) for s in SHAPES for c in COLORS], count)
    return [Shape(shape, color, rng.choice(SIZES), cell // 2, cell % 2) for (shape, color), cell in zip(pairs, cells)]


def scene_key(scene: list[Shape]) -> str:
    """What a scene is, whatever the order its shapes were drawn in or their jitter: its caption,
    which names every shape's size, colour, kind and cell in cell order."""
    return caption(scene)


def reserved_for_benchmarks(scene: list[Shape]) -> bool:
    """Half of all scene layouts, fixed by a hash: held-out benchmark scenes are drawn only from
    this half and the tiny bases are pretrained only on the other, so no held-out scene (not even
    the same layout with other jitter) reaches base pretraining, whatever the seeds."""
    return hashlib.sha256(scene_key(scene).encode()).digest()[0] % 2 == 0


def random_benchmark_scene(rng: random.Random, reserved: bool = True) -> list[Shape]:
    """A random scene from the benchmark half (reserved=True) or from the bases' half."""
    while True:
        scene = random_scene(rng)
        if reserved_for_benchmarks(scene) == reserved:
            return scene


def draw_scene(scene: list[Shape], size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    cell = size / 2
    for item in scene:
        radius = cell * (0.2 if item.size == "small" else 0.4)
        jitter = cell / 2 - radius
        cx = item.col * cell + cell / 2 + rng.uniform(-jitter, jitter) * 0.6
        cy = item.row * cell + cell / 2 + rng.uniform(-jitter, jitter) * 0.6
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLORS[item.color]
        if item.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif item.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def place_of(item: Shape) -> str:
    return f"{('top', 'bottom')[item.row]} {('left', 'right')[item.col]}"


def caption(scene: list[Shape]) -> str:
    parts = [f"a {item.size} {item.name} at the {place_of(item)}" for item in sorted(scene, key=lambda s: (s.row, s.col))]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def _relation(a: Shape, b: Shape) -> Optional[str]:
    if a.row == b.row:
        return "left" if a.col < b.col else "right"
    if a.col == b.col:
        return "above" if a.row < b.row else "below"
    return None


def questions(scene: list[Shape], rng: random.Random) -> list[Question]:
    """Every question family that has an unambiguous answer for this scene."""
    found = [Question("counting", "How many shapes are in the image?", str(len(scene)), ["1", "2", "3", "4"])]
    item = rng.choice(scene)
    if sum(s.shape == item.shape for s in scene) == 1:
        found.append(Question("color recognition", f"What color is the {item.shape}?", item.color, list(COLORS)))
    if sum(s.color == item.color for s in scene) == 1:
        found.append(Question("shape recognition", f"What shape is the {item.color} object?", item.shape,
                              [*SHAPES, DISTRACTOR_SHAPE]))
    if len(scene) >= 2:
        a, b = rng.sample(scene, 2)
        relation = _relation(a, b)
        if relation:
            found.append(Question("spatial relation", f"Where is the {a.name} relative to the {b.name}?",
                                  relation, ["left", "right", "above", "below"]))
        if a.size != b.size:
            larger = a if a.size == "large" else b
            found.append(Question("size comparison", f"Which is larger, the {a.name} or the {b.name}?",
                                  f"the {larger.name}", [f"the {a.name}", f"the {b.name}", "they are the same size",
                                                         "neither is in the image"]))
        removed = rng.choice(scene)
        found.append(Question("counting after removal",
                              f"If the {removed.name} were removed, how many shapes would remain?",
                              str(len(scene) - 1), ["0", "1", "2", "3"]))
    return found


def lookup_questions(scene: list[Shape], rng: random.Random) -> list[Question]:
    """One-object lookups asked in training only (benchmarks never ask them): where an object
    is and how big it is, the steps that spatial relation and size comparison are made of."""
    item = rng.choice(scene)
    return [Question("object position", f"Where is the {item.name}?", place_of(item),
                     ["top left", "top right", "bottom left", "bottom right"]),
            Question("object size", f"What size is the {item.name}?", item.size, list(SIZES))]


def open_questions(scene: list[Shape], rng: random.Random, describe: bool = True) -> list[Question]:
    """The free-form benchmark's questions about a scene (ShapesVQA_Open), one per type that has an
    unambiguous answer: count, the colour of a shape that occurs once, the shape of a colour that
    occurs once, an object's size and place, and (`describe`) the description. Training asks each
    of these forms."""
    item = rng.choice(scene)
    found = [Question("count", "How many shapes are in the image?", str(len(scene)), [])]
    unique_shape = [s for s in scene if sum(o.shape == s.shape for o in scene) == 1]
    if unique_shape:
        chosen = rng.choice(unique_shape)
        found.append(Question("color", f"What color is the {chosen.shape}?", chosen.color, []))
    unique_color = [s for s in scene if sum(o.color == s.color for o in scene) == 1]
    if unique_color:
        chosen = rng.choice(unique_color)
        found.append(Question("shape", f"What shape is the {chosen.color} object?", chosen.shape, []))
    found.append(Question("size", f"What size is the {item.name}?", item.size, []))
    found.append(Question("place", f"Where is the {item.name}?", place_of(item), []))
    if describe:
        found.append(Question("description", DESCRIBE, caption(scene)[:-1], []))
    return found


def short_answer(question: Question) -> str:
    text = question.answer
    return text[0].upper() + text[1:] + "."


def as_mcq(question: Question, rng: random.Random) -> tuple[str, list[str], str]:
    """(full prompt, options in their shuffled order, answer letter) for the multiple-choice form."""
    options = list(question.options)
    rng.shuffle(options)
    return mcq_prompt(question.question, options), options, LETTERS[options.index(question.answer)]


def yes_no(scene: list[Shape], rng: random.Random) -> tuple[str, str, str]:
    """(question, "Yes"/"No", category) about the presence of a coloured shape or the count."""
    if rng.random() < 0.5:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        present = any(s.shape == shape and s.color == color for s in scene)
        return f"Is there a {color} {shape} in the image?", "Yes" if present else "No", "existence"
    count = rng.randint(1, 4)
    return f"Are there exactly {count} shapes in the image?", "Yes" if count == len(scene) else "No", "count"


DESCRIBE = "Describe the image."
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

def question_turns(scene: list[Shape], rng: random.Random, mcq_fraction: float) -> list[tuple[str, str]]:
    """1-3 (question, answer) turns about a scene, some in multiple-choice form."""
    pool = questions(scene, rng) + lookup_questions(scene, rng)
    yn_question, yn_answer, _ = yes_no(scene, rng)
    pool.append(Question("yes/no", short_prompt(yn_question), yn_answer, ["Yes", "No"]))
    turns = []
    for question in _weighted_sample(pool, rng.randint(1, 3), rng):
        if question.category == "yes/no":
            turns.append((question.question, question.answer))
        elif rng.random() < mcq_fraction:
            prompt, _, letter = as_mcq(question, rng)
            turns.append((prompt, letter))
        else:
            turns.append((question.question, short_answer(question)))
    return turns


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


def _weighted_sample(pool: list[Question], count: int, rng: random.Random) -> list[Question]:
    """Up to `count` distinct questions, drawn with TRAINING_WEIGHTS (Efraimidis-Spirakis keys)."""
    keyed = sorted(pool, key=lambda q: rng.random() ** (1.0 / TRAINING_WEIGHTS[q.category]), reverse=True)
    return keyed[:count]


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
