"""`llava-moslora pretrain-bases`: the tiny pretrained bases the quickstart starts from.

LLaVA aligns a pretrained CLIP with a pretrained LLM. At toy scale this command makes both, on
ShapesVQA's domain (demo/base_corpus.py), as ordinary `save_pretrained` directories:

- `vision/`: a CLIP vision tower whose patch features (the layer LLaVA reads, -2 by default)
  are trained to name the object in their grid cell (shape, colour, size), the cell itself and
  the number of shapes, and whose pooled output is trained to list the scene's (colour, shape)
  pairs and their number. The heads are dropped afterwards, as CLIP's projection is.
- `llm/`: a Llama with a BPE tokenizer in Llama's style (newlines apart, plus one added token
  per object word), trained on conversations in the chat template where the scene is given in
  words where the image would be; the loss is on the replies, as in instruction tuning. The
  stream is a curriculum (base_corpus.MIXES): first many one-object lookups per conversation,
  answered in words (which binds each named object to its cell); then the two steps of a lettered
  answer on their own (read the scene; find the letter of an answer already given); then both at
  once, with the lookups kept beside them.

Both are trained with transformers' Trainer on one process (a GPU when there is one), with
checkpoints in OUT/.work so that an interrupted run continues when started again. The command
also writes `pretraining.json`: the settings, loss curves and what each base learned, measured
on fresh scenes (probe accuracies of the tower, text-only MCQ accuracy of the LLM).
"""
from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.collator import LlavaCollator
from ..data.templates import TEMPLATES, get_template
from ..model.checkpoint import newest_complete_checkpoint
from . import base_corpus as corpus
from .base_probes import text_lookup_accuracy, text_mcq_accuracy
from .scenes import COLORS, SHAPES
from .tiny import save_tiny_clip, save_tiny_lm, train_tokenizer


