"""What the tiny bases are pretrained on, in ShapesVQA's domain.

- the vision tower: scenes with per-cell attribute targets (shape, colour, size of the object in
  each cell of the 2 x 2 grid, and the number of shapes);
- the language model: conversations in the chat template where the scene is given at the place
  the image takes in LLaVA's data, as one object word per cell ("[top left: empty][top right:
  small red circle]..."): shaped like the tower's output (one token per cell, in the same order,
  each holding its cell and its whole object), so that stage 1 aligns the projector to something
  the model already reads. Then the questions, multiple-choice prompts and answers ShapesVQA asks
  about images, so that the model knows the answer formats before it sees an image, in a
  curriculum (MIXES): first many one-object lookups per conversation answered in words (the
  drill, which binds each named object to its cell); then the two steps of a lettered answer on
  their own (answering in words; the same question answered in words and then again with
  options, which isolates finding the letter of an answer already known); then mostly multiple
  choice, with the drill kept beside it.

Scenes come from a random stream of their own per seed and only from the layouts that held-out
benchmarks never use (scenes.reserved_for_benchmarks), so no held-out scene reaches base
pretraining.
"""
from __future__ import annotations

import random
from typing import Iterator

from PIL import Image

from .scenes import (COLORS, DESCRIBE, SHAPES, SIZES, Shape, as_mcq, caption, draw_scene, place_of, question_turns,
                     questions, random_benchmark_scene, short_answer)

# The conversation format the language model base is pretrained (and probed) in.
TEMPLATE = "vicuna_v1"
# The 2 x 2 grid in row-major order: the order of a 2 x 2-patch vision tower's tokens.
CELLS = ("top left", "top right", "bottom left", "bottom right")
# Target classes per cell; index 0 means "no object in this cell".
SHAPE_CLASSES = ("none", *SHAPES)
COLOR_CLASSES = ("none", *COLORS)
SIZE_CLASSES = ("none", *SIZES)
# One tokenizer token each (added tokens): the words of the one-token-per-cell form. Like the
# tower's patch token of a cell, each holds its cell and its whole object ("[top right: small red
# circle]", "[bottom left: empty]"), so where an object is comes with it, not from counting tokens.
OBJECT_WORDS = tuple(f"[{where}: {what}]" for where in CELLS
                     for what in ("empty", *(f"{size} {color} {shape}" for size in SIZES for color in COLORS
                                             for shape in SHAPES)))


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


def text_sample(seed: int, index: int, mix: str = "full") -> tuple[list[Shape], list[tuple[str, str]]]:
    """Conversation `index` of the language model's stream, drawn from a random stream of its own
    (so any sample can be made alone, in any order, and a resumed run sees the same ones)."""
    rng = base_rng(seed, f"text/{index}")
    scene = random_benchmark_scene(rng, reserved=False)
    return scene, text_conversation(scene, rng, mix)


def mix_at(index: int, lookup_count: int = 0, drill_count: int = 0, last: str = "full") -> str:
    """The mix of conversation `index` in the curriculum: `drill_count` of "drill", then
    `lookup_count` of "lookup", then `last` (see MIXES)."""
    if index < drill_count:
        return "drill"
    return "lookup" if index < drill_count + lookup_count else last


def text_samples(seed: int, count: int, lookup_count: int = 0, drill_count: int = 0,
                 last: str = "full") -> Iterator[tuple[list[Shape], list[tuple[str, str]]]]:
    """The language model's stream, in curriculum order (mix_at)."""
    for index in range(count):
        yield text_sample(seed, index, mix_at(index, lookup_count, drill_count, last))


def cell_of(item: Shape) -> int:
    return item.row * 2 + item.col


def object_words(scene: list[Shape]) -> str:
    """The scene as one object word per cell, in the order of the vision tower's tokens."""
    at = {cell_of(item): item for item in scene}
    return "".join(f"[{where}: {f'{at[c].size} {at[c].name}' if c in at else 'empty'}]" for c, where in enumerate(CELLS))


# The forms the language model reads a scene in, and how often each is drawn: the object words,
# which are what the image becomes. Captions and the cells in words are only written (replies),
# never read: with them as inputs a quarter to a half of the training went to forms the image
# tokens never take, and the 6-layer model still bound objects to cells at 53% (words) at
# 3,300 steps.
FORMS = {"object words": object_words}
FORM_WEIGHTS = (1.0,)


