"""The papers' conversation formats as ours render them, token for token and label for label on
real tokenizer files: XTuner's LLaVA formats (the MoSLoRA paper trained with XTuner) and the
MoE-LoRA paper's prompt for llava-1.5-7b-hf.

XTuner's pipeline is written out below from its source (InternLM/xtuner: utils/templates.py
PROMPT_TEMPLATE, dataset/map_fns/dataset_map_fns/llava_map_fn.py, map_fns/template_map_fn.py,
dataset/utils.py encode_fn), not imported: each human message holding `<image>` becomes
"<image>\\n" + the rest; per turn input = INSTRUCTION (no system prompt in LLaVA training), output
= reply + SUFFIX with loss, SEP after it without; every piece encoded without special tokens,
the tokenizer's BOS added once at the start (SUFFIX_AS_EOS: no EOS), the image a -200 placeholder
between the encoded halves of its turn.
"""
import pytest

from llava_moslora.data import encode_conversation, get_template
from llava_moslora.data.records import parse_sample
from llava_moslora.data.tokenize import IGNORE_INDEX
from llava_moslora.model.builder import prepare_tokenizer
from real_tokenizers import package_file  # noqa: F401 - the files come from scripts/setup.sh
from real_tokenizers import save_real_tokenizer_lm

XTUNER = {  # PROMPT_TEMPLATE, the fields LLaVA training reads
    "llama3_chat": dict(
        INSTRUCTION="<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n",
        SUFFIX="<|eot_id|>", SEP=""),
    "internlm2_chat": dict(
        INSTRUCTION="<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        SUFFIX="<|im_end|>", SEP="\n"),
}
IMAGE_TOKEN_INDEX = -200


def xtuner_encode(record, template, tokenizer):
    """input_ids and labels as XTuner's LLaVA dataset makes them (the image as -200)."""
    pairs, pending = [], ""
    for message in record["conversations"]:  # llava_map_fn
        if message["from"] == "human":
            text = message["value"]
            if "<image>" in text:
                text = ("<image>\n" + text.replace("<image>", "").strip()).strip()
            pending += text
        else:
            pairs.append((pending, message["value"]))
            pending = ""
    fields = XTUNER[template]
    bos = tokenizer.bos_token_id
    input_ids, labels = ([bos], [IGNORE_INDEX]) if bos is not None else ([], [])  # once: SUFFIX_AS_EOS
    for question, reply in pairs:  # template_map_fn, then encode_fn
        text = fields["INSTRUCTION"].format(input=question)
        if "<image>" in text:
            before, after = text.split("<image>")
            encoded = (tokenizer.encode(before, add_special_tokens=False) + [IMAGE_TOKEN_INDEX]
                       + tokenizer.encode(after, add_special_tokens=False))
        else:
            encoded = tokenizer.encode(text, add_special_tokens=False)
        output = tokenizer.encode(reply + fields["SUFFIX"], add_special_tokens=False)
        sep = tokenizer.encode(fields["SEP"], add_special_tokens=False) if fields["SEP"] else []
        input_ids += encoded + output + sep
        labels += [IGNORE_INDEX] * len(encoded) + output + [IGNORE_INDEX] * len(sep)
    return input_ids, labels


RECORDS = [
    {"id": "multi-turn", "image": "x.png", "conversations": [
        {"from": "human", "value": "What is in the image?\n<image>"},
        {"from": "gpt", "value": "A cat sitting on a red sofa."},
        {"from": "human", "value": "What colour is the cat?  Answer in one word."},
        {"from": "gpt", "value": "Black.\nIt has white paws: ünïcödé 🐈 too."}]},
    {"id": "image-first", "image": "y.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe it briefly.\n"},
        {"from": "gpt", "value": " Two circles and a square, the square on the left."}]},
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Llama 3's real tokenizer (as the hub ships it), and Qwen2's standing in for InternLM2's
    (no registry package ships InternLM2's; both hold <|im_start|> / <|im_end|> as one token)."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {family: prepare_tokenizer(str(save_real_tokenizer_lm(root, family))) for family in ("llama3", "qwen2", "vicuna")}


@pytest.mark.parametrize("template, family", [("llama3_chat", "llama3"), ("internlm2_chat", "qwen2")])
@pytest.mark.parametrize("record", RECORDS, ids=[r["id"] for r in RECORDS])
def test_our_rendering_is_xtuners_token_for_token(template, family, record, tokenizers):
    tokenizer = tokenizers[family]
    sample = parse_sample(record, "test", 0)
    ours = encode_conversation(get_template(template), tokenizer, sample.turns, num_image_tokens=1,
                               system=sample.system)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = [IMAGE_TOKEN_INDEX if token == image_id else token for token in ours.input_ids]
    theirs_ids, theirs_labels = xtuner_encode(record, template, tokenizer)
    assert ids == theirs_ids, (tokenizer.convert_ids_to_tokens(ours.input_ids), theirs_ids)
    assert ours.labels == theirs_labels
    if family == "llama3":
        assert ids[0] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")  # XTuner's BOS, once


@pytest.mark.parametrize("template, family", [("llama3_chat", "llama3"), ("internlm2_chat", "qwen2")])
def test_the_saved_chat_template_prompts_as_training_renders(template, family, tokenizers):
    """What a checkpoint's chat template gives (apply_chat_template) is the prompt trained on."""
    tokenizer = tokenizers[family]
    turns = [("<image>\nWhat is in the image?", "A cat."), ("And its colour?", None)]
    expected = get_template(template).prompt(turns)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                {"role": "user", "content": [{"type": "text", "text": "And its colour?"}]}]
    rendered = tokenizer.apply_chat_template(messages, chat_template=get_template(template).chat_template, tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == expected


def moelora_encode(question, options, answer, tokenizer):
    """THUDM/MoELoRA_Riemannian train_llava.py: prompt and response tokenized together by the
    llava-hf processor (the tokenizer adds BOS), labels -100 over the prompt's own length."""
    prompt = "USER: <image>\n" + question + "\n" + "\n".join(f"{k}. {o}" for k, o in zip("ABCD", options)) + "\n" + "\nASSISTANT:"
    response = f"The answer is {answer}."
    input_ids = tokenizer(prompt + response).input_ids
    prompt_length = len(tokenizer(prompt).input_ids)
    return input_ids, [IGNORE_INDEX] * prompt_length + input_ids[prompt_length:]


@pytest.mark.parametrize("question, options, answer", [
    ("What is on the table?", ["A cup.", "A book.", "Two apples.", "Nothing."], "C"),
    ("Which chart type shows the trend best?", ["bar", "line", "pie", "scatter plot"], "B")])
def test_the_moelora_codes_prompt_token_for_token(question, options, answer, tokenizers):
    """On Llama 2's tokenizer format (llava-1.5-7b-hf's), a sample prepare-mc writes."""
    from llava_moslora.data.mc_tasks import sample

    tokenizer = tokenizers["vicuna"]
    parsed = parse_sample(sample("s", "x.png", question, options, answer), "test", 0)
    ours = encode_conversation(get_template("moelora_llava"), tokenizer, parsed.turns, num_image_tokens=1)
    theirs_ids, theirs_labels = moelora_encode(question, options, answer, tokenizer)
    assert ours.input_ids == theirs_ids, (tokenizer.convert_ids_to_tokens(ours.input_ids),
                                          tokenizer.convert_ids_to_tokens(theirs_ids))
    assert ours.labels == theirs_labels
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": parsed.turns[0][0].split("\n", 1)[1]}]}],
        chat_template=get_template("moelora_llava").chat_template, tokenize=False, add_generation_prompt=True)
    assert rendered == get_template("moelora_llava").prompt([(parsed.turns[0][0], None)])
