"""The papers' recipes (studies/moslora-*.yaml, studies/moelora-llava15*.yaml) through
`llava-moslora study --dry-run`: every run's trainable parameters per component and kind, batch
arithmetic and schedule, against counts worked out here from the architectures' published shapes.

The bases are config-only folders as the hub ships them (Llama-3-8B-Instruct, InternLM2-chat-7B
with its remote code, CLIP ViT-L/14-336, llava-1.5-7b-hf), with real tokenizer files where a
registry package ships them; no weight is read (the dry run builds on the meta device).
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT
from real_tokenizers import WRITERS

# --- the published shapes -------------------------------------------------------------------------------

LLAMA3_8B_INSTRUCT = {  # meta-llama/Meta-Llama-3-8B-Instruct, config.json
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}
INTERNLM2_CHAT_7B = {  # internlm/internlm2-chat-7b, config.json
    "architectures": ["InternLM2ForCausalLM"], "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM"},
    "bias": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "internlm2",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pad_token_id": 2,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 92544}
CLIP_VIT_L_14_336_VISION = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                            "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768}
CLIP_VIT_L_14_336 = {  # openai/clip-vit-large-patch14-336, config.json (text side abridged to its shape)
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768, "logit_scale_init_value": 2.6592,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                    "projection_dim": 768, "max_position_embeddings": 77, "vocab_size": 49408},
    "vision_config": CLIP_VIT_L_14_336_VISION}
CLIP_PREPROCESSOR = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                     "feature_extractor_type": "CLIPFeatureExtractor",
                     "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                     "resample": 3, "size": 336}
LLAVA_15_7B_HF = {  # llava-hf/llava-1.5-7b-hf, config.json (the text config's other fields are Llama-2-7B's defaults)
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096, "model_type": "llama",
                    "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16",
    "vision_config": {**CLIP_VIT_L_14_336_VISION, "model_type": "clip_vision_model", "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}
MIX665K = 665_298  # records of llava_v1_5_mix665k.json

# InternLM2's modelling code names its layers its own way (wqkv, wo, w1-w3, a head named `output`);
# the shape of it, enough to be built from its config as transformers builds remote code.
INTERNLM2_CONFIGURATION = '''from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"

    def __init__(self, vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
                 initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, tie_word_embeddings=False, bias=True, rope_theta=10000, rope_scaling=None, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act, self.max_position_embeddings = hidden_act, max_position_embeddings
        self.initializer_range, self.rms_norm_eps, self.use_cache = initializer_range, rms_norm_eps, use_cache
        self.bias, self.rope_theta, self.rope_scaling = bias, rope_theta, rope_scaling
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
'''
INTERNLM2_MODELING = '''import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from .configuration_internlm2 import InternLM2Config


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps


class InternLM2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        head_dim = config.hidden_size // config.num_attention_heads
        self.wqkv = nn.Linear(config.hidden_size, (config.num_attention_heads + 2 * config.num_key_value_heads)
                              * head_dim, bias=config.bias)
        self.wo = nn.Linear(config.num_attention_heads * head_dim, config.hidden_size, bias=config.bias)


class InternLM2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    _no_split_modules = ["InternLM2DecoderLayer"]


class InternLM2Model(InternLM2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, value):
        self.output = value
'''


def write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Config-only folders of the papers' bases, as the hub ships them (no weights)."""
    root = tmp_path_factory.mktemp("hub")
    llama3 = root / "Meta-Llama-3-8B-Instruct"
    llama3.mkdir()
    WRITERS["llama3"](llama3)
    write_json(llama3 / "config.json", LLAMA3_8B_INSTRUCT)
    internlm2 = root / "internlm2-chat-7b"
    internlm2.mkdir()
    WRITERS["qwen2"](internlm2)  # a stand-in tokenizer with <|im_start|>/<|im_end|> (none ships InternLM2's)
    write_json(internlm2 / "config.json", INTERNLM2_CHAT_7B)
    (internlm2 / "configuration_internlm2.py").write_text(INTERNLM2_CONFIGURATION)
    (internlm2 / "modeling_internlm2.py").write_text(INTERNLM2_MODELING)
    clip = root / "clip-vit-large-patch14-336"
    write_json(clip / "config.json", CLIP_VIT_L_14_336)
    write_json(clip / "preprocessor_config.json", CLIP_PREPROCESSOR)
    return {"llama3": llama3, "internlm2": internlm2, "clip": clip}


