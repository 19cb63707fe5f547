"""Loading a stage-1 projector from a file: LLaVA's mm_projector.bin, XTuner's (its stage-1
`iter_N.pth` / `epoch_1.pth`, or the `projector/` folder `xtuner convert pth_to_hf` writes and its
hub repos ship), or a .safetensors file. Pickled files are read with torch.load(weights_only=True):
tensors only, never code."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

# LLaVA names the mlp2x_gelu projector an nn.Sequential(Linear, GELU, Linear): indices 0 and 2.
LLAVA_KEY = re.compile(r"(?:.*\.)?mm_projector\.(\d+)\.(weight|bias)$")
OUR_KEY = re.compile(r"(?:.*\.)?multi_modal_projector\.(linear_[12])\.(weight|bias)$")
# XTuner's ProjectorModel: `model` = nn.Sequential(Linear, GELU, Linear); `projector.` in its
# training checkpoints, bare in the projector/ folder's model.safetensors.
XTUNER_KEY = re.compile(r"^(?:projector\.)?model\.(\d+)\.(weight|bias)$")


def projector_file(path) -> Path | None:
    """The weights file of a projector given as a folder in XTuner's format (`projector/`, with
    config.json of model_type "projector", or a folder holding one; or the folder DeepSpeed makes
    of an `iter_N.pth` when XTuner trains with --deepspeed), else None."""
    path = Path(path)
    if (path / "mp_rank_00_model_states.pt").is_file():
        return path / "mp_rank_00_model_states.pt"
    for folder in (path, path / "projector"):
        config = folder / "config.json"
        if config.is_file() and '"projector"' in config.read_text() and (folder / "model.safetensors").is_file():
            return folder / "model.safetensors"
    return None


def read_tensors(path: Path) -> dict:
    """A projector file's tensors (a training checkpoint's `state_dict` entry when it has one)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} holds pickled objects other than tensors, which are not loaded (they could run "
                         f"code): {str(error).splitlines()[0]}. Convert it first, e.g. XTuner's "
                         "`xtuner convert pth_to_hf CONFIG PTH OUT`, and pass OUT/projector") from None
    for entry in ("state_dict", "module"):  # an mmengine / XTuner checkpoint; DeepSpeed's model states
        if isinstance(state, dict) and isinstance(state.get(entry), dict):
            state = state[entry]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def load_projector(model, path) -> list[str]:
    """Copy projector weights from `path` into model.model.multi_modal_projector; return the
    parameter names set (model.named_parameters() names)."""
    path = projector_file(path) or Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector file or stage-1 checkpoint not found: {path}")
    state = read_tensors(path)
    mapped = {}
    for key, tensor in state.items():
        if match := LLAVA_KEY.match(key) or XTUNER_KEY.match(key):
            layer = {"0": "linear_1", "2": "linear_2"}.get(match.group(1))
            if layer is None:
                raise ValueError(f"{path}: {key} is not a layer of an mlp2x_gelu projector")
            mapped[f"model.multi_modal_projector.{layer}.{match.group(2)}"] = tensor
        elif match := OUR_KEY.match(key):
            mapped[f"model.multi_modal_projector.{match.group(1)}.{match.group(2)}"] = tensor
    parameters = {n: p for n, p in model.named_parameters() if n.startswith("model.multi_modal_projector.")}
    missing = sorted(set(parameters) - set(mapped))
    if missing:
        raise KeyError(f"{path} lacks projector tensors {missing} (found keys: {sorted(state)[:6]})")
    with torch.no_grad():
        for name, tensor in mapped.items():
            if parameters[name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model's projector "
                                 f"expects {tuple(parameters[name].shape)} (another vision tower or LLM?)")
            parameters[name].copy_(tensor.to(parameters[name].dtype))
    return sorted(mapped)
