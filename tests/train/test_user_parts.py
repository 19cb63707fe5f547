"""The parts users bring, through the commands they run: language models with real tokenizer
files in the forms the hub ships them (tests/real_tokenizers.py), CLIP and SigLIP towers.

Each run family goes through scripts/pretrain.sh and scripts/finetune.sh as on a cluster (one
process each, to keep the suite's time), then chat, eval and merge through the CLI. Every form,
run or not, is checked for labels (exactly the replies plus the end-of-turn token) and for the
merged directory's chat template (the same prompt as ours).
"""
import base64
import io
import json
import sys

import pandas as pd
import pytest
from PIL import Image
from transformers import AutoTokenizer, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from helpers import run_script
from llava_moslora.cli import main as cli
from llava_moslora.data import encode_conversation, get_template
from llava_moslora.data.tokenize import IGNORE_INDEX
from llava_moslora.model import build_llava, save_checkpoint
from llava_moslora.model.builder import prepare_tokenizer
from llava_moslora.model.export import merge_checkpoint
from real_tokenizers import FAMILIES, TEMPLATE, save_real_tokenizer_lm

# the forms trained through the stage scripts, each with a tower (both kinds are covered)
RUNS = {"vicuna": "siglip", "mistral": "clip", "llama3": "clip", "qwen2_vocab_merges": "siglip"}
REPLY = "A picture, 東京 😀."
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
REPLIES = ["Sure.  Two spaces,\n\nthen a blank line.", "```python\ndef double(x):\n    return x * 2\n```",
           "Café, naïve, Ærø: 東京 and 你好 😀🎉.", " A leading space, and two trailing  "]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-tokenizers")
    return lambda family: save_real_tokenizer_lm(root, family)


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """A tiny SigLIP tower (no CLS token: 16 patch tokens), saved as the hub ships one."""
    out = tmp_path_factory.mktemp("siglip")
    config = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64)
    SiglipVisionModel(config).save_pretrained(out)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def label_runs(encoded):
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_decode_to_exactly_the_replies_and_end_of_turn(families, family):
    tokenizer = prepare_tokenizer(str(families(family)))
    template = get_template(TEMPLATE[family])
    turns = [("<image>\nWhat is this?", REPLIES[0]), ("Some code?", REPLIES[1]),
             ("Ünïcode, 字?", REPLIES[2]), ("Spaces?", REPLIES[3])]
    encoded = encode_conversation(template, tokenizer, turns, num_image_tokens=4)
    decoded = [tokenizer.decode(run) for run in label_runs(encoded)]
    assert decoded == [reply + template.end_of_turn for reply in REPLIES]
    assert encoded.input_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 4


@pytest.mark.parametrize("family", ["llama3", "llama3_tiktoken"])
def test_llama3_forms_give_the_same_ids(families, family):
    """Llama 3's original tiktoken file and the hub's tokenizer.json: the same ids, <|begin_of_text|> first."""
    reference = prepare_tokenizer(str(families("llama3")))
    tokenizer = prepare_tokenizer(str(families(family)))
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi there, 東京 😀<|eot_id|>"
    assert tokenizer(text).input_ids == reference(text).input_ids
    assert tokenizer(text).input_ids[0] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")


