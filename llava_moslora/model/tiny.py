"""Tiny base models written as ordinary `save_pretrained` directories.

They let everything downstream (build_llava, training, evaluation, chat) be exercised through
the very `from_pretrained` paths a real Vicuna and CLIP take, with random weights and a
tokenizer trained on the given text. Used by `llava-moslora init-tiny` and the tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

# Tokenizer conventions of the model families the templates target.
TOKENIZER_STYLES = {
    # Llama 2 / Vicuna: SentencePiece-like metaspace BPE, <s> prepended, </s> ends a reply.
    "llama": dict(specials=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", unk="<unk>", pad=None),
    # Llama 3 instruct: byte-level BPE, <|begin_of_text|> prepended, <|eot_id|> ends a turn.
    "llama3": dict(specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                             "<|end_header_id|>", "<|eot_id|>"],
                   bos="<|begin_of_text|>", eos="<|eot_id|>", unk=None, pad=None),
    # Qwen2: byte-level BPE, nothing prepended, ChatML markers.
    "chatml": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                   bos=None, eos="<|im_end|>", unk=None, pad="<|endoftext|>"),
}

LM_ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def train_tokenizer(texts: Iterable[str], style: str = "llama", vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on `texts`, following one model family's conventions."""
    if style not in TOKENIZER_STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; expected one of {list(TOKENIZER_STYLES)}")
    spec = TOKENIZER_STYLES[style]
    if style == "llama":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(texts)) | set("abcdefghijklmnopqrstuvwxyz0123456789 .,:;?!'\"-()\n▁"))
        initial = [c for c in alphabet if c != " "]
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        initial = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"],
                                  initial_alphabet=initial, show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer)
    if spec["bos"]:
        bos = spec["bos"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    elif style != "llama":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=spec["bos"], eos_token=spec["eos"],
                                   unk_token=spec["unk"], pad_token=spec["pad"],
                                   additional_special_tokens=[t for t in spec["specials"]
                                                              if t not in (spec["bos"], spec["eos"], spec["unk"], spec["pad"])])


def save_tiny_lm(out_dir: Union[str, Path], tokenizer: PreTrainedTokenizerFast, *, architecture: str = "llama",
                 hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, intermediate_size: int = 128,
                 max_position_embeddings: int = 1024, seed: int = 0) -> Path:
    """A randomly initialised causal LM sized to `tokenizer`, saved with it."""
    config_class, model_class = LM_ARCHITECTURES[architecture]
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    out = Path(out_dir)
    model_class(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_tiny_clip(out_dir: Union[str, Path], *, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32,
                   num_layers: int = 3, num_heads: int = 4, intermediate_size: int = 64, seed: int = 0) -> Path:
    """A randomly initialised CLIP vision tower and its image processor, like a CLIP checkpoint."""
    config = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                              num_hidden_layers=num_layers, num_attention_heads=num_heads,
                              intermediate_size=intermediate_size, projection_dim=hidden_size)
    torch.manual_seed(seed)
    out = Path(out_dir)
    CLIPVisionModel(config).save_pretrained(out)
    from transformers import CLIPImageProcessor  # imported late: without torchvision it warns

    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out
