"""LLaVA's own training flags (haotian-liu/LLaVA's train.py, as its scripts pass them), read as ours.

A flag that means the same here is renamed (`--gradient_checkpointing` -> `--activation_checkpointing`),
one whose LLaVA-1.5 value is what this project always does is dropped (`--image_aspect_ratio
pad`), and one that means something else here is refused in one line naming ours
(`--lora_enable`: the adapter is a choice of three). docs/TRAINING.md's "Coming from LLaVA" table
lists them all. Imports neither torch nor transformers (the launch checks use it).
"""
from __future__ import annotations

from typing import Sequence

# LLaVA's name -> ours, same meaning
RENAMED = {
    "--gradient_checkpointing": "--activation_checkpointing",
    "--warmup_ratio": "--warmup_steps",  # transformers 5: a --warmup_steps below 1 is the ratio
    "--evaluation_strategy": "--eval_strategy",  # transformers' own rename
}
# LLaVA's --version (its conversation template) -> our --template
VERSIONS = {"v1": "vicuna_v1", "vicuna_v1": "vicuna_v1", "llava_v1": "vicuna_v1", "plain": "plain"}
# flag -> (the values that are what this project always does, why it needs no flag)
ALWAYS = {
    "--mm_use_im_start_end": ({"false"}, "no image start/end tokens, as LLaVA-1.5"),
    "--mm_use_im_patch_token": ({"false"}, "no image patch token, as LLaVA-1.5"),
    "--image_aspect_ratio": ({"pad"}, "images are always padded to square with the mean colour (LLaVA-1.5's pad)"),
    "--lazy_preprocess": ({"true", "false"}, "samples are always tokenized as they are read"),
}
# LLaVA's stage-1 switch, "the projector alone", as our tune modes say it
PROJECTOR_ALONE = ["--tune_mm_projector", "full", "--tune_language_model", "frozen", "--tune_vision_tower", "frozen"]
# flag -> what to use instead (these mean something else here, or choose among more than LLaVA had)
REFUSED = {
    "--lora_enable": "the adapter is a choice: --tune_language_model adapter --adapter lora|moslora|moelora "
                     "(scripts/finetune.sh: ADAPTER=lora), or --tune_language_model full",
    "--freeze_backbone": "--tune_language_model frozen|adapter|full",
    "--freeze_mm_mlp_adapter": "--tune_mm_projector frozen",
    "--lora_bias": "adapters train no bias here; leave it out",
    "--lora_weight_path": "--pretrain_mm_mlp_adapter with a stage checkpoint holds the adapters to continue from",
    "--mm_patch_merge_type": "flat, LLaVA-1.5's, is the only one; leave it out",
    "--mpt_attn_impl": "--attn_implementation",
}
TRUE_WORDS = {"true", "1", "yes"}


def _name(arg: str) -> str:
    return "--" + arg[2:].replace("-", "_")


def translate(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(argv with LLaVA's flags read as ours, one note per flag read, one line per refused flag)."""
    out, notes, refused = [], [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        key, equals, given = arg.partition("=")
        name = _name(key) if key.startswith("--") else key
        has_value = bool(equals) or (i + 1 < len(args) and not args[i + 1].startswith("--"))
        value = given if equals else (args[i + 1] if has_value else "true")
        step = 1 if equals or not has_value else 2
        if not key.startswith("--") or name not in {*RENAMED, "--version", "--tune_mm_mlp_adapter", *ALWAYS, *REFUSED}:
            out.append(arg)
            i += 1
            continue
        i += step
        if name in RENAMED:
            out += [RENAMED[name], value]
            notes.append(f"LLaVA's {name} {value} read as {RENAMED[name]} {value}")
        elif name == "--version":
            if value in VERSIONS:
                out += ["--template", VERSIONS[value]]
                notes.append(f"LLaVA's --version {value} read as --template {VERSIONS[value]}")
            else:
                refused.append(f"--version {value}: LLaVA's conversation versions read here are "
                               f"{', '.join(sorted(VERSIONS))}; otherwise give --template (vicuna_v1, llama3, chatml, "
                               "llama3_chat, internlm2_chat, moelora_llava, plain)")
        elif name == "--tune_mm_mlp_adapter":
            if value.lower() in TRUE_WORDS:
                out += PROJECTOR_ALONE
                notes.append(f"LLaVA's --tune_mm_mlp_adapter {value} read as {' '.join(PROJECTOR_ALONE)}")
            else:
                notes.append(f"LLaVA's --tune_mm_mlp_adapter {value} needs no flag here: the tune modes decide")
        elif name in ALWAYS:
            accepted, why = ALWAYS[name]
            if value.lower() in accepted:
                notes.append(f"LLaVA's {name} {value} needs no flag here: {why}")
            else:
                refused.append(f"{name} {value}: not supported; {why}")
        else:
            refused.append(f"{name} is LLaVA's; here: {REFUSED[name]}")
    return out, notes, refused
