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
        # A newline is a piece of its own, as SentencePiece's byte fallback makes it (<0x0A>): BPE
        # never merges across it, so "A." after a newline is the same token whatever came before.
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")])
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
    from ..model.builder import image_processor_class  # the PIL processor where torchvision is missing

    image_processor_class("CLIPImageProcessor")(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


# --- `llava-moslora init-tiny` ----------------------------------------------------------------

def init_tiny(data_dir: Union[str, Path], out_dir: Union[str, Path], *, image_size: int = 64, patch_size: int = 16,
              vision_hidden: int = 64, vision_layers: int = 3, hidden_size: int = 128, num_layers: int = 4,
              vocab_size: int = 512, seed: int = 0) -> dict:
    """Tiny CLIP tower + tiny Llama whose tokenizer is trained on the data set's text (ShapesVQA)."""
    from .synth import corpus
    from ..data.templates import TEMPLATES

    # Template text occurs in every sample at training time but only once in the data files:
    # repeat it so BPE merges it into a few tokens instead of spelling it out letter by letter.
    texts = corpus(data_dir)
    texts += [t.default_system for t in TEMPLATES.values() if t.default_system] * 200
    texts += ["USER: ASSISTANT:"] * 200
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, style="llama", vocab_size=vocab_size)
    llm = save_tiny_lm(out / "llm", tokenizer, hidden_size=hidden_size, num_layers=num_layers,
                       num_heads=max(1, hidden_size // 32), intermediate_size=hidden_size * 2, seed=seed)
    tower = save_tiny_clip(out / "vision", image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                           num_layers=vision_layers, num_heads=max(1, vision_hidden // 16),
                           intermediate_size=vision_hidden * 2, seed=seed)
    return {"language_model": str(llm), "vision_tower": str(tower), "vocab_size": len(tokenizer)}


def add_arguments(parser, name: str = "init-tiny") -> None:
    parser.add_argument("--data", default="runs/quickstart/data", help="ShapesVQA directory whose text trains the tokenizer")
    parser.add_argument("--out", default="runs/quickstart/base", help="writes OUT/vision and OUT/llm")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--patch_size", type=int, default=16, help="vision patch side; (image_size/patch_size)^2 image tokens")
    parser.add_argument("--vision_hidden", type=int, default=64)
    parser.add_argument("--vision_layers", type=int, default=3)
    parser.add_argument("--hidden_size", type=int, default=128, help="LLM width")
    parser.add_argument("--num_layers", type=int, default=4, help="LLM decoder layers")
    parser.add_argument("--vocab_size", type=int, default=512, help="tokenizer vocabulary (upper bound)")
    parser.add_argument("--seed", type=int, default=0)


def run(args, name: str = "init-tiny") -> int:
    made = init_tiny(args.data, args.out, image_size=args.image_size, patch_size=args.patch_size,
                     vision_hidden=args.vision_hidden, vision_layers=args.vision_layers, hidden_size=args.hidden_size,
                     num_layers=args.num_layers, vocab_size=args.vocab_size, seed=args.seed)
    print(f"tiny bases written: vision tower {made['vision_tower']}, language model {made['language_model']} "
          f"({made['vocab_size']} tokens)")
    return 0
