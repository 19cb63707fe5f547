"""Building a LLaVA model from a vision tower and a causal LM (stage 1's starting point).

The result is transformers' own LlavaForConditionalGeneration: the loaded vision tower and
language model are placed inside it as they are, next to a freshly initialised projector, so a
merged checkpoint later loads with plain `from_pretrained`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tokenizers import AddedToken
from transformers import (AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer,
                          CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                          SiglipVisionModel)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from ..data.templates import IMAGE_TOKEN, get_template
from ..tokenizer_files import load_failure
from ..towers import select_strategy
from .partitioned import outside_zero3, whole
from .recipe import Recipe

VISION_TOWERS = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
                 "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
LLAMA3_BOS = "<|begin_of_text|>"


@dataclass
class LlavaBundle:
    """A model with what it needs to be fed and rebuilt."""

    model: LlavaForConditionalGeneration
    tokenizer: object
    image_processor: object
    recipe: Recipe

    def processor(self) -> LlavaProcessor:
        """A LlavaProcessor for `AutoProcessor` users of saved or merged directories."""
        return make_processor(self.model.config, self.tokenizer, self.image_processor)


def set_chat_template(tokenizer, template: str) -> None:
    """Give the tokenizer the chat template of the conversation template the model is trained
    with (the processor made from it carries the same), replacing the base LM's own."""
    tokenizer.chat_template = get_template(template).chat_template


def make_processor(config: LlavaConfig, tokenizer, image_processor) -> LlavaProcessor:
    """llava-hf's processor for the model: image-token expansion, and the tokenizer's chat template."""
    has_cls = config.vision_config.model_type.startswith("clip")
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          num_additional_image_tokens=1 if has_cls else 0, image_token=IMAGE_TOKEN,
                          chat_template=tokenizer.chat_template)


def vision_tower_class(path: str, trust_remote_code: bool = False):
    model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    try:
        return VISION_TOWERS[model_type]
    except KeyError:
        raise ValueError(f"{path}: vision towers of type {model_type!r} are not supported; "
                         f"use a CLIP or SigLIP checkpoint ({sorted(VISION_TOWERS)})") from None


def image_processor_class(name: str):
    """transformers' image processor `name` on the backend this machine has: the torchvision
    one, or its PIL twin (`<name>Pil`) where torchvision is missing. Asking for `name` itself
    without torchvision works too, but warns on every load, which nobody can act on."""
    import transformers
    from transformers.utils import is_torchvision_available

    return getattr(transformers, name if is_torchvision_available() else f"{name}Pil")


def llava_image_processor(path: str):
    """The tower's image processor as a LlavaImageProcessor that pads to square with its mean
    colour (LLaVA-1.5's preprocessing), so the padding travels with saved checkpoints."""
    base = AutoImageProcessor.from_pretrained(path)
    settings = {k: v for k, v in base.to_dict().items()
                if k not in ("image_processor_type", "processor_class", "_processor_class", "backend")}
    settings.setdefault("do_center_crop", False)  # SigLIP resizes straight to its input size
    return image_processor_class("LlavaImageProcessor")(**settings, do_pad=True)


class TokenizerLoadError(ValueError):
    """The language model's tokenizer files do not load; the message says what to install."""


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """AutoTokenizer, with a failure said in one line naming the folder and what would help.
    Llama 3's original tiktoken file loads without the post-processor that its tokenizer.json
    has, which prepends <|begin_of_text|>: it is turned on, so both forms give the same ids."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as error:  # whatever transformers raises for files it cannot read
        folder = Path(path)
        if not folder.is_dir():
            raise
        raise TokenizerLoadError(f"{path}: {load_failure(folder, error)}") from error
    if tokenizer.bos_token == LLAMA3_BOS and "add_bos_token" not in tokenizer.init_kwargs \
            and tokenizer("x")["input_ids"][:1] != [tokenizer.bos_token_id]:
        tokenizer.add_bos_token = True
    return tokenizer


def prepare_tokenizer(path: str, trust_remote_code: bool = False):
    """The LM's tokenizer with `<image>` added, and a pad token where it has none (the unk
    token, as LLaVA does for Vicuna, else a new `<pad>`)."""
    tokenizer = load_tokenizer(path, trust_remote_code)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def resize_embeddings(lm, size: int) -> None:
    """Grow the LM's vocabulary to `size`. New input and output rows are set to the mean of the
    old ones, as LLaVA does: deterministic, so rebuilding a model from its bases (load_checkpoint)
    gives the same weights every time, unlike a random draw."""
    old = lm.get_input_embeddings().num_embeddings
    if size <= old:
        return
    lm.resize_token_embeddings(size, mean_resizing=False)
    embeddings = {id(m): m for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m is not None}.values()
    with torch.no_grad(), whole([embedding.weight for embedding in embeddings], modify=True):
        for embedding in embeddings:
            embedding.weight[old:] = embedding.weight[:old].mean(dim=0, keepdim=True)


def num_image_tokens(vision_config, strategy: str) -> int:
    """Image tokens per image: the tower's patches, plus CLIP's CLS token under "full"."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    has_cls = vision_config.model_type.startswith("clip")
    return patches + (1 if has_cls and strategy == "full" else 0)