def save_llava_15_hf(out):
    """llava-hf/llava-1.5-7b-hf without weights: config, Llama 2's SentencePiece tokenizer (the
    Vicuna files) with <image> and <pad> added as ids 32000 and 32001, the CLIP preprocessor."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True)
    WRITERS["vicuna"](out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    tokenizer.save_pretrained(out)
    write_json(out / "config.json", LLAVA_15_7B_HF)
    write_json(out / "preprocessor_config.json", {**CLIP_PREPROCESSOR, "image_processor_type": "CLIPImageProcessor",
                                                   "processor_class": "LlavaProcessor"})
    return out


def lay_out(root, grid, records, stage1):
    """The grid in a studies/ folder with what its relative paths name: the data (records of
    nothing: the dry run counts them) and the stage-1 start."""
    (root / "studies").mkdir(parents=True)
    shutil.copy(ROOT / "studies" / grid, root / "studies" / grid)
    text = (ROOT / "studies" / grid).read_text()
    import yaml

    spec = yaml.safe_load(text)
    data = (root / "studies" / spec["data"]["data_path"]).resolve()
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("[" + ",".join(["{}"] * records) + "]")
    (root / "studies" / spec["data"]["image_folder"]).mkdir(parents=True, exist_ok=True)
    start = (root / "studies" / spec["stage1"]["checkpoint"]).resolve()
    stage1(start)
    return root / "studies" / grid


# --- the counts, worked out from the shapes alone -------------------------------------------------------

def lora(d_in, d_out, r):
    """A and B of one LoRA layer."""
    return r * (d_in + d_out)


def llama_linears(config):
    """(d_in, d_out) of each adapted linear layer of one Llama decoder layer."""
    h, i = config.get("hidden_size", 4096), config.get("intermediate_size", 11008)
    kv = config.get("num_key_value_heads", 32) * h // config.get("num_attention_heads", 32)
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down


def internlm2_linears(config):
    h, i, heads, kv_heads = (config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                 "num_key_value_heads"))
    return [(h, (heads + 2 * kv_heads) * h // heads), (h, h), (h, i), (h, i), (i, h)]  # wqkv wo w1 w3 w2


def clip_linears(vision):
    h, i = vision["hidden_size"], vision["intermediate_size"]
    return [(h, h)] * 4 + [(h, i), (i, h)]  # q k v out_proj fc1 fc2


def adapter_kinds(linears, layers, r, mixer=False, experts=1):
    """(factors, mixers, routers) of adapters of rank r (per expert) on `linears` of every layer."""
    factors = layers * sum(experts * lora(d_in, d_out, r) for d_in, d_out in linears)
    mixers = layers * len(linears) * r * r if mixer else 0
    routers = layers * sum(experts * d_in for d_in, _ in linears) if experts > 1 else 0
    return factors, mixers, routers


PROJECTOR = 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # CLIP-L's 1024 to the 7-8B LLMs' 4096, two layers
L3, VIT, IL2 = LLAMA3_8B_INSTRUCT, CLIP_VIT_L_14_336_VISION, INTERNLM2_CHAT_7B
LLAVA_TEXT = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32}  # Llama-2-7B
EXPECTED = {
    "moslora-llama3.yaml": {
        "lora": {"vision_tower": adapter_kinds(clip_linears(VIT), 24, 64),
                 "language_model": adapter_kinds(llama_linears(L3), 32, 64), "mm_projector": PROJECTOR},
        "moslora": {"vision_tower": adapter_kinds(clip_linears(VIT), 24, 64, mixer=True),
                    "language_model": adapter_kinds(llama_linears(L3), 32, 64, mixer=True), "mm_projector": PROJECTOR}},
    "moslora-internlm2-qlora.yaml": {
        "lora": {"vision_tower": adapter_kinds(clip_linears(VIT), 24, 64),
                 "language_model": adapter_kinds(internlm2_linears(IL2), 32, 512), "mm_projector": PROJECTOR},
        "moslora": {"vision_tower": adapter_kinds(clip_linears(VIT), 24, 64),  # the ViT's mixer is off in this run
                    "language_model": adapter_kinds(internlm2_linears(IL2), 32, 512, mixer=True),
                    "mm_projector": PROJECTOR}},
}
MOE = {"vision_tower": adapter_kinds(clip_linears(VIT)[:4], 24, 4, experts=20),  # attention only
       "language_model": adapter_kinds(llama_linears(LLAVA_TEXT)[:4], 32, 4, experts=20), "mm_projector": 0}
# LoRA at the same budget: the largest rank whose A and B cost no more than 20 experts and a router
LORA_AT_MOE_BUDGET = {component: (sum(kinds) // lora(1024, 1024, 1) // 4 // 24 if component == "vision_tower"
                                  else sum(kinds) // lora(4096, 4096, 1) // 4 // 32)
                      for component, kinds in MOE.items() if component != "mm_projector"}
EXPECTED["moelora-llava15.yaml"] = {
    **{variant: MOE for variant in ("rsgd", "grsgd", "radamw", "gradamw")},
    "lora": {"vision_tower": adapter_kinds(clip_linears(VIT)[:4], 24, LORA_AT_MOE_BUDGET["vision_tower"]),
             "language_model": adapter_kinds(llama_linears(LLAVA_TEXT)[:4], 32, LORA_AT_MOE_BUDGET["language_model"]),
             "mm_projector": 0}}
EXPECTED["moelora-llava15-vmcbench.yaml"] = {"rsgd": MOE}

# the papers' batch arithmetic: (world, per device, accumulation, global batch, steps per epoch or None, steps, warmup)
STEPS_MIX665K = math.ceil(MIX665K / 64)  # XTuner's iterations: ceil(665,298 / (4 x 8)) = 20,791, two per step
BATCHES = {"moslora-llama3.yaml": (4, 8, 2, 64, STEPS_MIX665K, STEPS_MIX665K, math.ceil(0.03 * STEPS_MIX665K)),
           "moslora-internlm2-qlora.yaml": (4, 16, 1, 64, STEPS_MIX665K, STEPS_MIX665K,
                                            math.ceil(0.03 * STEPS_MIX665K)),
           "moelora-llava15.yaml": (1, 5, 8, 40, None, 2000, 0),
           "moelora-llava15-vmcbench.yaml": (1, 2, 2, 4, None, 2000, 0)}


# Slowest ten of the suite (CI, 2 cores): ~84 s for the four grids. Each variant's real finetune.sh --dry_run
# builds the paper's model skeleton (meta device) under its launch settings, the only way to count what trains.
@pytest.fixture(scope="module")
def dry_runs(hub, tmp_path_factory):
    """Each grid's `llava-moslora study --dry-run`, as a user with the bases and data downloaded runs it
    (MODEL / VISION_TOWER point at the local folders instead of the grid's hub ids)."""
    def projector_file(path):  # the dry run reads no weights: the stage-1 file only has to be there
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")

    runs = {"moslora-llama3.yaml": (MIX665K, projector_file, hub["llama3"], []),
            "moslora-internlm2-qlora.yaml": (MIX665K, projector_file, hub["internlm2"], []),
            "moelora-llava15.yaml": (1000, save_llava_15_hf, None, []),
            "moelora-llava15-vmcbench.yaml": (900, save_llava_15_hf, None, ["--variants", "rsgd"])}
    printed = {}
    for grid, (records, stage1, model, extra) in runs.items():
        root = tmp_path_factory.mktemp(grid.split(".")[0])
        path = lay_out(root, grid, records, stage1)
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "VISION_TOWER")}
        if model:
            env.update(MODEL=str(model), VISION_TOWER=str(hub["clip"]))
        result = subprocess.run([sys.executable, "-m", "llava_moslora", "study", "--grid", str(path), "--dry-run",
                                 "--out", str(root / "study"), *extra], capture_output=True, text=True, env=env,
                                cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        printed[grid] = result.stdout
        assert not (root / "study" / "runs").exists()  # nothing trained
    return printed


def variant_reports(printed):
    """variant -> its finetune.sh --dry_run report."""
    parts = re.split(r"\n\n(\S+): bash scripts/finetune.sh --dry_run \.\.\.\n", printed)
    return dict(zip(parts[1::2], parts[2::2]))


def kinds_table(report):
    rows = report.split("trainable by kind")[1].splitlines()[1:4]
    return {row.split()[0]: tuple(int(n.replace(",", "")) for n in row.split()[1:]) for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize("grid", sorted(EXPECTED))
def test_each_recipe_trains_what_the_architectures_shapes_say(dry_runs, grid):
    reports = variant_reports(dry_runs[grid])
    assert sorted(reports) == sorted(EXPECTED[grid])
    for variant, expected in EXPECTED[grid].items():
        table = kinds_table(reports[variant])
        for component in ("vision_tower", "language_model"):
            factors, mixers, routers = expected[component]
            assert table[component] == (factors, mixers, routers, 0), (variant, component)
        assert table["mm_projector"] == (0, 0, 0, expected["mm_projector"]), variant


@pytest.mark.slow
@pytest.mark.parametrize("grid", sorted(BATCHES))
def test_each_recipe_has_the_papers_batches_and_schedule(dry_runs, grid):
    world, per_device, accumulation, global_batch, per_epoch, steps, warmup = BATCHES[grid]
    for variant, report in variant_reports(dry_runs[grid]).items():
        assert (f"batch: {world} process(es) x per-device batch {per_device} x accumulation {accumulation} = "
                f"global batch {global_batch}") in report, variant
        if per_epoch:
            assert f"{MIX665K} records -> {per_epoch} optimizer steps per epoch; 1 epoch(s) -> {steps} steps" in report
            assert f"schedule: cosine, {warmup} warmup step(s) of {steps}" in report
        else:
            assert f"--max_steps {steps} -> {steps} steps" in report
            assert (f"schedule: warmup_stable_decay, 0 warmup step(s) of {steps}; decay_type linear, min_lr_ratio 0.1, "
                    f"num_decay_steps {steps}") in report
        assert "memory per GPU, estimated" in report and "weights at 2 bytes" in report  # bf16, as on A100s


def test_the_moelora_schedule_is_the_codes_linear_decay():
    """The code: linear from the rate to 0 over 2,222 steps, stopped at 2,000; the grid's WSD
    schedule: linear to 0.1 x over the 2,000. At every step they differ by under 1e-4 of the rate."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("warmup_stable_decay", optimizer, num_warmup_steps=0, num_training_steps=2000,
                              scheduler_specific_kwargs={"num_decay_steps": 2000, "decay_type": "linear",
                                                         "min_lr_ratio": 0.1})
    worst = 0.0
    for step in range(2000):
        worst = max(worst, abs(scheduler.get_last_lr()[0] - (2222 - step) / 2222))
        optimizer.step()
        scheduler.step()
    # 0.9 t / 2000 against t / 2222: 2000 x |0.9 / 2000 - 1 / 2222| = 9.0e-5 at the last step
    assert worst < 1e-4
