"""Which tower tokens LLaVA reads (towers.select_strategy): the patch tokens by default, whatever
the tower; a choice the tower cannot give is refused with the reason."""
import pytest

from llava_moslora.towers import select_strategy


@pytest.mark.parametrize("model_type, choice, strategy", [
    ("clip_vision_model", None, "default"), ("clip_vision_model", "auto", "default"),
    ("clip_vision_model", "patch", "default"), ("clip_vision_model", "cls_patch", "full"),
    ("clip_vision_model", "default", "default"), ("clip_vision_model", "full", "full"), ("clip", "patch", "default"),
    ("siglip_vision_model", None, "full"), ("siglip_vision_model", "patch", "full"), ("siglip", "auto", "full"),
    ("siglip_vision_model", "full", "full"),
])
def test_each_choice_reads_the_tokens_it_names(model_type, choice, strategy):
    assert select_strategy(model_type, choice) == strategy


@pytest.mark.parametrize("choice, reason", [("cls_patch", "does not have"), ("default", "is a patch"),
                                            ("everything", "accepted: auto, patch, cls_patch")])
def test_a_choice_that_would_drop_a_patch_or_invent_a_cls_token_is_refused(choice, reason):
    with pytest.raises(ValueError, match=reason):
        select_strategy("siglip_vision_model", choice)
