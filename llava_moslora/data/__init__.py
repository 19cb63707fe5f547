"""Data: conversation templates, LLaVA-format records, images, tokenisation, batching, sampling."""
from .collator import LlavaCollator, MaskedLabelGuard, MaskedLabelsError
from .dataset import LlavaDataset
from .images import ImageError, load_image, pad_to_square, preprocess_image
from .records import DataError, Sample, load_samples, parse_sample
from .sampler import ModalityLengthGroupedSampler, modality_grouped_indices
from .templates import IMAGE_TOKEN, TEMPLATES, Template, get_template
from .tokenize import IGNORE_INDEX, EncodedConversation, SampleTooLong, check_tokenizer, encode_conversation

__all__ = [
    "DataError", "EncodedConversation", "IGNORE_INDEX", "IMAGE_TOKEN", "ImageError", "LlavaCollator",
    "LlavaDataset", "MaskedLabelGuard", "MaskedLabelsError", "ModalityLengthGroupedSampler", "Sample",
    "SampleTooLong", "TEMPLATES", "Template", "check_tokenizer", "encode_conversation", "get_template",
    "load_image", "load_samples", "modality_grouped_indices", "pad_to_square", "parse_sample",
    "preprocess_image",
]