def assert_renders_our_prompt(tokenizer, family):
    """The chat template a merged directory carries gives our template's prompt for a multi-turn
    conversation (so vLLM, SGLang or apply_chat_template users prompt as training did)."""
    turns = [("What is this?", REPLIES[2]), ("And this?", None)]
    messages = [{"role": "user", "content": turns[0][0]}, {"role": "assistant", "content": turns[0][1]},
                {"role": "user", "content": turns[1][0]}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == get_template(TEMPLATE[family]).prompt(turns)


@pytest.mark.parametrize("family", [family for family in FAMILIES if family not in RUNS])
def test_merged_chat_template_renders_our_prompt(families, family, tiny_bases, tmp_path):
    """The forms the script runs below leave out (they check their own merged directories)."""
    bundle = build_llava(tiny_bases["vision_tower"], str(families(family)), template=TEMPLATE[family])
    merged = merge_checkpoint(save_checkpoint(bundle, tmp_path / "stage"), tmp_path / "merged")
    assert_renders_our_prompt(AutoTokenizer.from_pretrained(merged), family)


def write_colour_data(root):
    """Solid-colour images with one question and one reply (what a few steps learn, so that chat
    shows where generation stops), and a four-row multiple-choice TSV in VLMEvalKit's format."""
    (root / "images").mkdir(parents=True)
    questions, rows = [], []
    for i in range(16):
        name = list(COLORS)[i % 4]
        Image.new("RGB", (24 + 2 * (i % 3), 24), COLORS[name]).save(root / "images" / f"{i}.png")
        questions.append({"id": f"q{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": REPLY}]})
    for i, name in enumerate(COLORS):
        buffer = io.BytesIO()
        Image.new("RGB", (24, 24), COLORS[name]).save(buffer, format="PNG")
        rows.append({"index": i, "image": base64.b64encode(buffer.getvalue()).decode(), "question": "What color is it?",
                     "A": "red", "B": "green", "C": "blue", "D": "yellow", "answer": "ABCD"[i], "category": "color",
                     "l2-category": "perception", "split": "dev"})
    (root / "questions.json").write_text(json.dumps(questions))
    pd.DataFrame(rows).to_csv(root / "Colors_MCQ.tsv", sep="\t", index=False)
    return root


ONE_PROCESS = {"NUM_GPUS": "1", "GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": "8"}
QUICK = ["--dataloader_num_workers", "0", "--model_max_length", "256", "--activation_checkpointing", "False",
         "--warmup_steps", "0", "--save_strategy", "no", "--lr_scheduler_type", "constant"]


def train_both_stages(model, tower, template, data, tmp_path, stage1_flags=(), stage2_flags=()):
    """Stage 1 trains the (random) LM too, on the one reply in `template`, so that chat can show
    where generation stops; stage 2 then trains MoSLoRA adapters a few steps. Returns stage 2's folder."""
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    run_script("pretrain.sh", {**ONE_PROCESS, "MODEL": str(model), "VISION_TOWER": str(tower), "LR": "1e-2",
                               "TEMPLATE": template, "DATA_PATH": str(data / "questions.json"),
                               "IMAGE_FOLDER": str(data / "images"), "OUTPUT_DIR": str(stage1)},
               "--max_steps", "30", "--tune_language_model", "full", *stage1_flags, *QUICK)
    run_script("finetune.sh", {**ONE_PROCESS, "STAGE1_DIR": str(stage1), "TEMPLATE": template,
                               "DATA_PATH": str(data / "questions.json"), "IMAGE_FOLDER": str(data / "images"),
                               "OUTPUT_DIR": str(stage2), "ADAPTER": "moslora", "LORA_R": "8", "LORA_ALPHA": "16",
                               "LORA_DROPOUT": "0", "LR": "1e-3", "MM_PROJECTOR_LR": "1e-3"},
               "--max_steps", "4", *stage2_flags, *QUICK)
    return stage2


def chat_answer(stage2, data, capsys):
    """`llava-moslora chat --prompt` on one of the images, through the CLI a user runs (in this
    process: a subprocess would cost its start-up, seconds, on every family)."""
    capsys.readouterr()
    assert cli(["chat", "--model", str(stage2), "--image", str(data / "images" / "2.png"), "--prompt", "What is this?",
                "--max-new-tokens", "40"]) == 0
    return capsys.readouterr().out.strip()


