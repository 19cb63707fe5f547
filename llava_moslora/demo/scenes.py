"""The ShapesVQA world: scenes of 1-4 coloured shapes, one per cell of a 2 x 2 grid, each
(colour, shape) pair at most once, so every object can be named unambiguously ("the red
circle"); how a scene is drawn and captioned; the questions asked about it and their answers
(short, multiple choice, yes/no, open), weighted as training draws them. synth.py writes the
data set from it, base_corpus.py the bases' pretraining stream.
"""
from __future__ import annotations

import hashlib
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


def question_turns(scene: list[Shape], rng: random.Random, mcq_fraction: float) -> list[tuple[str, str]]:
    """1-3 (question, answer) turns about a scene, some in multiple-choice form."""
    pool = questions(scene, rng) + lookup_questions(scene, rng)
    yn_question, yn_answer, _ = yes_no(scene, rng)
    pool.append(Question("yes/no", short_prompt(yn_question), yn_answer, ["Yes", "No"]))
    turns = []
    for question in weighted_sample(pool, rng.randint(1, 3), rng):
        if question.category == "yes/no":
            turns.append((question.question, question.answer))
        elif rng.random() < mcq_fraction:
            prompt, _, letter = as_mcq(question, rng)
            turns.append((prompt, letter))
        else:
            turns.append((question.question, short_answer(question)))
    return turns


def weighted_sample(pool: list[Question], count: int, rng: random.Random) -> list[Question]:
    """Up to `count` distinct questions, drawn with TRAINING_WEIGHTS (Efraimidis-Spirakis keys)."""
    keyed = sorted(pool, key=lambda q: rng.random() ** (1.0 / TRAINING_WEIGHTS[q.category]), reverse=True)
    return keyed[:count]
