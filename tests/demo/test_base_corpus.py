"""What the tiny bases are pretrained on: disjoint from the held-out benchmarks, and correct."""
import hashlib
import json
import random
import re

import pandas as pd
import pytest
from PIL import Image

from llava_moslora.demo import base_corpus as corpus
from llava_moslora.demo.scenes import Shape, random_scene, reserved_for_benchmarks, scene_key
from llava_moslora.demo.synth import write_shapesvqa
from llava_moslora.demo.bases import BasesConfig
from llava_moslora.data.prompts import MCQ_SUFFIX

SHIPPED = BasesConfig()  # the settings the shipped bases were made with


def pixels(image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Held-out ShapesVQA sets for the quickstart's three seeds (layouts, image hashes, rows)."""
    layouts, images, questions = set(), set(), set()
    for seed in (0, 1, 2):
        out = tmp_path_factory.mktemp(f"shapes{seed}")
        write_shapesvqa(out, seed=seed, num_pretrain=0, num_instruct=0, num_test=400, progress=False)
        scenes = json.loads((out / "scenes.json").read_text())
        layouts |= set(scenes.values())
        images |= {pixels(Image.open(p)) for p in (out / "images").glob("test_*.png")}
        for name in ("ShapesVQA_MCQ.tsv", "ShapesVQA_YN.tsv"):
            table = pd.read_csv(out / name, sep="\t")
            questions |= {(scenes[f"test_{i:06d}.png"], q) for i, q in zip(table["index"], table["question"])}
    return layouts, images, questions


def test_no_held_out_scene_image_or_question_reaches_base_pretraining(held_out):
    layouts, images, questions = held_out
    assert len(layouts) > 600 and len(images) > 1000 and len(questions) > 2000  # seeds may repeat a scene
    # the vision tower's whole stream as the shipped bases drew it (layouts), its first images (pixels)
    for i, (scene, image) in enumerate(corpus.vision_samples(SHIPPED.seed, SHIPPED.vision_images, SHIPPED.image_size)):
        assert scene_key(scene) not in layouts
        if i < 2000:
            assert pixels(image) not in images
    for scene, turns in corpus.text_samples(SHIPPED.seed, SHIPPED.lm_steps * SHIPPED.lm_batch,
                                            SHIPPED.lm_lookup_steps * SHIPPED.lm_batch):
        key = scene_key(scene)
        assert key not in layouts
        for user, _ in turns:
            for line in user.split("\n"):
                assert (key, line) not in questions


def test_the_two_halves_of_the_layouts_split_every_family():
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(4000)]
    reserved = [reserved_for_benchmarks(s) for s in scenes]
    assert 0.4 < sum(reserved) / len(reserved) < 0.6
    for count in (1, 2, 3, 4):  # both halves have scenes of every size
        flags = {r for s, r in zip(scenes, reserved) if len(s) == count}
        assert flags == {True, False}
    shuffled = list(reversed(scenes[0]))
    assert scene_key(shuffled) == scene_key(scenes[0]), "a layout does not depend on drawing order"


def test_object_words_and_targets_follow_the_token_order():
    scene = [Shape("circle", "red", "small", 0, 1), Shape("square", "blue", "large", 1, 0)]
    assert corpus.object_words(scene) == ("[top left: empty][top right: small red circle]"
                                          "[bottom left: large blue square][bottom right: empty]")
    assert all(word in corpus.OBJECT_WORDS for word in re.findall(r"\[[^\]]+\]", corpus.object_words(scene)))
    cells, count = corpus.cell_targets(scene)
    assert count == 2
    assert cells[0] == (0, 0, 0) and cells[3] == (0, 0, 0)
    assert cells[1] == (corpus.SHAPE_CLASSES.index("circle"), corpus.COLOR_CLASSES.index("red"),
                        corpus.SIZE_CLASSES.index("small"))
    assert cells[2] == (corpus.SHAPE_CLASSES.index("square"), corpus.COLOR_CLASSES.index("blue"),
                        corpus.SIZE_CLASSES.index("large"))


