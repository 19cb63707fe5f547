"""Stage checkpoints (recipe + tokenizer/processor + trained tensors) and loading them.

A stage checkpoint holds `llava_moslora.json` (the Recipe), the tokenizer and processor files,
and `trainable.safetensors` with only the tensors that differ from the base checkpoints. Loading
rebuilds the model from the recipe's base checkpoints, applies the same tuning, and loads those
tensors strictly. A merged directory (a plain llava-hf checkpoint) loads as it is, from a folder
or a hub id (llava-hf/llava-1.5-7b-hf) resolved through the Hugging Face cache. Nothing is
inferred from folder names.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

from ..data.own_chat_template import own_template, recognise
from ..hub import CONFIG_FILES, looks_like_hub_id, snapshot
from ..names import OWN_TEMPLATE
from ..data.templates import IMAGE_TOKEN, TEMPLATES, get_template
from .builder import LlavaBundle, build_llava, make_processor, set_chat_template
from .partitioned import full_shape, whole
from .quantize import Quantization
from .recipe import RECIPE_FILE, TRAINABLE_FILE, CheckpointError, Recipe
from .tuning import apply_tuning


def canonical_name(name: str) -> str:
    """A parameter's name as if no adapter wrapped its layer: an adapter moves W of layer X from
    "X.weight" to "X.base_layer.weight", and a tensor trained in stage 1 must keep its key when
    stage 2 puts an adapter around its layer."""
    return name.replace(".base_layer.", ".")


def parameters_by_name(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's parameters keyed by canonical name."""
    return {canonical_name(name): parameter for name, parameter in model.named_parameters()}


def trained_tensor_names(model: torch.nn.Module, recipe: Recipe) -> list[str]:
    """What a checkpoint must store (canonical names): tensors trained now, those earlier stages
    changed, and every adapter tensor, trained or not: a frozen mixer keeps its random init,
    which loading could not draw again."""
    from ..adapters.inject import iter_adapter_layers

    adapter = {id(t) for _, layer in iter_adapter_layers(model) for t in layer.adapter_tensors().values()}
    names = [name for name, parameter in parameters_by_name(model).items()
             if parameter.requires_grad or id(parameter) in adapter]
    return sorted(set(names) | set(recipe.trained_tensors))