def _setting(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class BasesConfig:
    """Sizes and schedules; the defaults made the shipped bases (bases/shapes-tiny)."""

    seed: int = _setting(0, "seed of the scene streams, the initialisation and the training order")
    image_size: int = _setting(64, "image side in pixels (ShapesVQA draws 64)")
    patch_size: int = _setting(32, "tower patch side; 32 on 64-pixel images gives one token per cell of the 2 x 2 grid")
    vision_hidden: int = _setting(128, "vision tower width")
    vision_layers: int = _setting(3, "vision tower layers")
    vision_images: int = _setting(20000, "scenes rendered for the tower")
    vision_steps: int = _setting(1500, "tower optimizer steps")
    vision_batch: int = _setting(128, "tower batch size")
    vision_lr: float = _setting(2e-3, "tower peak learning rate (warmup, cosine)")
    hidden_size: int = _setting(128, "language model width")
    num_layers: int = _setting(8, "language model decoder layers")
    intermediate_size: int = _setting(256, "language model MLP width")
    vocab_size: int = _setting(512, "tokenizer vocabulary (upper bound)")
    lm_steps: int = _setting(10000, "language model optimizer steps, each on lm_batch new conversations")
    lm_drill_steps: int = _setting(3000, "the first steps, on the 'drill' mix (base_corpus.MIXES): many one-object "
                                      "lookups per conversation, answered in words")
    lm_lookup_steps: int = _setting(1000, "the next steps, on the 'lookup' mix (base_corpus.MIXES): reading the "
                                          "scene and finding an answer's letter, each on its own")
    lm_last_mix: str = _setting("full_drill", "the mix of the remaining steps: full (multiple choice mostly) or full_drill "
                                        "(the same with the lookup drill kept beside it)")
    compose_object_words: bool = _setting(True, "start each object word's embedding from its words' ('top right small "
                                                 "red circle'), so the object words share their cells' and attributes' "
                                                 "directions with each other and with the questions' words")
    lm_batch: int = _setting(64, "language model batch size")
    lm_length_window: int = _setting(8, "batches of consecutive conversations sorted by length and cut into batches "
                                        "of similar lengths (in a seeded order), so a step pads little; 1 keeps "
                                        "each batch as drawn")
    lm_lr: float = _setting(1e-3, "language model peak learning rate (warmup, cosine)")
    eval_samples: int = _setting(1000, "fresh scenes / questions each base is measured on afterwards")


# --- vision tower ---------------------------------------------------------------------------

class AttributeHeads(nn.Module):
    """A CLIP tower with linear heads for pretraining: per patch token (at `feature_layer`) the
    object of its cell, the cell and the shape count; on the pooled output the scene's pairs."""

    def __init__(self, tower, feature_layer: int = -2) -> None:
        super().__init__()
        self.tower, self.feature_layer = tower, feature_layer
        hidden, grid = tower.config.hidden_size, tower.config.image_size // tower.config.patch_size
        self.heads = nn.ModuleDict({
            "shape": nn.Linear(hidden, len(corpus.SHAPE_CLASSES)), "color": nn.Linear(hidden, len(corpus.COLOR_CLASSES)),
            "size": nn.Linear(hidden, len(corpus.SIZE_CLASSES)), "cell": nn.Linear(hidden, len(corpus.CELLS)),
            "count": nn.Linear(hidden, 4)})
        self.pairs = nn.Linear(hidden, len(SHAPES) * len(COLORS) + 4)
        # patch (row-major over grid x grid) -> its cell of the 2 x 2 scene grid
        cells = [(r * 2 // grid) * 2 + (c * 2 // grid) for r in range(grid) for c in range(grid)]
        self.register_buffer("patch_cell", torch.tensor(cells), persistent=False)

    def targets(self, cells: torch.Tensor, count: torch.Tensor) -> dict[str, torch.Tensor]:
        per_patch = cells[:, self.patch_cell]  # (B, patches, 3)
        batch, patches = per_patch.shape[:2]
        return {"shape": per_patch[..., 0], "color": per_patch[..., 1], "size": per_patch[..., 2],
                "cell": self.patch_cell.expand(batch, patches), "count": (count - 1)[:, None].expand(batch, patches)}

    def forward(self, pixel_values, cells, count):
        out = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        features = out.hidden_states[self.feature_layer][:, 1:]  # patches, without CLS (LLaVA's "default")
        logits = {name: head(features) for name, head in self.heads.items()}
        wanted = self.targets(cells, count)
        loss = sum(F.cross_entropy(logits[k].flatten(0, 1), wanted[k].flatten()) for k in logits)
        pairs = len(SHAPES) * len(COLORS)  # (shape, colour) pair of each cell; empty cells -> column `pairs`
        pair = torch.where(cells[..., 0] > 0, (cells[..., 0] - 1) * len(COLORS) + cells[..., 1] - 1, pairs)
        present = F.one_hot(pair, pairs + 1).amax(dim=1)[:, :pairs].float()
        pooled = self.pairs(out.pooler_output)
        loss = (loss + F.binary_cross_entropy_with_logits(pooled[:, :-4], present)
                + F.cross_entropy(pooled[:, -4:], count - 1))
        return {"loss": loss, "logits": logits}

    @torch.no_grad()
    def accuracy(self, batch: dict) -> dict[str, float]:
        logits = self(**batch)["logits"]
        wanted = self.targets(batch["cells"], batch["count"])
        result = {k: (logits[k].argmax(-1) == wanted[k]).float().mean().item() for k in logits}
        occupied = wanted["shape"] > 0  # shape and colour of actual objects, not "empty"
        for k in ("shape", "color"):
            result[f"{k}_of_objects"] = (logits[k].argmax(-1) == wanted[k])[occupied].float().mean().item()
        return result


class SceneImages(torch.utils.data.Dataset):
    """Rendered scenes as uint8 arrays with their cell targets, normalised batch-wise."""

    def __init__(self, samples, count: int, image_size: int, image_processor, progress: bool = True) -> None:
        from tqdm import tqdm

        self.images = np.zeros((count, image_size, image_size, 3), np.uint8)
        self.cells = np.zeros((count, len(corpus.CELLS), 3), np.int64)
        self.count = np.zeros(count, np.int64)
        for i, (scene, image) in enumerate(tqdm(samples, total=count, desc="scenes for the vision tower",
                                                unit="image", disable=not progress)):
            self.images[i] = np.asarray(image)
            cells, self.count[i] = corpus.cell_targets(scene)
            self.cells[i] = cells
        self.scale = image_processor.rescale_factor
        self.mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.count)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """pixel_values as the tower's image processor makes them (images are already square
        and at its size, so only rescaling and normalisation apply; a test checks equality)."""
        images = torch.from_numpy(self.images[indices]).permute(0, 3, 1, 2).float()
        return {"pixel_values": (images * self.scale - self.mean) / self.std,
                "cells": torch.from_numpy(self.cells[indices]), "count": torch.from_numpy(self.count[indices])}


def pretrain_vision(config: BasesConfig, out: Path, work: Path, progress: bool = True) -> dict:
    from transformers import AutoImageProcessor, CLIPVisionModel

    save_tiny_clip(out, image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.vision_hidden,
                   num_layers=config.vision_layers, num_heads=max(1, config.vision_hidden // 32),
                   intermediate_size=config.vision_hidden * 2, seed=config.seed)
    processor = AutoImageProcessor.from_pretrained(out)
    model = AttributeHeads(CLIPVisionModel.from_pretrained(out))
    data = SceneImages(corpus.vision_samples(config.seed, config.vision_images, config.image_size),
                       config.vision_images, config.image_size, processor, progress)
    history = _train(model, data, data.collate, work / "vision", steps=config.vision_steps,
                     batch=config.vision_batch, lr=config.vision_lr, seed=config.seed, progress=progress)
    model.tower.save_pretrained(out)
    held = SceneImages(corpus.vision_samples(config.seed, config.eval_samples, config.image_size, "vision-eval"),
                       config.eval_samples, config.image_size, processor, progress=False)
    model.eval()
    accuracy = model.accuracy(_to(held.collate(list(range(len(held)))), model))
    return {"loss": history, "probe_accuracy": {k: round(v, 4) for k, v in accuracy.items()}}


# --- language model -------------------------------------------------------------------------

class Conversations(torch.utils.data.Dataset):
    """The language model's stream (base_corpus.text_samples), encoded on demand with the loss
    on the replies: sample i is the same whenever it is asked for, so the order is the curriculum
    (read sequentially) and a resumed run sees what the interrupted one would have.

    Within each window of `window` batches the conversations are sorted by length and cut into
    batches, which are then put in a seeded order: a step pads to its own conversations' length,
    not to the longest of 64 drawn at random (a padded step costs about its length), and the
    curriculum moves on window by window."""

    def __init__(self, seed: int, count: int, lookup_count: int, tokenizer, drill_count: int = 0,
                 last: str = "full", batch: int = 1, window: int = 1) -> None:
        from ..data.tokenize import encode_conversation

        self.seed, self.count, self.tokenizer = seed, count, tokenizer
        self.phases = dict(lookup_count=lookup_count, drill_count=drill_count, last=last)
        self.template, self.encode = get_template(corpus.TEMPLATE), encode_conversation
        self.batch, self.per_window = batch, batch * window  # conversations per window
        self._held: tuple[int, list[dict[str, torch.Tensor]]] = (-1, [])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        window, at = divmod(i, self.per_window)
        if self._held[0] != window:
            self._held = (window, self._grouped(window))
        return self._held[1][at]

    def _encoded(self, i: int) -> dict[str, torch.Tensor]:
        _, turns = corpus.text_sample(self.seed, i, corpus.mix_at(i, **self.phases))
        encoded = self.encode(self.template, self.tokenizer, turns)
        return {"input_ids": torch.tensor(encoded.input_ids), "labels": torch.tensor(encoded.labels)}

    def _grouped(self, window: int) -> list[dict[str, torch.Tensor]]:
        items = [self._encoded(i) for i in range(window * self.per_window, min((window + 1) * self.per_window, self.count))]
        if self.per_window == self.batch:
            return items
        items.sort(key=lambda item: len(item["input_ids"]))
        batches = [items[start:start + self.batch] for start in range(0, len(items), self.batch)]
        corpus.base_rng(self.seed, f"text-order/{window}").shuffle(batches)
        return [item for batch in batches for item in batch]


def tokenizer_texts(seed: int, count: int) -> list[str]:
    """Rendered conversations for training the tokenizer, plus the template strings (repeated
    so that BPE merges them into a few tokens instead of spelling them out)."""
    template = get_template(corpus.TEMPLATE)
    rng = corpus.base_rng(seed, "tokenizer")
    texts = ["".join(text for text, _ in template.render(corpus.text_conversation(scene, rng)))
             for scene in itertools.islice(corpus.base_scenes(rng), count)]
    return texts + [t.default_system for t in TEMPLATES.values() if t.default_system] * 200


def pretrain_lm(config: BasesConfig, out: Path, work: Path, progress: bool = True) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = train_tokenizer(tokenizer_texts(config.seed, 5000),
                                style="llama", vocab_size=config.vocab_size)
    tokenizer.add_tokens(list(corpus.OBJECT_WORDS))
    save_tiny_lm(out, tokenizer, hidden_size=config.hidden_size, num_layers=config.num_layers,
                 num_heads=max(1, config.hidden_size // 32), intermediate_size=config.intermediate_size,
                 seed=config.seed)
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    if config.compose_object_words:
        compose_object_words(model, tokenizer)
    data = Conversations(config.seed, config.lm_steps * config.lm_batch, config.lm_lookup_steps * config.lm_batch,
                         tokenizer, config.lm_drill_steps * config.lm_batch, config.lm_last_mix,
                         batch=config.lm_batch, window=config.lm_length_window)
    history = _train(model, data, LlavaCollator(tokenizer.unk_token_id), work / "llm",
                     steps=config.lm_steps, batch=config.lm_batch, lr=config.lm_lr, seed=config.seed,
                     progress=progress, clip=1.0, in_order=True)
    model.save_pretrained(out)
    accuracy = text_mcq_accuracy(model, tokenizer, corpus.base_rng(config.seed, "text-eval"), config.eval_samples)
    lookups = text_lookup_accuracy(model, tokenizer, corpus.base_rng(config.seed, "lookup-eval"),
                                   min(config.eval_samples, 300))
    return {"loss": history, "text_mcq_accuracy": accuracy, "text_lookup_accuracy": lookups, "vocab_size": len(tokenizer)}


@torch.no_grad()
def compose_object_words(model, tokenizer) -> None:
    """Each object word's embedding as the sum of its words' ("top right small red circle"), scaled
    by 1/sqrt(count) to keep one token's norm."""
    table = model.get_input_embeddings().weight
    for word in corpus.OBJECT_WORDS:
        parts = tokenizer(word.strip("[]").replace(":", ""), add_special_tokens=False).input_ids
        table[tokenizer.convert_tokens_to_ids(word)] = table[parts].sum(0) / len(parts) ** 0.5


# --- shared -----------------------------------------------------------------------------------

def _to(batch: dict, model: nn.Module) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _train(model, dataset, collate, work: Path, *, steps: int, batch: int, lr: float, seed: int,
           progress: bool, clip: float = 1.0, in_order: bool = False) -> list[float]:
    """Trainer on one process (AdamW, warmup + cosine); returns the logged training losses.
    Checkpoints go to `work` every twentieth of the run, and a run finds its last one there and
    resumes from it. `in_order`: the dataset's order is the curriculum (no shuffling)."""
    from transformers import Trainer, TrainingArguments

    every = max(1, steps // 20)
    args = TrainingArguments(
        output_dir=str(work), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        weight_decay=0.01, adam_beta2=0.98, warmup_steps=0.05, lr_scheduler_type="cosine", max_grad_norm=clip,
        logging_steps=every, save_strategy="steps", save_steps=every, save_total_limit=1, save_only_model=False,
        report_to="none", seed=seed, data_seed=seed, dataloader_num_workers=0, remove_unused_columns=False,
        train_sampling_strategy="sequential" if in_order else "random", disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    last = newest_complete_checkpoint(work)
    if last and progress:
        print(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    return [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]


def _work_dir(work: Path, config: BasesConfig) -> Path:
    """The work directory of a run with `config`: made, or found holding the same settings."""
    settings = work / "config.json"
    if settings.is_file() and json.loads(settings.read_text()) != asdict(config):
        raise ValueError(f"{work} holds an interrupted pretrain-bases run with other settings; delete it to "
                         "start over with these, or rerun with that run's settings to finish it")
    work.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(asdict(config), indent=1))
    return work


def pretrain_bases(out_dir, config: Optional[BasesConfig] = None, progress: bool = True) -> dict:
    """Write OUT/vision, OUT/llm and OUT/pretraining.json; returns the report. Progress is kept in
    OUT/.work (checkpoints, the finished tower's report): run it again after an interruption and it
    continues from there; it is deleted once the bases are written."""
    config = config or BasesConfig()
    torch.manual_seed(config.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = _work_dir(out / ".work", config)
    vision_done = work / "vision.json"
    if vision_done.is_file():
        vision = json.loads(vision_done.read_text())
    else:
        vision = pretrain_vision(config, out / "vision", work, progress)
        vision_done.write_text(json.dumps(vision))
    report = {"config": asdict(config), "vision": vision, "llm": pretrain_lm(config, out / "llm", work, progress)}
    (out / "pretraining.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return report


def _true(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(value)
    return value.lower() in ("true", "1", "yes")


def add_arguments(parser, name: str = "pretrain-bases") -> None:
    parser.add_argument("--out", default="bases/shapes-tiny", help="writes OUT/vision, OUT/llm, OUT/pretraining.json")
    for setting in fields(BasesConfig):
        parser.add_argument(f"--{setting.name}", type=_true if isinstance(setting.default, bool) else type(setting.default),
                            default=setting.default,
                            help=f"{setting.metadata['help']} (default: %(default)s)")


def run(args, name: str = "pretrain-bases") -> int:
    config = BasesConfig(**{f.name: getattr(args, f.name) for f in fields(BasesConfig)})
    report = pretrain_bases(args.out, config)
    vision, llm = report["vision"], report["llm"]
    print(f"vision tower: loss {vision['loss'][0]} -> {vision['loss'][-1]}, probe accuracy {vision['probe_accuracy']}")
    print(f"language model: loss {llm['loss'][0]} -> {llm['loss'][-1]}, text MCQ accuracy {llm['text_mcq_accuracy']}")
    print(f"bases written to {args.out} (report: {Path(args.out) / 'pretraining.json'})")
    return 0