def test_text_conversations_put_the_scene_where_the_image_goes():
    for scene, turns in corpus.text_samples(0, 200):
        description, first_question = turns[0][0].split("\n", 1)
        assert description == corpus.object_words(scene)
        assert "<image>" not in turns[0][0] and first_question
        assert all(answer for _, answer in turns)


def test_letter_drills_ask_the_same_question_twice():
    rng = random.Random(0)
    scene = [Shape("circle", "red", "small", 0, 1), Shape("square", "blue", "large", 1, 0)]
    for _ in range(20):
        (direct, answer), (prompt, letter) = corpus.answer_then_letter(scene, rng)
        assert prompt.startswith(direct) and len(letter) == 1
        # the letter's option is the answer given in words
        option = next(line for line in prompt.split("\n") if line.startswith(f"{letter}. "))
        assert option[3:].lower() == answer.rstrip(".").lower()


def test_the_stream_is_the_curriculum_and_any_sample_can_be_made_alone():
    from llava_moslora.data.prompts import MCQ_SUFFIX

    stream = list(corpus.text_samples(0, 600, lookup_count=300))
    assert stream[10] == corpus.text_sample(0, 10, "lookup") and stream[450] == corpus.text_sample(0, 450, "full")

    def letter_turns(turns):
        """(asked by letter, was the same question answered in words just before) per MCQ turn."""
        questions = [user.split("\n")[-1] if i == 0 else user for i, (user, _) in enumerate(turns)]
        return [(i > 0 and user.startswith(questions[i - 1]))
                for i, (user, _) in enumerate(turns) if MCQ_SUFFIX in user]

    lookup = [hit for _, turns in stream[:300] for hit in letter_turns(turns)]
    full = [hit for _, turns in stream[300:] for hit in letter_turns(turns)]
    assert lookup and all(lookup), "the lookup mix asks for a letter only after the answer is in words"
    assert len(full) > 300 and sum(not hit for hit in full) > 0.6 * len(full), "the full mix asks both steps at once"


def test_lookup_drills_answer_each_question_from_the_scene():
    rng = random.Random(0)
    scene = [Shape("circle", "red", "small", 0, 1), Shape("square", "blue", "large", 1, 0),
             Shape("triangle", "red", "large", 1, 1)]
    expected = {"Where is the red circle?": "Top right.", "Where is the blue square?": "Bottom left.",
                "What size is the red triangle?": "Large.", "What color is the square?": "Blue.",
                "What shape is the blue object?": "Square.", "What is at the top left?": "Nothing.",
                "What is at the bottom right?": "A large red triangle.",
                "Where is the blue square relative to the red triangle?": "Left.",
                "Which is larger, the red circle or the blue square?": "The blue square."}
    seen = {}
    for _ in range(300):
        turns = corpus.lookup_drill(scene, rng)
        assert 3 <= len(turns) <= 6 and len({q for q, _ in turns}) == len(turns)
        seen.update(turns)
    for question, answer in expected.items():
        assert seen[question] == answer, question
    assert "What shape is the red object?" not in seen  # two red objects: only unambiguous questions


def test_the_drill_phase_comes_first_then_lookup_then_the_last_mix():
    assert [corpus.mix_at(i, lookup_count=2, drill_count=3, last="full_drill") for i in range(7)] == \
        ["drill"] * 3 + ["lookup"] * 2 + ["full_drill"] * 2
    stream = list(corpus.text_samples(0, 40, lookup_count=10, drill_count=10, last="full_drill"))
    assert stream[5] == corpus.text_sample(0, 5, "drill") and stream[35] == corpus.text_sample(0, 35, "full_drill")
    drilled = sum(len(turns) >= 3 and all(MCQ_SUFFIX not in q for q, _ in turns) for _, turns in stream[:10])
    assert drilled >= 5  # mostly several lookups in words
