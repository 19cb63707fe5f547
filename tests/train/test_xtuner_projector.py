"""Stage 2 from XTuner's stage-1 projector, as its hub repos and its training ship it (the MoSLoRA
paper's starting point): a plain `epoch_1.pth` (xtuner/llava-internlm2-7b-pretrain), an mmengine
checkpoint with a `state_dict`, the `projector/` folder of `xtuner convert pth_to_hf` (config.json
of model_type "projector", model.safetensors keyed model.0 / model.2), DeepSpeed's folder of an
`iter_N.pth`. Pickles are read as tensors only."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import run_script
from llava_moslora.model import build_llava
from llava_moslora.train.projector import load_projector


@pytest.fixture(scope="module")
def xtuner_tensors(tiny_bases):
    """A projector in XTuner's names (ProjectorModel: model = Sequential(Linear, GELU, Linear))."""
    projector = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"]).model.model.multi_modal_projector
    generator = torch.Generator().manual_seed(7)
    return {f"model.{index}.{kind}": torch.randn(getattr(layer, kind).shape, generator=generator)
            for index, layer in ((0, projector.linear_1), (2, projector.linear_2)) for kind in ("weight", "bias")}


def write_form(form, tensors, root):
    root.mkdir(parents=True)
    prefixed = {f"projector.{key}": value for key, value in tensors.items()}
    if form == "epoch_pth":
        torch.save(prefixed, root / "epoch_1.pth")
        return root / "epoch_1.pth"
    if form == "mmengine_pth":
        torch.save({"meta": {"epoch": 1, "iter": 2181}, "state_dict": prefixed}, root / "iter_2181.pth")
        return root / "iter_2181.pth"
    if form == "projector_folder":  # the hub repo's root holds projector/
        (root / "projector").mkdir()
        (root / "projector" / "config.json").write_text(json.dumps(
            {"model_type": "projector", "architectures": ["ProjectorModel"], "depth": 2, "hidden_act": "gelu", "bias": True}))
        save_file(tensors, str(root / "projector" / "model.safetensors"))
        return root
    if form == "deepspeed_folder":
        (root / "iter_2181.pth").mkdir()
        torch.save({"module": prefixed, "global_steps": 2181, "dp_world_size": 8}, root / "iter_2181.pth" / "mp_rank_00_model_states.pt")
        return root / "iter_2181.pth"
    raise ValueError(form)


def as_ours(tensors):
    names = {"0": "linear_1", "2": "linear_2"}
    return {f"model.multi_modal_projector.{names[key.split('.')[1]]}.{key.split('.')[2]}": value
            for key, value in tensors.items()}


@pytest.mark.parametrize("form", ["epoch_pth", "mmengine_pth", "projector_folder", "deepspeed_folder"])
def test_each_xtuner_form_loads_into_our_projector(form, xtuner_tensors, tiny_bases, tmp_path):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    names = load_projector(bundle.model, write_form(form, xtuner_tensors, tmp_path / form))
    parameters = dict(bundle.model.named_parameters())
    assert names == sorted(as_ours(xtuner_tensors))
    for name, tensor in as_ours(xtuner_tensors).items():
        assert torch.equal(parameters[name].detach(), tensor)


class ConfigDict(dict):
    """Stands for mmengine's ConfigDict in a checkpoint's meta: a class weights_only will not build."""


def test_an_xtuner_checkpoint_with_objects_is_refused_with_the_conversion_to_run(xtuner_tensors, tiny_bases, tmp_path):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    torch.save({"meta": ConfigDict(cfg="..."), "state_dict": xtuner_tensors}, tmp_path / "iter_2181.pth")
    with pytest.raises(ValueError, match="xtuner convert pth_to_hf CONFIG PTH OUT"):
        load_projector(bundle.model, tmp_path / "iter_2181.pth")


@pytest.mark.slow
def test_stage2_starts_from_xtuners_released_projector(xtuner_tensors, tiny_bases, shapes_data, tmp_path):
    """finetune.sh with STAGE1_DIR pointing at the hub repo's epoch_1.pth, MODEL and VISION_TOWER
    given: the projector starts as XTuner's (unchanged at projector rate 0) and the recipe counts it
    among the trained tensors."""
    start = write_form("epoch_pth", xtuner_tensors, tmp_path / "llava-internlm2-7b-pretrain")
    out = tmp_path / "stage2"
    run_script("finetune.sh", {"NUM_GPUS": "1", "STAGE1_DIR": str(start), "MODEL": tiny_bases["language_model"],
                               "VISION_TOWER": tiny_bases["vision_tower"], "DATA_PATH": str(shapes_data / "instructions.jsonl"),
                               "IMAGE_FOLDER": str(shapes_data / "images"), "OUTPUT_DIR": str(out), "GLOBAL_BATCH": "4",
                               "PER_DEVICE_BATCH": "4", "LORA_R": "4", "LORA_ALPHA": "8", "MM_PROJECTOR_LR": "0"},
               "--max_steps", "1", "--dataloader_num_workers", "0", "--save_strategy", "no")
    stored = load_file(str(out / "trainable.safetensors"))
    for name, tensor in as_ours(xtuner_tensors).items():
        assert torch.equal(stored[name], tensor), name
