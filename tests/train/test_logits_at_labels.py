"""--logits_at_labels: the LM head at label positions only gives the full head's loss and
gradients, with logits for a fraction of the positions."""
import torch

from helpers import randomize_adapters
from llava_moslora.adapters import AdapterConfig
from llava_moslora.model import Recipe, apply_tuning, build_llava
from llava_moslora.train.trainer import IGNORE_INDEX, HeadAtLabels, labelled_positions


def tuned(tiny_bases):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    recipe = Recipe(**{**bundle.recipe.to_dict(), "tune_language_model": "adapter", "tune_mm_projector": "full",
                       "llm_adapter": AdapterConfig(kind="moslora", r=4).to_dict()})
    apply_tuning(bundle.model, recipe)
    randomize_adapters(bundle.model, scale=0.05)
    return bundle.model.train()


def batch(model):
    """An image row and a shorter text-only row (right-padded), labels on the replies only."""
    torch.manual_seed(0)
    images = model.config.image_seq_length
    ids = torch.randint(5, 200, (2, images + 24))
    ids[0, 1:1 + images] = model.config.image_token_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, images + 10:images + 18] = ids[0, images + 10:images + 18]
    labels[1, 12:20] = ids[1, 12:20]
    mask = torch.ones_like(ids)
    mask[1, 22:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": torch.randn(1, 3, 32, 32)}


def loss_and_grads(model, inputs):
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def test_same_loss_and_gradients_with_logits_only_at_labels(tiny_bases):
    model = tuned(tiny_bases)
    inputs = batch(model)
    head = HeadAtLabels(model.lm_head)
    full, full_grads = loss_and_grads(model, inputs)
    with head.at(inputs["labels"]) as labelled:
        part, part_grads = loss_and_grads(model, {**inputs, **labelled})
    again, _ = loss_and_grads(model, inputs)  # outside `at`, the whole head again
    torch.testing.assert_close(part.loss, full.loss, rtol=1e-5, atol=0)
    assert full_grads.keys() == part_grads.keys() and any("lora_M" in n for n in full_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(part_grads[name], grad, rtol=1e-5, atol=1e-8, msg=name)
    # logits for the 8 + 8 positions that predict a label, not for every position of both rows
    assert part.logits.shape[:2] == (1, 16) and full.logits.shape[:2] == inputs["input_ids"].shape
    assert again.logits.shape == full.logits.shape


def test_a_batch_without_labels_keeps_one_position(tiny_bases):
    model = tuned(tiny_bases)
    inputs = batch(model)
    inputs["labels"][:] = IGNORE_INDEX
    rows, positions, shifted = labelled_positions(inputs["labels"])
    assert rows.tolist() == [0] and positions.tolist() == [inputs["labels"].shape[1] - 1]
    assert shifted.tolist() == [[IGNORE_INDEX]]