def check_image_tokens(tower, strategy: str, image_tokens: int) -> None:
    """The image-token count must be what LLaVA takes from the tower: its token positions, less
    the first under "default". Checked when the model is built, not at the first step."""
    positions = getattr(tower, "vision_model", tower).embeddings.num_positions
    features = positions - (1 if strategy == "default" else 0)
    if features != image_tokens:  # towers.select_strategy refuses the choices that would differ
        raise ValueError(f"the vision tower gives {features} features per image under {strategy!r} "
                         f"({positions} tokens), but {image_tokens} image tokens were planned")


def build_llava(vision_tower: str, language_model: str, *, projector_type: str = "mlp2x_gelu",
                vision_feature_layer: int = -2, vision_feature_select: Optional[str] = None,
                template: str = "vicuna_v1", dtype: torch.dtype = torch.float32,
                attn_implementation: Optional[str] = None, trust_remote_code: bool = False,
                weights: bool = True, quantization=None) -> LlavaBundle:
    """Compose LlavaForConditionalGeneration from a vision tower and a causal LM (path or hub id).

    weights=False builds the same model on the meta device from the configs alone (no weight
    file is read): shapes and parameter counts for a dry run, no memory. `quantization` (a
    quantize.Quantization) loads the language model's linear layers in 4 or 8 bits.
    `vision_feature_select` is towers.select_strategy's choice (auto: the tower's patch tokens).

    projector_type "mlp2x_gelu" is LLaVA-1.5's Linear-GELU-Linear. "linear" is a single linear
    map, stored as transformers' two-layer projector with an identity activation and a frozen
    identity second layer, so it still loads with plain transformers.
    """
    if projector_type not in PROJECTOR_TYPES:
        raise ValueError(f"unknown projector_type {projector_type!r}; expected one of {PROJECTOR_TYPES}")
    tower_class = vision_tower_class(vision_tower, trust_remote_code)
    strategy = select_strategy(tower_class.config_class.model_type, vision_feature_select)
    tokenizer = prepare_tokenizer(language_model, trust_remote_code)
    set_chat_template(tokenizer, template)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if weights and quantization is not None:
        from .quantize import accept_own_checkpoints, load_device

        lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype, trust_remote_code=trust_remote_code,
                                                  quantization_config=quantization.bnb_config(dtype),
                                                  device_map={"": load_device()}, **extra)
        accept_own_checkpoints(lm)
        tower = tower_class.from_pretrained(vision_tower, dtype=dtype, **extra)
    elif weights:
        # Loading draws nothing from the CPU RNG, except under ZeRO-3, where transformers first
        # initialises the weights in zero.Init: forked, so the adapters' init is the same either way.
        with torch.random.fork_rng(devices=[]):
            lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype, trust_remote_code=trust_remote_code,
                                                      **extra)
            tower = tower_class.from_pretrained(vision_tower, dtype=dtype, **extra)
    else:
        lm_config = AutoConfig.from_pretrained(language_model, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(lm_config, dtype=dtype, trust_remote_code=trust_remote_code)
            tower = tower_class._from_config(tower_class.config_class.from_pretrained(vision_tower), dtype=dtype)
    resize_embeddings(lm, len(tokenizer))
    if tokenizer.pad_token_id is not None:
        lm.config.pad_token_id = tokenizer.pad_token_id
    image_tokens = num_image_tokens(tower.config, strategy)
    check_image_tokens(tower, strategy, image_tokens)
    config = LlavaConfig(
        vision_config=tower.config, text_config=lm.config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=image_tokens,
        projector_hidden_act="gelu" if projector_type == "mlp2x_gelu" else "linear",
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=strategy,
        multimodal_projector_bias=True, tie_word_embeddings=lm.config.tie_word_embeddings)
    body = getattr(lm, lm.base_model_prefix)
    register_remote_code(lm.config, body)
    with torch.device("meta"), outside_zero3():  # an empty shell: no ZeRO-3 partitions for it
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = tower
    model.model.language_model = body
    model.lm_head = lm.get_output_embeddings()  # `lm_head`, or InternLM2's `output`
    with contextlib.nullcontext() if weights else torch.device("meta"):
        model.model.multi_modal_projector = make_projector(config, projector_type, dtype)
    model.generation_config = lm.generation_config
    on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if on_meta and weights:  # pragma: no cover - would mean transformers' LLaVA grew a new sub-module
        raise RuntimeError(f"tensors left uninitialised after composing LLaVA: {on_meta[:5]}")
    recipe = Recipe(vision_tower=vision_tower, language_model=language_model, projector_type=projector_type,
                    vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=strategy,
                    template=template, num_image_tokens=image_tokens,
                    quantization=quantization.to_dict() if quantization is not None else None,
                    trust_remote_code=trust_remote_code)
    return LlavaBundle(model, tokenizer, llava_image_processor(vision_tower), recipe)


def register_remote_code(config, body: torch.nn.Module) -> None:
    """Make a language model whose code came from its folder (trust_remote_code: InternLM2) known to
    transformers' Auto classes in this process: LLaVA's shell builds its language model through
    AutoModel.from_config (on the meta device, replaced at once by `body`)."""
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config.model_type in CONFIG_MAPPING:
        return
    AutoConfig.register(config.model_type, type(config), exist_ok=True)
    AutoModel.register(type(config), type(body), exist_ok=True)


def make_projector(config: LlavaConfig, projector_type: str, dtype: torch.dtype) -> LlavaMultiModalProjector:
    projector = LlavaMultiModalProjector(config)
    if projector_type == "linear":
        with torch.no_grad():
            projector.linear_2.weight.copy_(torch.eye(projector.linear_2.out_features))
            projector.linear_2.bias.zero_()
    return projector.to(dtype)