def save_checkpoint(bundle: LlavaBundle, out_dir: Union[str, Path],
                    state_dict: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write a stage checkpoint. `state_dict` (e.g. gathered from ZeRO-3 shards) overrides the
    model's own tensors; it must hold every tensor the checkpoint stores."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = trained_tensor_names(bundle.model, bundle.recipe)
    source = state_dict if state_dict is not None else parameters_by_name(bundle.model)
    missing = [name for name in names if name not in source]
    if missing:
        raise KeyError(f"cannot save {len(missing)} trained tensors that the state lacks: {missing[:5]}")
    tensors = {name: source[name].detach().to("cpu").contiguous() for name in names}
    save_file(tensors, str(out / TRAINABLE_FILE), metadata={"format": "pt"})
    replace(bundle.recipe, trained_tensors=names).save(out)
    set_chat_template(bundle.tokenizer, bundle.recipe.template)  # stage 2 may have changed it
    bundle.tokenizer.save_pretrained(out)
    make_processor(bundle.model.config, bundle.tokenizer, bundle.image_processor).save_pretrained(out)
    bundle.image_processor.save_pretrained(out)
    return out


ORIGINAL_LLAVA = ("llava_llama", "llava_mistral", "llava_mpt", "llava_qwen")  # LLaVA's own repository


def local_checkpoint(path: Union[str, Path], weights: bool = True) -> Path:
    """A checkpoint as a local folder: the folder itself, or a hub id's snapshot in the Hugging
    Face cache (downloaded when online; with HF_HUB_OFFLINE=1 it must be cached). weights=False
    fetches configs, tokenizer and processor files only (a dry run reads no weights)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if looks_like_hub_id(path):
        return snapshot(str(path), patterns=None if weights else CONFIG_FILES)
    raise FileNotFoundError(f"checkpoint directory not found: {path}")


def _check_not_original_llava(path: Path) -> None:
    """LLaVA's own repository saves LlavaLlamaForCausalLM with mm_projector weights, a layout
    transformers does not load: say how to convert it rather than failing on its keys."""
    config = path / "config.json"
    if not config.is_file():
        return
    settings = json.loads(config.read_text())
    if settings.get("model_type") in ORIGINAL_LLAVA or any(
            str(a).startswith("Llava") and str(a).endswith("ForCausalLM") for a in settings.get("architectures") or []):
        raise CheckpointError(
            f"{path} is in LLaVA's original layout ({settings.get('model_type')}, mm_projector weights), which "
            "transformers does not load. Convert it to llava-hf's with transformers' "
            "src/transformers/models/llava/convert_llava_weights_to_hf.py (in the transformers repository), or "
            "start from its llava-hf release (e.g. llava-hf/llava-1.5-7b-hf)")


def _is_merged(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "llava"


def is_merged_llava(reference: Union[str, Path]) -> bool:
    """Whether a checkpoint reference (folder or hub id) is a whole llava-hf model rather than a
    stage checkpoint: a start whose weights a later stage must be rebuilt from."""
    try:
        path = local_checkpoint(reference)
    except FileNotFoundError:
        return False
    return _is_merged(path) and not (path / TRAINABLE_FILE).is_file()


def merged_base(recipe: Recipe, weights: bool = True) -> Optional[Path]:
    """The whole LLaVA a stage was trained on, when its recipe names one as both bases."""
    if recipe.vision_tower != recipe.language_model:
        return None
    path = local_checkpoint(recipe.language_model, weights)  # one model as both bases: say why it cannot be found
    return path if _is_merged(path) else None


def load_checkpoint(path: Union[str, Path], *, dtype: torch.dtype = torch.float32,
                    vision_tower: Optional[str] = None, language_model: Optional[str] = None,
                    weights: bool = True, quantization="recorded", template: Optional[str] = None) -> LlavaBundle:
    """Load a stage checkpoint or a merged llava-hf directory (or hub id, see local_checkpoint).

    vision_tower / language_model override the base checkpoints the recipe names (say, after
    moving them to another cluster). weights=False builds the model on the meta device from the
    configs alone (see build_llava). quantization: "recorded" loads the language model as the
    checkpoint was trained (quantized after QLoRA), None in float, a quantize.Quantization so.
    template: the conversation template to prompt with instead of the recorded one; a llava-hf
    directory this project did not write keeps its own chat template (own_chat_template.py), and
    one without any needs it (ValueError otherwise).
    """
    path = local_checkpoint(path, weights)
    _check_not_original_llava(path)
    if (path / TRAINABLE_FILE).is_file():
        bundle = _load_stage_checkpoint(path, dtype, vision_tower, language_model, weights, quantization)
    elif _is_merged(path):
        bundle = _load_merged(path, dtype, weights)
    elif (path / RECIPE_FILE).is_file():  # a stage checkpoint that lost its tensors: say which file
        bundle = _load_stage_checkpoint(path, dtype, vision_tower, language_model, weights, quantization)
    else:
        bundle = None
    if bundle is not None:
        if template is not None:
            try:
                get_template(template)
            except ValueError as error:  # an unknown name: the message lists the known ones
                raise CheckpointError(str(error)) from None
            bundle = replace(bundle, recipe=replace(bundle.recipe, template=template))
            set_chat_template(bundle.tokenizer, template)
        elif bundle.recipe.template == OWN_TEMPLATE:
            _check_own_template(path, bundle.tokenizer)
        return bundle
    raise FileNotFoundError(
        f"{path} is neither a stage checkpoint ({RECIPE_FILE} + {TRAINABLE_FILE}) nor a merged LLaVA "
        "directory (config.json with model_type 'llava')")


def _load_stage_checkpoint(path: Path, dtype, vision_tower, language_model, weights: bool = True,
                           quantization="recorded") -> LlavaBundle:
    for required in (RECIPE_FILE, TRAINABLE_FILE):
        if not (path / required).is_file():
            raise FileNotFoundError(f"stage checkpoint {path} is missing {required}")
    recipe = Recipe.load(path)
    if quantization == "recorded":
        quantization = Quantization.from_dict(recipe.quantization)
    if quantization is not None and recipe.tune_language_model == "full":
        raise CheckpointError(f"{path} trained the language model's own weights (tune_language_model full), and a "
                         "quantized language model is built from the base's files: merge it first "
                         "(llava-moslora merge) and train from the merged model, or load it with --bits 16")
    recipe = replace(recipe, vision_tower=vision_tower or recipe.vision_tower,
                     language_model=language_model or recipe.language_model,
                     quantization=quantization.to_dict() if quantization is not None else None)
    base = merged_base(recipe, weights)
    if base is not None:  # trained on a whole LLaVA (llava-hf, or a merged stage): rebuilt from it
        if quantization is not None:
            raise CheckpointError(f"{path} was trained on the merged LLaVA {recipe.language_model}; loading it "
                                  "quantized is not supported: load it with --bits 16")
        bundle = _load_merged(base, dtype, weights)
    else:
        bundle = build_llava(recipe.vision_tower, recipe.language_model, projector_type=recipe.projector_type,
                             vision_feature_layer=recipe.vision_feature_layer,
                             vision_feature_select=recipe.vision_feature_select_strategy,
                             template=recipe.template, dtype=dtype, weights=weights, quantization=quantization,
                             trust_remote_code=recipe.trust_remote_code)
    saved_tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=recipe.trust_remote_code)
    if len(saved_tokenizer) != len(bundle.tokenizer):
        raise CheckpointError(f"{path}: the saved tokenizer has {len(saved_tokenizer)} tokens but the base language "
                         f"model {recipe.language_model} gives {len(bundle.tokenizer)}; is it the same base model?")
    set_chat_template(saved_tokenizer, recipe.template)  # checkpoints written before templates were saved
    bundle = LlavaBundle(bundle.model, saved_tokenizer, AutoImageProcessor.from_pretrained(path), recipe)
    apply_tuning(bundle.model, recipe)
    if weights:
        check_readable(path, [TRAINABLE_FILE])
        load_trained_tensors(bundle.model, path / TRAINABLE_FILE, recipe.trained_tensors)
    return bundle


COMPARED_RECIPE_FIELDS = ("tune_vision_tower", "tune_mm_projector", "tune_language_model", "projector_type",
                          "llm_adapter", "vision_adapter", "quantization")


def checkpoint_mismatch(path: Union[str, Path], model: torch.nn.Module, recipe: Recipe) -> list[str]:
    """What keeps the stage checkpoint at `path` from continuing this run: recipe settings that
    differ (adapter kind, rank, experts, tune modes) and trained tensors missing or shaped
    differently. Empty when it fits. Reads tensor shapes only, not the tensors."""
    path = Path(path)
    differences = []
    if (path / RECIPE_FILE).is_file():
        saved = Recipe.load(path)
        for name in COMPARED_RECIPE_FIELDS:
            old, new = getattr(saved, name), getattr(recipe, name)
            if isinstance(old, dict) and isinstance(new, dict):
                differences += [f"{name}.{key}: checkpoint {old.get(key)!r}, this run {new.get(key)!r}"
                                for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
            elif old != new:
                differences.append(f"{name}: checkpoint {old!r}, this run {new!r}")
    if not (path / TRAINABLE_FILE).is_file():
        return differences + [f"{TRAINABLE_FILE} is missing"]
    parameters = parameters_by_name(model)
    with safe_open(str(path / TRAINABLE_FILE), framework="pt") as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    for name, shape in shapes.items():
        if name not in parameters:
            differences.append(f"{name}: in the checkpoint, not in this model")
            continue
        parameter = parameters[name]
        expected = tuple(full_shape(parameter))
        if shape != expected:
            differences.append(f"{name}: checkpoint {shape}, this model {expected}")
    missing = [name for name, p in parameters.items() if p.requires_grad and name not in shapes]
    if missing:
        differences.append(f"{len(missing)} trained tensors of this run are not in the checkpoint, e.g. {missing[:3]}")
    return differences


def check_resumable(path: Union[str, Path], model: torch.nn.Module, recipe: Recipe) -> None:
    """ValueError listing what differs when the checkpoint at `path` cannot continue this run."""
    differences = checkpoint_mismatch(path, model, recipe)
    if differences:
        shown = "\n  ".join(differences[:12]) + (f"\n  ... and {len(differences) - 12} more" if len(differences) > 12 else "")
        raise CheckpointError(f"cannot resume from {path}: it was written by a different setup.\n  {shown}")


def unreadable_files(folder: Union[str, Path]) -> list[str]:
    """What in a checkpoint folder would not read back, "file: why" each: a safetensors file whose
    header or length is wrong (safe_open checks both), a torch file that is not a whole zip (its
    directory sits at the end, so a cut file loses it), JSON that does not parse, an empty file.
    Reads headers and directories only, never the tensors."""
    import zipfile

    found = []
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        name = file.relative_to(folder)
        try:
            if file.stat().st_size == 0:
                found.append(f"{name}: empty")
            elif file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as handle:
                    list(handle.keys())
            elif file.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(file):
                found.append(f"{name}: not a whole torch file (cut short?)")
            elif file.suffix == ".json":
                settings = json.loads(file.read_text())
                shards = set((settings.get("weight_map") or {}).values()) if isinstance(settings, dict) else set()
                found += [f"{name}: names {shard}, which is missing" for shard in sorted(shards)
                          if not (file.parent / shard).is_file()]
        except Exception as error:  # noqa: BLE001 - safetensors, OSError, JSON: each a reason to name
            found.append(f"{name}: {error}")
    return found


def check_readable(folder: Union[str, Path], files: Optional[Sequence[str]] = None) -> None:
    """CheckpointError naming every file of `folder` (or only `files`) that would not read back."""
    folder = Path(folder)
    bad = unreadable_files(folder)
    if files is not None:
        bad = [line for line in bad if line.split(":", 1)[0] in files]
    if bad:
        raise CheckpointError(f"{folder} is damaged (a copy or disk fault, or a save cut short): " + "; ".join(bad[:5]))


def newest_complete_checkpoint(directory: Union[str, Path], skipped: Optional[list] = None) -> Optional[Path]:
    """The Trainer's checkpoint-N in `directory` with the highest N whose trainer state (written
    last) reads back and whose files do (unreadable_files): one a kill cut short while saving, a
    damaged copy, or another tool left unfinished, is passed over, with its reason appended to
    `skipped` when given. None when there is none."""
    root = Path(directory)
    found = sorted(((int(p.name.split("-")[1]), p) for p in root.glob("checkpoint-*")
                    if p.name.split("-")[1].isdigit()), reverse=True) if root.is_dir() else []
    for _, path in found:
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        bad = unreadable_files(path)
        if bad:
            if skipped is not None:
                skipped.append((path, bad))
            continue
        return path
    return None


def load_trained_tensors(model: torch.nn.Module, file: Path, expected: Sequence[str] = ()) -> None:
    """Copy a trainable.safetensors file into the model (canonical names); every `expected`
    name must be in the file, and every tensor of the file must exist in the model."""
    tensors = load_file(str(file))
    parameters = parameters_by_name(model)
    missing = [name for name in expected if name not in tensors]
    unknown = [name for name in tensors if name not in parameters]
    if missing or unknown:
        raise CheckpointError(f"{file} does not match its recipe and model: missing {missing[:5]}, "
                       f"not in the model {unknown[:5]} (a different adapter kind, rank or base model?)")
    for name, tensor in tensors.items():
        target = parameters[name]
        if full_shape(target) != tensor.shape:
            raise CheckpointError(f"{file}: {name} has shape {tuple(tensor.shape)}, the model expects "
                                  f"{tuple(full_shape(target))} (a different rank, expert count or base model?)")
        with torch.no_grad(), whole([target], modify=True):  # every rank, in the file's order
            target.copy_(tensor.to(target.dtype))


def _load_merged(path: Path, dtype, weights: bool = True) -> LlavaBundle:
    check_readable(path)  # a half-written or damaged folder: named here, not deep in transformers
    if weights:
        with torch.random.fork_rng(devices=[]):  # as build_llava's loading: nothing drawn, whatever the ZeRO stage
            model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
    else:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration._from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    ours = (path / RECIPE_FILE).is_file()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if ours:
        recipe = Recipe.load(path)
        set_chat_template(tokenizer, recipe.template)
    else:  # a llava-hf directory of its own: prompted the way its chat template says
        tokenizer.chat_template = tokenizer.chat_template or _processor_chat_template(path)
        recipe = Recipe(vision_tower=str(path), language_model=str(path), num_image_tokens=model.config.image_seq_length,
                        template=recognise(tokenizer) or OWN_TEMPLATE)
    return LlavaBundle(model, tokenizer, AutoImageProcessor.from_pretrained(path), recipe)


def _processor_chat_template(path: Path) -> Optional[str]:
    """A chat template kept beside the processor (chat_template.json, processor_config.json), as
    llava-hf's own repositories keep it, rather than in the tokenizer's files."""
    for name in ("chat_template.json", "processor_config.json"):
        try:
            found = json.loads((path / name).read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if found:
            return found
    return None


def _check_own_template(path: Path, tokenizer) -> None:
    """A directory prompted with its own chat template must have one that renders a conversation."""
    if not tokenizer.chat_template:
        raise CheckpointError(f"{path} is a llava-hf directory without a chat template (none in its tokenizer or "
                         f"processor files), so how to prompt it is unknown: pass --template "
                         f"({', '.join(name for name in TEMPLATES if name != 'plain')})")
    try:
        own_template(tokenizer).render([(f"{IMAGE_TOKEN}\nHi", "Hello."), ("Bye", None)])
    except Exception as error:  # noqa: BLE001 - whatever the Jinja raises, say what to do
        raise CheckpointError(f"{path}: its chat template cannot render a conversation ({error}); pass --template "
                         f"({', '.join(name for name in TEMPLATES if name != 'plain')})") from None
