"""Checkpoints carry their template as a chat template: processor.apply_chat_template on a
conversation with an image gives exactly the tokens the data pipeline trains on (and the
prompt chat / eval generate from), for a stage checkpoint and its merged directory."""
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from llava_moslora.data import encode_conversation, get_template
from llava_moslora.model.inference import Answerer
from llava_moslora.model import build_llava, load_checkpoint, save_checkpoint
from llava_moslora.model.export import merge_checkpoint

STYLE = {"vicuna_v1": "llama", "llama3": "llama3", "chatml": "chatml", "plain": "llama"}
IMAGE = Image.new("RGB", (40, 30), (200, 30, 30))
TURNS = [("What color is the circle?", "The circle is red."), ("How many shapes?", "There are 3 shapes.")]


def messages(turns, system=None, image=True):
    """turns as chat messages: the image part leads the first user message."""
    out = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system is not None else []
    for i, (question, reply) in enumerate(turns):
        parts = [{"type": "image", "image": IMAGE}] if image and i == 0 else []
        out.append({"role": "user", "content": parts + [{"type": "text", "text": question}]})
        if reply is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    return out


CHAT = ["vicuna_v1", "llama3", "chatml"]  # stage 2; "plain" is stage 1's captioning format


@pytest.fixture(scope="module")
def checkpoints(tiny_base_factory, tmp_path_factory):
    """template name -> (stage checkpoint dir, merged dir), built on first use."""
    made = {}

    def get(name):
        if name not in made:
            bases = tiny_base_factory(STYLE[name], "llama")
            bundle = build_llava(bases["vision_tower"], bases["language_model"], template=name)
            root = tmp_path_factory.mktemp(name)
            stage = save_checkpoint(bundle, root / "stage")
            made[name] = stage, merge_checkpoint(stage, root / "merged")
        return made[name]
    return get


def pipeline_ids(name, tokenizer, turns, num_image_tokens, system=None):
    first = (f"<image>\n{turns[0][0]}", turns[0][1])
    return encode_conversation(get_template(name), tokenizer, [first, *turns[1:]],
                               num_image_tokens=num_image_tokens, system=system).input_ids


@pytest.mark.parametrize("where", ["stage", "merged"])
@pytest.mark.parametrize("name", [*CHAT, "plain"])
def test_apply_chat_template_gives_the_training_tokens(checkpoints, name, where):
    stage, merged = checkpoints(name)
    directory = stage if where == "stage" else merged
    processor = AutoProcessor.from_pretrained(directory)
    assert processor.chat_template == get_template(name).chat_template
    bundle = load_checkpoint(directory)
    n = bundle.recipe.num_image_tokens
    turns = TURNS[:1] if name == "plain" else TURNS  # stage 1 trains on one caption per image
    systems = [None] if name == "plain" else [None, "Be brief.", ""]
    for system in systems:
        got = processor.apply_chat_template(messages(turns, system), tokenize=True, return_dict=True,
                                            return_tensors="pt")
        want = pipeline_ids(name, bundle.tokenizer, turns, n, system)
        assert got["input_ids"][0].tolist() == want, (name, system)
        assert got["pixel_values"].shape[0] == 1


@pytest.mark.parametrize("name", [*CHAT, "plain"])
def test_the_saved_templates_assistant_mask_is_the_training_labels(checkpoints, name):
    """The saved template is the one definition training labels come from: transformers' own
    assistant mask over it marks exactly the tokens training puts loss on."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoints(name)[0])
    turns = TURNS[:1] if name == "plain" else TURNS
    got = tokenizer.apply_chat_template(messages(turns, image=False), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    want = encode_conversation(get_template(name), tokenizer, turns)
    # apply_chat_template(tokenize=True) adds no special tokens; training's tokenizer call adds BOS
    bos = 1 if tokenizer.bos_token_id is not None and want.input_ids[0] == tokenizer.bos_token_id else 0
    assert got["input_ids"] == want.input_ids[bos:]
    assert got["assistant_masks"] == [int(label != -100) for label in want.labels[bos:]]
    assert 0 < sum(got["assistant_masks"]) < len(want.labels)


@pytest.mark.parametrize("name", CHAT)
def test_generation_prompt_is_the_answerers(checkpoints, name):
    stage, _ = checkpoints(name)
    processor = AutoProcessor.from_pretrained(stage)
    answerer = Answerer(load_checkpoint(stage), device="cpu")
    history = TURNS[:1]
    conversation = messages([*history, ("And the square?", None)])
    got = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True,
                                        return_tensors="pt")
    assert got["input_ids"][0].tolist() == answerer.prompt_ids("And the square?", True, history)
    # text-only, through the tokenizer alone (what a text-only server sees)
    tokenizer = AutoTokenizer.from_pretrained(stage)
    text = tokenizer.apply_chat_template(messages([("Hello?", None)], image=False), tokenize=False,
                                         add_generation_prompt=True)
    assert tokenizer(text)["input_ids"] == answerer.prompt_ids("Hello?", False)


@pytest.mark.parametrize("name", CHAT)
def test_merged_model_answers_the_same_from_the_processor_prompt(checkpoints, name):
    stage, merged = checkpoints(name)
    processor = AutoProcessor.from_pretrained(merged)
    bundle = load_checkpoint(merged)
    inputs = processor.apply_chat_template(messages([("What color is the circle?", None)]), tokenize=True,
                                           return_dict=True, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        output = bundle.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    reply = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert reply == Answerer(load_checkpoint(stage), device="cpu")("What color is the circle?", IMAGE,
                                                                    max_new_tokens=5)
