"""Which features of a vision tower LLaVA reads: the choice a user makes, checked against the tower.

transformers' LLaVA takes a `vision_feature_select_strategy`: "default" drops the first token,
"full" keeps every token. Which one reads the patches depends on the tower: CLIP puts a CLS
token first, SigLIP has none (dropping its first token loses a patch). Users choose by meaning
instead (`--mm_vision_select_feature`, LLaVA's flag): `auto` / `patch` = the patch tokens,
`cls_patch` = CLS and the patches. Light (no torch, no transformers): launch checks read the
tower's config.json with it before anything heavy is imported.
"""
from __future__ import annotations

from typing import Optional

CLS_FIRST = ("clip", "clip_vision_model")  # tower model types whose first token is CLS
NO_CLS = ("siglip", "siglip_vision_model")
FEATURES = ("auto", "patch", "cls_patch")
FEATURE_HELP = ("Vision tower features fed to the projector: auto (the patch tokens: CLIP without its CLS token, "
                "as LLaVA-1.5; SigLIP all its tokens) | patch (the same) | cls_patch (CLIP's CLS token and the "
                "patches; towers without CLS refuse it). transformers' names default / full are accepted where "
                "they read the same tokens.")


def select_strategy(model_type: str, feature: Optional[str]) -> str:
    """transformers' strategy for `feature` on a tower of `model_type`; ValueError saying why
    when the choice would drop a patch or keep a CLS token the tower does not have."""
    feature = feature or "auto"
    has_cls = model_type in CLS_FIRST
    if feature in ("auto", "patch"):
        return "default" if has_cls else "full"
    if feature == "full" or (feature == "cls_patch" and has_cls):
        return "full"  # "full" on a tower without CLS: every token, all patches
    if feature == "default" and has_cls:
        return "default"
    if feature == "cls_patch":
        raise ValueError(f"cls_patch keeps a CLS token, which a {model_type} tower does not have (its tokens are all "
                         "patches); use auto or patch")
    if feature == "default":
        raise ValueError(f"default drops the first token, which on a {model_type} tower (no CLS token) is a patch; "
                         "use auto or patch")
    raise ValueError(f"unknown feature selection {feature!r}; accepted: {', '.join(FEATURES)}")
