"""`llava-moslora chat` on a tiny MoSLoRA checkpoint: piped conversation, --prompt, merged parity."""
import os
import subprocess
import sys

import pytest
from PIL import Image

from helpers import ROOT


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (48, 40), (220, 40, 40)).save(folder / "red.png")
    Image.new("RGB", (32, 32), (40, 80, 225)).save(folder / "blue.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def chat(*args, stdin=None):
    return subprocess.run(["bash", str(ROOT / "scripts" / "chat.sh"), *args], input=stdin, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})


def test_piped_conversation_with_commands(tiny_checkpoint, images):
    stdin = "\n".join(["What color is it?", "And now?", f"/image {images / 'missing.png'}",
                       f"/image {images / 'broken.png'}", f"/image {images / 'blue.png'}", "What color is it?",
                       "/reset", "/exit", "never read"]) + "\n"
    result = chat("--model", str(tiny_checkpoint), "--image", str(images / "red.png"), "--max_new_tokens", "6",
                  "--stats", stdin=stdin)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ASSISTANT: ") == 3  # three questions answered, nothing after /exit
    assert "cannot use image" in result.stderr and "missing.png" in result.stderr and "broken.png" in result.stderr
    assert "(image 2: " in result.stderr and "(new conversation, no images)" in result.stderr
    assert "tokens/s" in result.stderr and "loaded " in result.stderr


def test_end_of_input_exits_cleanly(tiny_checkpoint):
    result = chat("--model", str(tiny_checkpoint), "--max_new_tokens", "4", stdin="Hello\n")
    assert result.returncode == 0 and result.stdout.count("ASSISTANT: ") == 1


def test_prompt_mode_prints_only_answers_and_matches_the_merged_model(tiny_checkpoint, images, tmp_path):
    merged = tmp_path / "merged"
    subprocess.run([sys.executable, "-m", "llava_moslora", "merge", "--checkpoint", str(tiny_checkpoint),
                    "--out", str(merged)], check=True, capture_output=True)
    args = ["--image", str(images / "red.png"), "--prompt", "What color is it?", "--prompt", "Describe the image.",
            "--max_new_tokens", "12"]
    stage = chat("--model", str(tiny_checkpoint), *args)
    merged_run = chat("--model", str(merged), *args)
    assert stage.returncode == 0 and merged_run.returncode == 0, stage.stderr[-2000:] + merged_run.stderr[-2000:]
    assert stage.stdout.strip() and "ASSISTANT" not in stage.stdout and "loaded" not in stage.stdout
    assert merged_run.stdout == stage.stdout


def test_prompt_mode_with_a_bad_image_fails_with_a_message(tiny_checkpoint, images):
    result = chat("--model", str(tiny_checkpoint), "--image", str(images / "broken.png"), "--prompt", "Hi")
    assert result.returncode == 2 and "cannot use image" in result.stderr and result.stdout == ""


def test_the_reply_streams_in_pieces_that_add_up_and_turns_are_kept(tiny_checkpoint, images):
    from llava_moslora.model.inference import Answerer
    from llava_moslora.model import load_checkpoint
    from llava_moslora.serve.chat import ChatSession

    answerer = Answerer(load_checkpoint(tiny_checkpoint))
    session = ChatSession(answerer, max_new_tokens=8)
    session.set_image(str(images / "red.png"))
    chunks = []
    reply = session.ask("What color is it?", on_text=chunks.append)
    assert len(chunks) >= 2 and "".join(chunks).strip() == reply  # arrived piece by piece
    assert reply == answerer("What color is it?", session.images, max_new_tokens=8)  # streaming changes nothing
    session.ask("Are you sure?")
    assert [q for q, _ in session.history] == ["<image>\nWhat color is it?", "Are you sure?"]
    # the second question was asked with the first turn in the prompt
    assert len(answerer.prompt_ids("Are you sure?", 1, session.history[:1])) > len(
        answerer.prompt_ids("Are you sure?", 1))
    session.set_image(None)
    assert session.history == [] and session.images == []


def test_an_added_image_joins_the_conversation_at_the_next_question(tiny_checkpoint, images):
    """/image adds an image: the next question carries its placeholder, the first image and turn
    stay in the prompt, and the reply is what the answerer gives for that two-image conversation."""
    from llava_moslora.model.inference import Answerer
    from llava_moslora.model import load_checkpoint
    from llava_moslora.serve.chat import ChatSession

    answerer = Answerer(load_checkpoint(tiny_checkpoint))
    session = ChatSession(answerer, max_new_tokens=6)
    session.add_image(str(images / "red.png"))
    first = session.ask("What color is it?")
    session.add_image(str(images / "blue.png"))
    assert session.unasked == 1
    second = session.ask("And this one?")
    assert [q for q, _ in session.history] == ["<image>\nWhat color is it?", "<image>\nAnd this one?"]
    red, blue = (Image.open(images / name).convert("RGB") for name in ("red.png", "blue.png"))
    assert second == answerer("<image>\nAnd this one?", [red, blue], [("<image>\nWhat color is it?", first)],
                              max_new_tokens=6)
    ids = answerer.prompt_ids("<image>\nAnd this one?", 2, [("<image>\nWhat color is it?", first)])
    image_id = answerer.bundle.model.config.image_token_id
    assert ids.count(image_id) == 2 * answerer.bundle.recipe.num_image_tokens
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        answerer.prompt_ids("<image> <image> Which?", 1)


def test_two_images_on_the_command_line_are_asked_about_together(tiny_checkpoint, images):
    result = chat("--model", str(tiny_checkpoint), "--image", str(images / "red.png"), "--image",
                  str(images / "blue.png"), "--prompt", "Which image is red?", "--max_new_tokens", "4")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr[-2000:]
