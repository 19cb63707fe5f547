"""--packing: several samples per row, attention confined to each (position_ids restart per
sample, transformers' block-diagonal mask for sdpa and eager). Each packed sample's loss is the
one it has alone, and nothing flows between packed samples."""
import pytest
import torch

from helpers import randomize_adapters
from llava_moslora.adapters import AdapterConfig
from llava_moslora.data import LlavaCollator
from llava_moslora.data.collator import pack_rows, packed_row_length
from llava_moslora.model import Recipe, apply_tuning, build_llava
from llava_moslora.train.trainer import IGNORE_INDEX


ADAPTERS = {"lora": dict(kind="lora", r=4), "moslora": dict(kind="moslora", r=4),
            "moelora": dict(kind="moelora", r=2, num_experts=4, top_k=2)}


def tuned(tiny_bases, attention, adapter="moslora", bits=16):
    quantization = None
    if bits != 16:
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (installed by scripts/setup.sh)")
        from llava_moslora.model.quantize import Quantization
        quantization = Quantization(bits)
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], attn_implementation=attention,
                         quantization=quantization)
    recipe = Recipe(**{**bundle.recipe.to_dict(), "tune_language_model": "adapter", "tune_mm_projector": "full",
                       "llm_adapter": AdapterConfig(**ADAPTERS[adapter]).to_dict()})
    apply_tuning(bundle.model, recipe)
    randomize_adapters(bundle.model, scale=0.05)
    # as `train` sets it: with a cache, transformers ignores the packed position_ids
    bundle.model.config.use_cache = bundle.model.config.text_config.use_cache = False
    return bundle.model.train()


def samples(model, seed=0):
    """Image and text-only samples of different lengths, labels on their replies only."""
    generator = torch.Generator().manual_seed(seed)
    images = model.config.image_seq_length
    found = []
    for index, (length, image) in enumerate([(images + 30, True), (17, False), (images + 9, True), (40, False),
                                             (images + 21, True)]):
        ids = torch.randint(5, 200, (length,), generator=generator)
        ids[0] = 1
        if image:
            ids[1:1 + images] = model.config.image_token_id
        labels = torch.full_like(ids, IGNORE_INDEX)
        reply = length // 2
        labels[reply:] = ids[reply:]
        sample = {"id": f"s{index}", "input_ids": ids, "labels": labels}
        if image:
            sample["pixel_values"] = torch.randn(3, 32, 32, generator=generator)
        found.append(sample)
    return found


