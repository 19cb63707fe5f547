"""Data: conversation templates, LLaVA-format records, images, tokenisation, batching, sampling.

Names are imported when first used (PEP 562), so that light parts (records, mixture, templates)
load without torch: the launch checks read them before anything heavy starts.
"""
from importlib import import_module

_WHERE = {
    "LlavaCollator": "collator", "MaskedLabelGuard": "collator", "MaskedLabelsError": "collator",
    "LlavaDataset": "dataset",
    "ImageError": "images", "load_image": "images", "pad_to_square": "images", "preprocess_image": "images",
    "DataError": "records", "Sample": "records", "load_samples": "records", "parse_sample": "records",
    "ModalityLengthGroupedSampler": "sampler", "modality_grouped_indices": "sampler",
    "IMAGE_TOKEN": "templates", "TEMPLATES": "templates", "Template": "templates", "get_template": "templates",
    "IGNORE_INDEX": "tokenize", "EncodedConversation": "tokenize", "SampleTooLong": "tokenize",
    "check_tokenizer": "tokenize", "encode_conversation": "tokenize",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
