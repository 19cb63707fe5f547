"""The model's context, said: a question that cannot fit is refused by name (chat, web, eval), a
long conversation drops its oldest turns (and the images they brought) and says so, and no
reply runs past the positions the model has (its max_position_embeddings)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from helpers import ROOT, save_tiny_checkpoint
from llava_moslora.model.inference import Answerer, PromptTooLong
from llava_moslora.model import load_checkpoint
from llava_moslora.serve.chat import ChatSession

CONTEXT = 160


@pytest.fixture(scope="module")
def short_checkpoint(tiny_bases, tmp_path_factory):
    """A checkpoint on a language model with only CONTEXT positions."""
    root = tmp_path_factory.mktemp("short")
    lm = root / "lm"
    shutil.copytree(tiny_bases["language_model"], lm)
    config = json.loads((lm / "config.json").read_text())
    (lm / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    return save_tiny_checkpoint({**tiny_bases, "language_model": str(lm)}, root / "ckpt")


@pytest.fixture(scope="module")
def answerer(short_checkpoint):
    return Answerer(load_checkpoint(short_checkpoint), device="cpu")


LONG = " ".join(["the red circle is above the blue square"] * 40)


def test_a_question_that_cannot_fit_is_refused_by_name(answerer):
    assert answerer.context == CONTEXT
    with pytest.raises(PromptTooLong, match=f"the model reads at most {CONTEXT}"):
        answerer(LONG)


def test_a_long_conversation_drops_its_oldest_turns_and_their_images(answerer):
    session = ChatSession(answerer, max_new_tokens=8)
    red, blue = Image.new("RGB", (20, 20), (220, 20, 20)), Image.new("RGB", (20, 20), (20, 20, 220))
    session.add_image(red)
    session.ask("What color is it?")
    session.add_image(blue)
    turns = 0
    while session.notice is None:
        session.ask("And what about the shapes next to it, and their sizes?")
        turns += 1
        assert turns < 30, "the context never filled"
    fit = answerer.last_fit
    assert "no longer fit the model's context" in session.notice and fit.dropped_turns >= 1
    dropped = session.history[:fit.dropped_turns]  # the images left with the turns that brought them
    assert fit.dropped_images == sum(question.count("<image>") for question, _ in dropped) >= 1
    assert len(fit.images) == 2 - fit.dropped_images
    model = answerer.bundle.model.config
    assert fit.ids.count(model.image_token_id) == len(fit.images) * model.image_seq_length
    assert len(fit.ids) + fit.max_new_tokens <= CONTEXT
    assert len(session.history) == turns + 1  # the session keeps the whole conversation


def test_a_reply_never_runs_past_the_context(answerer):
    question = " ".join(["the red circle"] * 30)
    answerer(question, max_new_tokens=1000)
    fit = answerer.last_fit
    assert fit.capped and len(fit.ids) + answerer.last_new_tokens <= CONTEXT


def test_evaluation_records_a_row_that_cannot_fit_and_answers_the_rest(answerer):
    image = Image.new("RGB", (20, 20), (220, 20, 20))
    rows = [("What color is it?", image), (LONG, image), ("Is it red?", image)]
    answers = answerer.answer_batch(rows, max_new_tokens=4)
    assert answers[1].startswith("[not answered: the question is") and f"at most {CONTEXT}" in answers[1]
    assert answers[0] == answerer.answer_batch(rows[:1], max_new_tokens=4)[0]
    assert answers[2] == answerer.answer_batch(rows[2:], max_new_tokens=4)[0]


def test_a_benchmark_row_that_cannot_fit_is_recorded_by_name_one_at_a_time_too(short_checkpoint):
    from llava_moslora.evaluation.vlm import model_class

    model = model_class(False)(short_checkpoint, benchmark_kinds={"Mine": "Y/N"})
    assert model.generate([{"type": "text", "value": LONG}], "Mine").startswith("[not answered: the question is")


def test_chat_prompt_mode_says_it_cannot_answer(short_checkpoint):
    result = subprocess.run([sys.executable, "-m", "llava_moslora", "chat", "--model", str(short_checkpoint),
                             "--prompt", LONG], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "cannot answer" in result.stderr and f"at most {CONTEXT}" in result.stderr
    assert result.stdout == ""