def segments(position_ids):
    """Sample number of every position of every row (a new sample wherever positions restart)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.long().cumsum(-1) - 1


def per_sample_losses(logits, labels, position_ids):
    """Mean next-token cross-entropy of each (row, sample) of a packed batch, in row order."""
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none",
                                             ignore_index=IGNORE_INDEX)
    target, owner = labels[:, 1:] != IGNORE_INDEX, segments(position_ids)[:, 1:]
    found = []
    for row in range(labels.shape[0]):
        for sample in owner[row].unique():
            where = target[row] & (owner[row] == sample)
            if where.any():
                found.append(loss[row][where].sum() / where.sum())
    return found


def test_pack_rows_uses_the_fewest_even_rows_within_capacity_in_a_fixed_order():
    lengths = [50, 30, 70, 20, 90, 10]
    rows = pack_rows(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 3 and rows == sorted(rows) and all(row == sorted(row) for row in rows)
    assert pack_rows([150, 20], 100) == [[0], [1]]  # longer than a row: a row of its own
    assert pack_rows([30, 30, 30, 30], 100) == [[0, 2], [1, 3]]  # 2 even rows of 60, not 90 + 30
    assert pack_rows([60, 50, 40, 30, 20], 100) == [[0, 2], [1, 3, 4]]  # filled: 2 x 100; even rows take 3
    assert pack_rows([60, 60, 60], 100) == [[0], [1], [2]]  # 180 tokens fit 2 rows, these lengths need 3
    assert pack_rows([40, 70, 10], None) == [[0, 1, 2]]  # no capacity (a varlen kernel): one row
    assert packed_row_length("flash_attention_2", 2048) is None and packed_row_length("sdpa", 2048) == 2048
    # every row is padded to the longest: on LLaVA-like batches of 16 (576 image tokens + 20-600
    # text tokens) packing processes far fewer positions than padding, and never more than rows
    # filled one by one
    generator = torch.Generator().manual_seed(0)
    total = {"packed": 0, "padded": 0}
    for _ in range(50):
        lengths = (576 + torch.randint(20, 600, (16,), generator=generator)).tolist()
        packed = processed(lengths, pack_rows(lengths, 2048))
        assert packed <= processed(lengths, first_fit(lengths, 2048))
        total["packed"] += packed
        total["padded"] += 16 * max(lengths)
    assert total["packed"] < 0.85 * total["padded"], total


def processed(lengths, rows):
    return len(rows) * max(sum(lengths[i] for i in row) for row in rows)


def first_fit(lengths, capacity):
    """First-fit decreasing, written out (the reference)."""
    rows, room = [], []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if lengths[index] <= free), None)
        if row is None:
            rows.append([index])
            room.append(capacity - lengths[index])
        else:
            rows[row].append(index)
            room[row] -= lengths[index]
    return rows


def test_the_packed_batch_keeps_samples_apart_and_images_in_their_order(tiny_bases):
    model = tuned(tiny_bases, "sdpa")
    features = samples(model)
    batch = LlavaCollator(0, packing=True, max_length=100, with_ids=True)(features)
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] <= 100
    assert batch["sample_ids"] == [f["id"] for f in features]  # the sampler's order, for the data-order record
    rows = pack_rows([len(f["input_ids"]) for f in features], 100)
    order = [i for row in rows for i in row]
    expected = torch.stack([features[i]["pixel_values"] for i in order if "pixel_values" in features[i]])
    assert torch.equal(batch["pixel_values"], expected)  # the images in the order their tokens come
    real = sum(len(f["input_ids"]) for f in features)
    assert batch["token_counts"] == [real, batch["input_ids"].numel()] and batch["input_ids"].numel() < 5 * 100
    starts = segments(batch["position_ids"])
    for row in range(batch["labels"].shape[0]):  # a sample's first token is no one's target
        first = torch.ones_like(starts[row], dtype=torch.bool)
        first[1:] = starts[row, 1:] != starts[row, :-1]
        assert (batch["labels"][row][first] == IGNORE_INDEX).all()


@pytest.mark.parametrize("attention, adapter, bits", [("sdpa", "moslora", 16), ("eager", "moslora", 16),
                                                       ("sdpa", "lora", 16), ("sdpa", "moelora", 16),
                                                       ("sdpa", "moslora", 4)])
def test_each_packed_sample_has_the_loss_it_has_alone(tiny_bases, attention, adapter, bits):
    """Every adapter kind (MoE-LoRA routes each token alone) and QLoRA's 4-bit base (4-bit
    layers dequantize per weight, not per batch) keep packed samples apart."""
    model = tuned(tiny_bases, attention, adapter, bits)
    features = samples(model)
    packed = LlavaCollator(0, packing=True, max_length=100)(features)
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        alone = []
        for feature in features:
            single = LlavaCollator(0)([feature])
            alone.append(model(**single).loss)
    losses = per_sample_losses(logits, packed["labels"], packed["position_ids"])
    rows = pack_rows([len(f["input_ids"]) for f in features], 100)
    order = [i for row in rows for i in row]
    assert len(losses) == len(features)
    for position, index in enumerate(order):
        torch.testing.assert_close(losses[position], alone[index], rtol=1e-5, atol=0)


def test_no_gradient_flows_between_packed_samples(tiny_bases):
    model = tuned(tiny_bases, "sdpa")
    features = samples(model)
    packed = LlavaCollator(0, packing=True, max_length=400)(features)  # one row: every sample side by side
    assert packed["input_ids"].shape[0] == 1
    pixels = packed["pixel_values"].clone().requires_grad_(True)
    captured = {}

    def keep(module, args, output):  # the token embeddings (frozen) as a leaf that collects gradient
        captured["embeddings"] = output.detach().requires_grad_(True)
        return captured["embeddings"]

    hook = model.get_input_embeddings().register_forward_hook(keep)
    logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], pixel_values=pixels).logits
    hook.remove()
    losses = per_sample_losses(logits, packed["labels"], packed["position_ids"])
    losses[1].backward()  # the second sample of the row (text-only) alone
    owner = segments(packed["position_ids"])[0]
    grad = captured["embeddings"].grad[0]
    assert grad[owner == 1].abs().sum() > 0  # its own tokens get gradient
    assert torch.count_nonzero(grad[owner != 1]) == 0  # every other sample's tokens exactly none
    assert torch.count_nonzero(pixels.grad) == 0  # nor any image (they belong to other samples)
    model.zero_grad()
    pixels.grad = None
    logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], pixel_values=pixels).logits
    per_sample_losses(logits, packed["labels"], packed["position_ids"])[0].backward()  # the first, an image sample
    assert pixels.grad[0].abs().sum() > 0 and torch.count_nonzero(pixels.grad[1:]) == 0


@pytest.mark.slow
def test_a_packed_run_follows_the_padded_runs_losses_with_less_processed(shapes_data, stage1, uninterrupted,
                                                                          tmp_path):
    """PACKING=1 through finetune.sh (2 processes, ZeRO-2): the same samples in the same order
    (the data-order fingerprint), the same per-step losses to float rounding, fewer positions
    processed."""
    import json

    from helpers import STEADY, losses, run_script, stage2_env

    out = tmp_path / "packed"
    run_script("finetune.sh", stage2_env(shapes_data, stage1, out, PACKING="1"),
               "--max_steps", "10", "--save_steps", "3", *STEADY)
    packed, padded = losses(out), losses(uninterrupted)
    assert len(packed) == len(padded) == 10
    print("per-step loss, packed vs padded:", [(round(a, 5), round(b, 5)) for a, b in zip(packed, padded)])
    for a, b in zip(packed, padded):
        assert a == pytest.approx(b, rel=1e-4)
    metrics = {name: json.loads((run / "train_metrics.json").read_text()) for name, run in
               (("packed", out), ("padded", uninterrupted))}
    assert metrics["packed"]["data_order"] == metrics["padded"]["data_order"]
    assert metrics["packed"]["tokens"] == metrics["padded"]["tokens"]
    ratios = [metrics[name]["processed_per_real_token"] for name in ("packed", "padded")]
    print("processed per real token, packed and padded:", ratios)
    assert ratios[0] <= 1.05 and ratios[0] < ratios[1]


@pytest.mark.slow
def test_packed_under_zero3_stops_on_a_signal_to_every_process_and_resumes_to_the_padded_losses(
        shapes_data, stage1, uninterrupted, tmp_path):
    """PACKING=1 ZERO=3: SIGTERM to every process (as SLURM delivers it), then
    --resume_from_checkpoint auto: the same losses (rel 1e-3, ZeRO-3's partitioned reductions
    against ZeRO-2's) and the same data-order fingerprint as the uninterrupted padded run; the
    packing of a batch depends on the batch alone, so a resumed run packs as the first did."""
    import signal

    from helpers import signal_tree
    from test_reliability import after_losses, assert_stopped_by, resume_and_compare, start

    out = tmp_path / "packed-zero3"
    run = start(shapes_data, stage1, out, "--save_steps", "1000", PACKING="1", ZERO="3")
    seen = after_losses(run, 3)
    signal_tree(run.pid, signal.SIGTERM)
    step, _ = assert_stopped_by(run, seen, "SIGTERM", out)
    resume_and_compare(shapes_data, stage1, out, uninterrupted, step, PACKING="1", ZERO="3")


@pytest.mark.slow
def test_packed_riemannian_moelora_skips_bad_samples(stage1, tmp_path):
    """The options that touch the batch or the step, together with --packing: MoE-LoRA under
    Riemannian preconditioning with gate rescaling, and --skip_bad_samples (the start-up screen
    leaves 10 out, the 11th is replaced when drawn). QLoRA's 4-bit base packs as above
    (test_each_packed_sample_has_the_loss_it_has_alone); its script run needs a stage 1 that
    left the LLM frozen (tests/train/test_qlora.py)."""
    from helpers import STEADY, losses, run_script, stage2_env, write_faulty_dataset

    data, images, _ = write_faulty_dataset(tmp_path / "faulty")
    out = tmp_path / "packed-moelora"
    env = {**stage2_env(images.parent, stage1, out), "DATA_PATH": str(data), "IMAGE_FOLDER": str(images),
           "EPOCHS": "1", "PACKING": "1", "ADAPTER": "moelora", "NUM_EXPERTS": "4", "TOP_K": "2",
           "RIEMANNIAN": "1", "GATE_RESCALE": "sqrt"}
    result = run_script("finetune.sh", env, *STEADY, "--skip_bad_samples", "True")
    assert "leaving out 10 bad samples" in result.stdout
    assert "skipped bad samples: 10 before training, 1 during it" in result.stdout
    trained = losses(out)
    assert len(trained) == 4 and all(loss == loss and loss < 20 for loss in trained)  # 28 samples / 8, finite