# Slowest ten of the suite (CI, 2 cores): up to 49 s per family (Vicuna's SentencePiece folder, Mistral, Llama 3,
# Qwen2's vocab+merges). Both stages, chat, eval and merge on each real tokenizer: where a family's tokens break labels.
@pytest.mark.slow
@pytest.mark.parametrize("family", list(RUNS))
def test_family_trains_both_stages_then_chats_evaluates_and_merges(family, families, siglip, tiny_bases, tmp_path,
                                                                     capsys):
    data = write_colour_data(tmp_path / "data")
    tower = siglip if RUNS[family] == "siglip" else tiny_bases["vision_tower"]
    stage2 = train_both_stages(families(family), tower, TEMPLATE[family], data, tmp_path)
    recipe = json.loads((stage2 / "llava_moslora.json").read_text())
    assert recipe["template"] == TEMPLATE[family]
    assert recipe["num_image_tokens"] == 16  # both towers: 16 patches, SigLIP's whole, CLIP's without CLS

    # chat: the reply learned, ended at the end-of-turn token (not run on to max_new_tokens)
    assert chat_answer(stage2, data, capsys) == REPLY
    assert cli(["eval", "--model", str(stage2), "--benchmarks", "Colors_MCQ", "--data-root", str(data),
                "--work-dir", str(tmp_path / "eval"), "--backend", "builtin"]) == 0
    assert list((tmp_path / "eval").rglob("*Colors_MCQ*"))
    assert cli(["merge", "--checkpoint", str(stage2), "--out", str(tmp_path / "merged")]) == 0
    assert_renders_our_prompt(AutoTokenizer.from_pretrained(tmp_path / "merged"), family)


REMOTE_CONFIG = '''from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote_lm"
'''
REMOTE_MODEL = '''from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteModel(LlamaModel):
    config_class = TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaPreTrainedModel, GenerationMixin):
    """InternLM2's layout: a model type transformers does not know, the head named `output`."""
    config_class = TinyRemoteConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyRemoteModel(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, value):
        self.output = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        logits = self.output(out.last_hidden_state)
        loss = None if labels is None else self.loss_function(logits=logits, labels=labels,
                                                              vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)
'''


def save_remote_code_lm(families, out):
    """A language model whose code ships in its folder (config.json's auto_map), with Llama 3's
    real tokenizer: what --trust_remote_code loads for InternLM2."""
    import importlib
    import shutil

    out.mkdir(parents=True)
    (out / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (out / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    base = families("llama3")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    sys.path.insert(0, str(out.parent))
    try:  # the classes as transformers would import them, to write the weights once
        package = out.name
        config_module = importlib.import_module(f"{package}.configuration_tiny_remote")
        model_module = importlib.import_module(f"{package}.modeling_tiny_remote")
    finally:
        sys.path.pop(0)
    settings = json.loads((base / "config.json").read_text())
    for key in ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype"):
        settings.pop(key, None)
    config = config_module.TinyRemoteConfig(**settings)
    config.auto_map = {"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                       "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM"}
    model_module.TinyRemoteForCausalLM(config).save_pretrained(out)
    return out


# Slowest ten of the suite (CI, 2 cores): ~43 s. A trust_remote_code LLM (InternLM2's way) through both
# stages, chat and eval: its loading path differs in every room.
@pytest.mark.slow
def test_a_remote_code_language_model_trains_both_stages_chats_and_evaluates(families, tiny_bases, tmp_path, capsys):
    """--trust_remote_code (InternLM2's path): stage 1 with it, stage 2 from the recipe alone, with
    XTuner's llama3_chat and a LoRA ViT beside MoSLoRA on the LLM; merging is refused in a line."""
    model = save_remote_code_lm(families, tmp_path / "remote_lm")
    data = write_colour_data(tmp_path / "data")
    stage2 = train_both_stages(model, tiny_bases["vision_tower"], "llama3_chat", data, tmp_path,
                               stage1_flags=("--trust_remote_code", "True"),
                               stage2_flags=("--tune_vision_tower", "adapter", "--vision_adapter", "lora",
                                             "--vision_lora_r", "4"))
    recipe = json.loads((stage2 / "llava_moslora.json").read_text())
    assert recipe["trust_remote_code"] is True and recipe["template"] == "llama3_chat"
    assert recipe["llm_adapter"]["kind"] == "moslora" and recipe["vision_adapter"]["kind"] == "lora"
    assert chat_answer(stage2, data, capsys) == REPLY
    assert cli(["eval", "--model", str(stage2), "--benchmarks", "Colors_MCQ", "--data-root", str(data),
                "--work-dir", str(tmp_path / "eval"), "--backend", "builtin"]) == 0
    with pytest.raises(SystemExit, match="runs code from its own folder"):
        cli(["merge", "--checkpoint", str(stage2), "--out", str(tmp_path / "merged")])
