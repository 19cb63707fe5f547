"""build_llava on tiny saved checkpoints, through the same from_pretrained paths as real ones."""
import pytest
import torch
from transformers import AutoTokenizer, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from llava_moslora.data import encode_conversation, get_template, preprocess_image
from llava_moslora.model import build_llava
from PIL import Image


def image_batch(bundle, sizes=((40, 24),)):
    return torch.stack([preprocess_image(Image.new("RGB", size, (200, 30, 30)), bundle.image_processor) for size in sizes])


def forward_with_image(bundle, template="vicuna_v1"):
    encoded = encode_conversation(get_template(template), bundle.tokenizer,
                                  [("<image>\nWhat color is the circle?", "The circle is red.")],
                                  num_image_tokens=bundle.recipe.num_image_tokens)
    ids = torch.tensor([encoded.input_ids])
    pixel_values = image_batch(bundle)
    output = bundle.model(input_ids=ids, labels=torch.tensor([encoded.labels]), pixel_values=pixel_values,
                          attention_mask=torch.ones_like(ids))
    return ids, pixel_values, output


def test_build_from_tiny_llama_and_clip(tiny_bases):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    model, config = bundle.model, bundle.model.config
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert bundle.recipe.num_image_tokens == (32 // 8) ** 2 == config.image_seq_length
    assert "<image>" in bundle.tokenizer.get_vocab() and bundle.tokenizer.pad_token == "<unk>"
    assert config.image_token_id == bundle.tokenizer.convert_tokens_to_ids("<image>")
    assert model.get_input_embeddings().num_embeddings == len(bundle.tokenizer) == config.text_config.vocab_size
    ids, pixel_values, output = forward_with_image(bundle)
    assert torch.isfinite(output.loss)
    features = model.model.get_image_features(pixel_values=pixel_values).pooler_output
    assert int((ids == config.image_token_id).sum()) == features[0].shape[0] == 16
    projector = model.model.multi_modal_projector
    assert projector.linear_1.in_features == 32 and projector.linear_2.out_features == 64


def test_base_weights_are_the_loaded_ones(tiny_bases):
    from transformers import AutoModelForCausalLM, CLIPVisionModel
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    lm = AutoModelForCausalLM.from_pretrained(tiny_bases["language_model"])
    tower = CLIPVisionModel.from_pretrained(tiny_bases["vision_tower"])
    llava_layer = bundle.model.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.equal(llava_layer, lm.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(bundle.model.model.vision_tower.embeddings.patch_embedding.weight,
                       tower.embeddings.patch_embedding.weight)


@pytest.mark.parametrize("style, architecture, template", [("chatml", "qwen2", "chatml"),
                                                           ("llama3", "llama", "llama3"),
                                                           ("llama", "mistral", "vicuna_v1")])
def test_other_language_models(tiny_base_factory, style, architecture, template):
    bases = tiny_base_factory(style, architecture)
    bundle = build_llava(bases["vision_tower"], bases["language_model"], template=template)
    assert bundle.tokenizer.pad_token is not None
    _, _, output = forward_with_image(bundle, template)
    assert torch.isfinite(output.loss)


def test_siglip_tower_keeps_every_patch(tiny_bases, tmp_path):
    config = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64)
    SiglipVisionModel(config).save_pretrained(tmp_path / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    bundle = build_llava(str(tmp_path / "siglip"), tiny_bases["language_model"])
    assert bundle.model.config.vision_feature_select_strategy == "full"
    assert bundle.recipe.num_image_tokens == 16
    _, _, output = forward_with_image(bundle)
    assert torch.isfinite(output.loss)
    with pytest.raises(ValueError, match="is a patch"):  # LLaVA's "drop the first token" would lose one
        build_llava(str(tmp_path / "siglip"), tiny_bases["language_model"], vision_feature_select="default")


def test_image_tokens_are_checked_against_the_tower_at_build_time(tiny_bases):
    from llava_moslora.model.builder import check_image_tokens

    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], vision_feature_select="cls_patch")
    assert bundle.recipe.num_image_tokens == 17  # 16 patches and CLIP's CLS token
    tower = bundle.model.model.vision_tower
    check_image_tokens(tower, "full", 17)
    with pytest.raises(ValueError, match="gives 16 features per image"):
        check_image_tokens(tower, "default", 17)


def test_linear_projector_is_a_single_linear_map(tiny_bases):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], projector_type="linear")
    projector = bundle.model.model.multi_modal_projector
    x = torch.randn(3, 32)
    torch.testing.assert_close(projector(x), projector.linear_1(x))


def test_bad_inputs(tiny_bases, tmp_path):
    with pytest.raises(ValueError, match="unknown projector_type 'mlp3x'"):
        build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], projector_type="mlp3x")
    with pytest.raises(ValueError, match="vision towers of type 'llama' are not supported"):
        build_llava(tiny_bases["language_model"], tiny_bases["language_model"])
    with pytest.raises(OSError):
        build_llava(tiny_bases["vision_tower"], str(tmp_path / "nowhere"))


def test_saved_tokenizer_round_trips(tiny_bases, tmp_path):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    bundle.tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.convert_tokens_to_ids("<image>") == bundle.model.config.image_token_id
    assert again("<image> red").input_ids == bundle.tokenizer("<image> red").input_ids