def describe(scene: list[Shape], rng: random.Random) -> str:
    """The scene in one of the forms the language model learns to read."""
    return describe_as(scene, rng)[1]


def describe_as(scene: list[Shape], rng: random.Random) -> tuple[str, str]:
    """(form name, the scene in that form), the form drawn with FORM_WEIGHTS."""
    name = rng.choices(list(FORMS), weights=FORM_WEIGHTS)[0]
    return name, FORMS[name](scene)


def lookup_drill(scene: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    """3-6 questions about one scene answered in words: where a named object is, its colour, shape
    or size, what is in a named cell, and how two objects lie or compare. These lookups are what
    every multiple-choice question is made of, and a small model left to learn them inside
    lettered answers binds a named object to its cell barely above chance; asked many per
    conversation, most of the loss is on them."""
    pool = []
    for item in scene:
        pool += [(f"Where is the {item.name}?", place_of(item)), (f"What size is the {item.name}?", item.size)]
        if sum(s.shape == item.shape for s in scene) == 1:
            pool.append((f"What color is the {item.shape}?", item.color))
        if sum(s.color == item.color for s in scene) == 1:
            pool.append((f"What shape is the {item.color} object?", item.shape))
    at = {cell_of(item): item for item in scene}
    for cell, where in enumerate(CELLS):
        pool.append((f"What is at the {where}?", f"a {at[cell].size} {at[cell].name}" if cell in at else "nothing"))
    pool += [(q.question, q.answer) for q in questions(scene, rng) if q.category in ("spatial relation", "size comparison")]
    picked = rng.sample(pool, min(len(pool), rng.randint(3, 6)))
    return [(question, answer[0].upper() + answer[1:] + ".") for question, answer in picked]


def answer_then_letter(scene: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    """A question answered in words, then the same question with options, answered by letter."""
    question = rng.choice(questions(scene, rng))
    prompt, _, letter = as_mcq(question, rng)
    return [(question.question, short_answer(question)), (prompt, letter)]


# What a conversation is, per mix: shares of (describe the image, a question answered in words
# then again by letter, questions answered in words, questions mostly as multiple choice, a
# lookup drill). "drill" comes first: binding a named object to its cell and attributes, many
# lookups per conversation. "lookup" then teaches finding the letter of an answer already in the
# conversation; multiple choice asks both steps at once (a small model left to learn both
# together from the start stays at chance for thousands of steps). "full_drill" keeps the drill
# beside multiple choice, so the lookups are not trained away.
MIXES = {"drill": (0.1, 0.1, 0.0, 0.0, 0.8), "lookup": (0.1, 0.5, 0.4, 0.0, 0.0), "full": (0.1, 0.25, 0.0, 0.65, 0.0),
         "full_drill": (0.1, 0.2, 0.0, 0.5, 0.2)}
MCQ_FRACTION = 0.8  # of the questions in the last kind


def text_conversation(scene: list[Shape], rng: random.Random, mix: str = "full") -> list[tuple[str, str]]:
    """(user, assistant) turns whose first user message starts with the scene in words."""
    kind = rng.choices(range(5), weights=MIXES[mix])[0]
    if kind == 0:
        turns = [(DESCRIBE, caption(scene))]
    elif kind == 1:
        turns = answer_then_letter(scene, rng)
    elif kind == 4:
        turns = lookup_drill(scene, rng)
    else:
        turns = question_turns(scene, rng, 0.0 if kind == 2 else MCQ_FRACTION)
    first_question, first_answer = turns[0]
    return [(f"{describe(scene, rng)}\n{first_question}", first_answer), *turns[1:]]


def cell_targets(scene: list[Shape]) -> tuple[list[tuple[int, int, int]], int]:
    """Per cell (shape, colour, size) class indices (0 = empty cell), and the shape count."""
    cells = [(0, 0, 0)] * len(CELLS)
    for item in scene:
        cells[cell_of(item)] = (SHAPE_CLASSES.index(item.shape), COLOR_CLASSES.index(item.color),
                                SIZE_CLASSES.index(item.size))
    return cells, len(scene)
