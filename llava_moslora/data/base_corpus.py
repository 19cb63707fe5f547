"""What the tiny bases are pretrained on, in ShapesVQA's domain.

- the vision tower: scenes with per-cell attribute targets (shape, colour, size of the object in
  each cell of the 2 x 2 grid, and the number of shapes);
- the language model: conversations in the chat template where the scene is given in words at
  the place the image takes in LLaVA's data, followed by the same questions, multiple-choice prompts and answers ShapesVQA asks about
  images, so that the model knows the answer formats before it sees an image. The scene is
  written in one of three forms: one object word per cell ("[empty][small red circle]..."),
  shaped like the tower's output (one token per cell, in the same order, each holding its whole
  object), so that stage 1 aligns the projector to something the model already reads; the cells
  in plain words ("Top left: empty. Top right: small red circle. ..."); or a caption. Some
  conversations ask a question directly and then again with lettered options, which isolates
  the step a small model learns last: finding the letter of an answer it already knows.

Scenes come from a random stream of their own per seed and only from the layouts that held-out
benchmarks never use (synth.reserved_for_benchmarks), so no held-out scene reaches base
pretraining.
"""
from __future__ import annotations

import random
from typing import Iterator

from PIL import Image

from .synth import (COLORS, SHAPES, SIZES, Shape, as_mcq, caption, draw_scene, question_turns, questions,
                    random_benchmark_scene, short_answer)

# The 2 x 2 grid in row-major order: the order of a 2 x 2-patch vision tower's tokens.
CELLS = ("top left", "top right", "bottom left", "bottom right")
DESCRIBE = "Describe the image."
# Target classes per cell; index 0 means "no object in this cell".
SHAPE_CLASSES = ("none", *SHAPES)
COLOR_CLASSES = ("none", *COLORS)
SIZE_CLASSES = ("none", *SIZES)
EMPTY_CELL = "[empty]"
# One tokenizer token each (added tokens): the words of the one-token-per-cell form.
OBJECT_WORDS = (EMPTY_CELL, *(f"[{size} {color} {shape}]" for size in SIZES for color in COLORS for shape in SHAPES))
# How often each scene form is drawn (object words, cells in words, caption).
FORM_WEIGHTS = (0.5, 0.25, 0.25)


def base_rng(seed: int, part: str) -> random.Random:
    """The random stream of one part of base pretraining ("vision", "text", ...). String seeds
    are hashed by `random`, so these streams never coincide with ShapesVQA's integer seeds."""
    return random.Random(f"llava-moslora bases/{part}/{seed}")


def base_scenes(rng: random.Random) -> Iterator[list[Shape]]:
    """Endless scenes from the layouts benchmarks do not use."""
    while True:
        yield random_benchmark_scene(rng, reserved=False)


def vision_samples(seed: int, count: int, image_size: int, part: str = "vision") -> Iterator[tuple[list[Shape], Image.Image]]:
    """(scene, image) pairs of the vision tower's pretraining stream."""
    rng = base_rng(seed, part)
    scenes = base_scenes(rng)
    for _ in range(count):
        scene = next(scenes)
        yield scene, draw_scene(scene, image_size, rng)


def text_samples(seed: int, count: int, part: str = "text") -> Iterator[tuple[list[Shape], list[tuple[str, str]]]]:
    """(scene, conversation) pairs of the language model's pretraining stream."""
    rng = base_rng(seed, part)
    scenes = base_scenes(rng)
    for _ in range(count):
        scene = next(scenes)
        yield scene, text_conversation(scene, rng)


def cell_of(item: Shape) -> int:
    return item.row * 2 + item.col


def cell_layout(scene: list[Shape]) -> str:
    """The scene cell by cell, in the order of the vision tower's tokens."""
    at = {cell_of(item): item for item in scene}
    parts = [f"{where.capitalize()}: {f'{at[c].size} {at[c].name}' if c in at else 'empty'}."
             for c, where in enumerate(CELLS)]
    return " ".join(parts)


def object_words(scene: list[Shape]) -> str:
    """The scene as one object word per cell, in the order of the vision tower's tokens."""
    at = {cell_of(item): item for item in scene}
    return "".join(f"[{at[c].size} {at[c].name}]" if c in at else EMPTY_CELL for c in range(len(CELLS)))


def describe(scene: list[Shape], rng: random.Random) -> str:
    """The scene in one of the three forms the language model learns to read."""
    form = rng.choices((object_words, cell_layout, caption), weights=FORM_WEIGHTS)[0]
    return form(scene)


def answer_then_letter(scene: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    """A question answered in words, then the same question with options, answered by letter."""
    question = rng.choice(questions(scene, rng))
    prompt, _, letter = as_mcq(question, rng)
    return [(question.question, short_answer(question)), (prompt, letter)]


def text_conversation(scene: list[Shape], rng: random.Random, *, mcq_fraction: float = 0.8,
                      describe_fraction: float = 0.1, letter_drill_fraction: float = 0.25) -> list[tuple[str, str]]:
    """(user, assistant) turns whose first user message starts with the scene in words."""
    draw = rng.random()
    if draw < describe_fraction:
        turns = [(DESCRIBE, caption(scene))]
    elif draw < describe_fraction + letter_drill_fraction:
        turns = answer_then_letter(scene, rng)
    else:
        turns = question_turns(scene, rng, mcq_fraction)
    first_question, first_answer = turns[0]
    return [(f"{describe(scene, rng)}\n{first_question}", first_answer), *turns[1:]]


def cell_targets(scene: list[Shape]) -> tuple[list[tuple[int, int, int]], int]:
    """Per cell (shape, colour, size) class indices (0 = empty cell), and the shape count."""
    cells = [(0, 0, 0)] * len(CELLS)
    for item in scene:
        cells[cell_of(item)] = (SHAPE_CLASSES.index(item.shape), COLOR_CLASSES.index(item.color),
                                SIZE_CLASSES.index(item.size))
    return cells, len(scene)
