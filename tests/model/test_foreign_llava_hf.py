"""A llava-hf directory this project did not write: prompted with its own chat template, or told
which one with --template; never silently given vicuna_v1."""
import json
import subprocess
import sys

import pytest

from llava_moslora.names import OWN_TEMPLATE
from llava_moslora.data.templates import IMAGE_TOKEN, get_template
from llava_moslora.model.inference import Answerer
from llava_moslora.model import build_llava, load_checkpoint

# A Qwen2-VL-like ChatML template of its own (no default system turn, images as parts): not one
# of ours, so it must be used as it is.
QWEN_LIKE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def foreign_directory(bases, out, chat_template):
    """A merged llava-hf directory as others publish it: config, weights, tokenizer, processor; no
    llava_moslora.json; the chat template in the processor's chat_template.json (llava-hf's way)."""
    bundle = build_llava(bases["vision_tower"], bases["language_model"], template="chatml")
    bundle.model.save_pretrained(out)
    bundle.tokenizer.chat_template = None
    bundle.tokenizer.save_pretrained(out)
    bundle.image_processor.save_pretrained(out)
    for name in ("chat_template.jinja", "chat_template.json"):
        (out / name).unlink(missing_ok=True)
    if chat_template:
        (out / "chat_template.json").write_text(json.dumps({"chat_template": chat_template}))
    return out


@pytest.fixture(scope="module")
def chatml_bases(tiny_base_factory):
    return tiny_base_factory("chatml", "qwen2")


def test_its_own_chatml_template_prompts_it(chatml_bases, tmp_path):
    path = foreign_directory(chatml_bases, tmp_path / "qwen-llava", QWEN_LIKE)
    bundle = load_checkpoint(path)
    assert bundle.recipe.template == OWN_TEMPLATE
    answerer = Answerer(bundle, max_new_tokens=2)
    ids = answerer.prompt_ids("What is it?", images=1, history=[("Hi", "Hello.")])
    image = bundle.model.config.image_token_id
    assert ids.count(image) == bundle.recipe.num_image_tokens
    once = [i for k, i in enumerate(ids) if i != image or ids[k - 1] != image]  # the image as one token
    # the image before the first question, as in LLaVA's data
    assert bundle.tokenizer.decode(once) == (f"<|im_start|>user\n{IMAGE_TOKEN}\nHi<|im_end|>\n<|im_start|>assistant\n"
                                             "Hello.<|im_end|>\n<|im_start|>user\nWhat is it?<|im_end|>\n"
                                             "<|im_start|>assistant\n")
    assert bundle.tokenizer.convert_tokens_to_ids("<|im_end|>") in answerer.stop_ids
    assert isinstance(answerer("What is it?", None), str)


def test_a_template_like_ours_is_recognised(chatml_bases, tmp_path):
    path = foreign_directory(chatml_bases, tmp_path / "ours-renamed", get_template("chatml").chat_template)
    assert load_checkpoint(path).recipe.template == "chatml"


def test_without_a_template_it_says_so_and_template_fixes_it(chatml_bases, tmp_path):
    path = foreign_directory(chatml_bases, tmp_path / "bare", None)
    with pytest.raises(ValueError, match="without a chat template.*--template"):
        load_checkpoint(path)
    assert load_checkpoint(path, template="chatml").recipe.template == "chatml"
    result = subprocess.run([sys.executable, "-m", "llava_moslora", "chat", "--model", str(path), "--prompt", "Hi"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--template" in result.stderr
    result = subprocess.run([sys.executable, "-m", "llava_moslora", "chat", "--model", str(path), "--prompt", "Hi",
                             "--template", "chatml"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_its_own_template_also_gives_training_labels_on_the_replies_only(chatml_bases, tmp_path):
    from llava_moslora.data import IGNORE_INDEX, encode_conversation
    from llava_moslora.data.own_chat_template import own_template

    bundle = load_checkpoint(foreign_directory(chatml_bases, tmp_path / "qwen-llava", QWEN_LIKE))
    encoded = encode_conversation(own_template(bundle.tokenizer), bundle.tokenizer,
                                  [(f"{IMAGE_TOKEN}\nWhat is it?", "A red circle."), ("Size?", "Small.")],
                                  num_image_tokens=bundle.recipe.num_image_tokens)
    labelled = bundle.tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert labelled == "A red circle.<|im_end|>\nSmall.<|im_end|>\n"


# The same format with its replies between generation marks (as SmolLM3's and other recent hub
# templates mark them), closing a reply with the tokenizer's eos_token variable: the marks, not
# the difference between two renderings, say what is trained.
QWEN_MARKED = (
    "{% macro text(content) %}{% if content is string %}{{ content }}{% else %}{% for part in content %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endmacro %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ text(message['content']) }}{{ eos_token }}"
    "{% endgeneration %}{% else %}{{ text(message['content']) }}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_marked_template_trains_exactly_its_marked_spans(chatml_bases, tmp_path):
    from llava_moslora.data import IGNORE_INDEX, encode_conversation
    from llava_moslora.data.own_chat_template import own_template

    bundle = load_checkpoint(foreign_directory(chatml_bases, tmp_path / "marked", QWEN_MARKED))
    assert bundle.recipe.template == OWN_TEMPLATE and bundle.tokenizer.eos_token == "<|im_end|>"
    turns = [(f"{IMAGE_TOKEN}\nWhat is it?", "A red circle."), ("Size?", "Small.")]
    template = own_template(bundle.tokenizer)
    encoded = encode_conversation(template, bundle.tokenizer, turns, num_image_tokens=bundle.recipe.num_image_tokens)
    labelled = bundle.tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert labelled == "A red circle.<|im_end|>Small.<|im_end|>"  # the newlines after them are not marked
    # the prompt is the unmarked template's
    unmarked = own_template(load_checkpoint(foreign_directory(chatml_bases, tmp_path / "plain", QWEN_LIKE)).tokenizer)
    open_turns = [*turns[:1], ("Size?", None)]
    assert template.prompt(open_turns) == unmarked.prompt(open_turns)
