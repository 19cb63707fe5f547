"""Helpers shared by the tests (imported as `helpers`; pyproject puts tests/ on the path).

Fixtures live in conftest.py files; everything a test imports by name lives here, since several
conftest.py modules would shadow each other under one module name.
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class TwoLayer(nn.Module):
    """A tiny model with named linear layers, shaped like an attention/MLP block."""

    def __init__(self, d_in=24, d_hidden=40, d_out=16, bias=True):
        super().__init__()
        self.q_proj = nn.Linear(d_in, d_hidden, bias=bias)
        self.act = nn.GELU()
        self.o_proj = nn.Linear(d_hidden, d_out, bias=bias)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x):
        return self.norm(self.o_proj(self.act(self.q_proj(x))))


def randomize_adapters(model, scale=0.1):
    """Give every adapter tensor (B included, which starts at zero) random values."""
    from llava_moslora.adapters import iter_adapter_layers
    with torch.no_grad():
        for _, layer in iter_adapter_layers(model):
            for tensor in layer.adapter_tensors().values():
                tensor.normal_(0, scale)


def assert_close_rel(actual, expected, tol, what=""):
    """Relative error in Frobenius norm: fp32 solves of r x r grams lose digits elementwise."""
    rel = ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()
    assert rel < tol, f"{what}: relative error {rel:.2e} >= {tol:.0e}"


CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: What color is the circle? The circle is red. What shape is left of the square?",
    "How many shapes are there? There are 3 shapes. A red circle and a blue square on a white canvas.",
    "You are a helpful assistant. Describe the image. Answer with the option's letter from the given choices directly.",
]


def save_bases(root, style="llama", architecture="llama"):
    """A tiny CLIP tower and a tiny causal LM with a trained tokenizer, saved under root."""
    from llava_moslora.demo.tiny import save_tiny_clip, save_tiny_lm, train_tokenizer
    tokenizer = train_tokenizer(CORPUS * 4, style=style, vocab_size=400)
    lm = save_tiny_lm(root / f"{architecture}-{style}", tokenizer, architecture=architecture)
    tower = root / "clip"
    if not tower.exists():
        save_tiny_clip(tower, image_size=32, patch_size=8)
    return {"vision_tower": str(tower), "language_model": str(lm)}


def save_tiny_checkpoint(bases, out, seed=0, r=4, scale=0.05):
    """A stage-2 checkpoint: MoSLoRA (rank r, random non-zero adapters of size `scale` drawn from
    `seed`) on the tiny bases."""
    import torch

    from llava_moslora.adapters import AdapterConfig
    from llava_moslora.model import Recipe, apply_tuning, build_llava, save_checkpoint

    bundle = build_llava(bases["vision_tower"], bases["language_model"])
    bundle.recipe = Recipe(**{**bundle.recipe.to_dict(), "stage": 2, "tune_language_model": "adapter",
                              "llm_adapter": AdapterConfig(kind="moslora", r=r).to_dict()})
    apply_tuning(bundle.model, bundle.recipe)
    torch.manual_seed(seed)
    randomize_adapters(bundle.model, scale=scale)
    save_checkpoint(bundle, out)
    return out


def script_env(env_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "NUM_GPUS": "2", "PYTHONUNBUFFERED": "1", **env_vars})
    return env


def run_script(script, env_vars, *extra, timeout=900, succeed=True):
    """Run scripts/<script> as a user would, with 2 processes unless told otherwise; with
    succeed=False, return the failed run's result instead of asserting success."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / script), *extra], env=script_env(env_vars), cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    if succeed:
        assert result.returncode == 0, f"{script} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def losses(output_dir):
    """The per-step training losses a run logged."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def write_faulty_dataset(root, good=24):
    """A LLaVA JSONL dataset with `good` valid samples and one sample of each fault validate-data
    knows (tiny bases, model_max_length 256). Returns (data file, image folder, {id: kind})."""
    from PIL import Image

    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    colors = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    for name, rgb in colors.items():
        Image.new("RGB", (28, 24), rgb).save(images / f"{name}.png")
    (images / "broken.png").write_bytes(b"this is not an image")
    whole = (images / "red.png").read_bytes()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(images / "cut.png")
    cut = (images / "cut.png").read_bytes()
    (images / "cut.png").write_bytes(cut[:len(cut) // 2])  # a PNG header whose data stops half-way
    assert whole  # the good images stay whole

    def qa(sample_id, image, question="What color is the image?\n<image>", answer=None, **extra):
        record = {"id": sample_id, "conversations": [{"from": "human", "value": question},
                                                     {"from": "gpt", "value": answer or f"It is {image.split('.')[0]}."}]}
        return {**record, "image": image, **extra} if image else record

    lines = [json.dumps(qa(f"good-{i}", f"{list(colors)[i % 4]}.png")) for i in range(good)]
    faults = {
        "missing-image": qa("missing-image", "nowhere.png"),
        "unreadable-image": qa("unreadable-image", "broken.png"),
        "truncated-image": qa("truncated-image", "cut.png"),
        "image-mismatch": qa("image-mismatch", "red.png", question="What color is it?"),
        "unknown-role": {"id": "unknown-role", "conversations": [{"from": "robot", "value": "hi"},
                                                                 {"from": "gpt", "value": "hello"}]},
        "empty-conversation": {"id": "empty-conversation", "conversations": []},
        "non-alternating": {"id": "non-alternating", "conversations": [{"from": "human", "value": "a"},
                                                                       {"from": "human", "value": "b"}]},
        "fully-masked": qa("fully-masked", "red.png", question="<image>\n" + "describe " * 400),
        "image-too-long": {**qa("image-too-long", "red.png"),
                           "conversations": [{"from": "system", "value": "rules " * 400},
                                             *qa("x", "red.png")["conversations"]]},
        "truncated-reply": {"id": "truncated-reply", "image": "blue.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the image?"}, {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "Say more."}, {"from": "gpt", "value": "blue " * 400}]},
    }
    kinds = {"missing-image": "missing_image", "unreadable-image": "unreadable_image",
             "truncated-image": "unreadable_image", "image-mismatch": "image_token_mismatch",
             "unknown-role": "unknown_role", "empty-conversation": "empty_conversation",
             "non-alternating": "non_alternating", "fully-masked": "fully_masked", "image-too-long": "too_long",
             "truncated-reply": "truncated", "good-0": "duplicate_id", None: "malformed_line"}
    lines[3:3] = [json.dumps(record) for record in faults.values()]
    lines.insert(8, '{"id": "broken-json", "conversations": [')
    lines.append(json.dumps(qa("good-0", "green.png", answer="A repeat.")))
    data = root / "faulty.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return data, images, kinds


# constant LR and no dropout: a resumed run must repeat the uninterrupted run's losses
STEADY = ["--lr_scheduler_type", "constant", "--dataloader_num_workers", "0", "--warmup_steps", "0",
          "--model_max_length", "256", "--logging_steps", "1"]
FAST = ["--save_steps", "10", "--dataloader_num_workers", "0", "--warmup_steps", "0", "--model_max_length", "256"]


def stage2_env(shapes_data, stage1, out, **extra):
    return {"STAGE1_DIR": str(stage1), "DATA_PATH": str(shapes_data / "instructions.jsonl"),
            "IMAGE_FOLDER": str(shapes_data / "images"), "OUTPUT_DIR": str(out), "GLOBAL_BATCH": "8",
            "PER_DEVICE_BATCH": "4", "LORA_R": "8", "LORA_ALPHA": "16", "LORA_DROPOUT": "0", "LR": "1e-2",
            "MM_PROJECTOR_LR": "1e-3", **extra}


def signal_tree(pid, signum):
    """Send `signum` to a process and all its descendants, as SLURM's scancel, Kubernetes and
    `timeout` deliver it to every process of a job (torchrun starts each rank in a session of its
    own, so a process-group signal from the launcher's group would not reach the ranks)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(queue.pop())
        queue += children.get(tree[-1], [])
    for member in tree:
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass
    return tree


def kill_tree(pid):
    """SIGKILL a process and all its descendants."""
    signal_tree(pid, signal.SIGKILL)


def write_sources(root, sizes):
    """Data files named as in `sizes` (name -> samples; .jsonl names as JSONL), one red image;
    sample ids are "<file stem>-<i>"."""
    from PIL import Image

    root = Path(root)
    Image.new("RGB", (24, 24), (220, 20, 20)).save(root / "red.png")
    for name, size in sizes.items():
        stem = name.split(".")[0]
        records = [{"id": f"{stem}-{i}", "image": "red.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": f"Red ({stem})."}]}
            for i in range(size)]
        (root / name).write_text("\n".join(json.dumps(r) for r in records) if name.endswith(".jsonl")
                                 else json.dumps(records))
    return root


# The quickstart at a tenth of a minute: what tests/test_readme.py runs before the README's other commands.
SHORT_QUICKSTART = {"NUM_PRETRAIN": "48", "NUM_INSTRUCT": "48", "NUM_TEST": "8", "STAGE1_EPOCHS": "1",
                    "STAGE2_EPOCHS": "1"}


def readme_env(work):
    """The environment of a user in the checkout `work` who has run `source .venv/bin/activate`,
    with the quickstart shortened."""
    env = script_env({**SHORT_QUICKSTART, "PATH": f"{work / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
                      "VIRTUAL_ENV": str(work / ".venv")})
    env.pop("NUM_GPUS")  # the quickstart picks its own; a README command sets what it needs
    return env


def free_port():
    """A localhost port nothing listens on (for a rendezvous or a server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(process, url, seconds=180) -> Optional[str]:
    """Poll `url` until the server `process` (stdout piped) answers: None then, else what went
    wrong (it stopped, with its output's end, or it did not come up in time)."""
    deadline = time.time() + seconds
    while True:
        if process.poll() is not None:
            return "the server stopped: " + process.communicate()[0][-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            return None
        except OSError:
            if time.time() > deadline:
                return f"the server did not come up in {seconds} s"
            time.sleep(0.5)
