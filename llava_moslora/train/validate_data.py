"""`llava-moslora validate-data`: scan a whole LLaVA-format dataset before spending a cluster on it.

Reports every fault by sample id (data/validate.py lists them), prints a summary with counts,
exits 1 when any error exists, and with --write-clean writes the samples without errors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_TEMPLATE = "vicuna_v1"


def add_arguments(parser, name: str) -> None:
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data_path", help="LLaVA JSON/JSONL (conversations + image, or messages + images), .parquet, "
                      ".arrow, a `datasets` folder or dataset id; several joined with commas")
    data.add_argument("--data_mixture", help="as in training (e.g. a.json:0.7,b.parquet:0.3,c.jsonl:2000): every source "
                      "is checked, and the samples the mixture draws from each are reported")
    parser.add_argument("--seed", type=int, default=42, help="the seed training draws the mixture with (its "
                        "--data_seed, else --seed) [42, training's default]")
    parser.add_argument("--image_folder", default=None, help="folder the samples' image paths are relative to")
    parser.add_argument("--model_name_or_path", required=True,
                        help="the language model whose tokenizer training will use (a base LM, a stage checkpoint or a merged directory)")
    parser.add_argument("--template", default=None, help=f"conversation template (default: the checkpoint's, else {DEFAULT_TEMPLATE})")
    parser.add_argument("--vision_tower", default=None, help="vision tower, to count the image tokens of a base LM")
    parser.add_argument("--num_image_tokens", type=int, default=None, help="image tokens per image (overrides what the models say)")
    parser.add_argument("--mm_vision_select_feature", default="auto",
                        help="as in training: which tower tokens are image tokens (auto, patch, cls_patch)")
    parser.add_argument("--model_max_length", type=int, default=2048, help="as in training")
    parser.add_argument("--system_prompt", default=None, help="as in training")
    from ..data.images import MAX_IMAGE_PIXELS

    parser.add_argument("--max_image_pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help="as in training: images over this many pixels are errors (0: no limit)")
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="checking processes (0: none)")
    parser.add_argument("--write-clean", dest="write_clean", default=None, metavar="PATH",
                        help="write the samples without errors here (.jsonl: one per line, else a JSON list; images "
                             "stored in a table are written as base64; a mixture: each source's samples once)")
    parser.add_argument("--report", default=None, metavar="PATH", help="write every finding here as JSON lines")
    parser.add_argument("--show", type=int, default=50, help="findings to print (all go to --report)")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow tokenizer code from the model's repository")


def tokenizer_and_layout(args):
    """(tokenizer, template name, image tokens) the way training would have them."""
    from transformers import AutoConfig, AutoTokenizer

    from ..model.builder import num_image_tokens, prepare_tokenizer
    from ..model.recipe import RECIPE_FILE, Recipe
    from ..towers import select_strategy

    path = Path(args.model_name_or_path)
    template, image_tokens = args.template, args.num_image_tokens
    if (path / RECIPE_FILE).is_file():  # a stage checkpoint or a merged directory of ours
        recipe = Recipe.load(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return tokenizer, template or recipe.template, image_tokens or recipe.num_image_tokens
    tokenizer = prepare_tokenizer(str(path), args.trust_remote_code)
    if image_tokens is None:
        config = AutoConfig.from_pretrained(args.vision_tower or str(path), trust_remote_code=args.trust_remote_code)
        if config.model_type == "llava":
            image_tokens = config.image_seq_length
        elif args.vision_tower:
            vision = getattr(config, "vision_config", config)
            try:
                strategy = select_strategy(vision.model_type, args.mm_vision_select_feature)  # as training maps it
            except ValueError as error:
                raise SystemExit(f"--mm_vision_select_feature: {error}") from None
            image_tokens = num_image_tokens(vision, strategy)
        else:
            raise SystemExit("cannot tell how many tokens an image takes: give --vision_tower (as in training) "
                             "or --num_image_tokens (LLaVA-1.5 with CLIP ViT-L/14-336: 576)")
    return tokenizer, template or DEFAULT_TEMPLATE, image_tokens


def validate(args):
    """(report, samples): read, then check every sample."""
    from ..data.records import load_samples
    from ..data.templates import get_template
    from ..data.tokenize import check_tokenizer
    from ..data.validate import Report, SampleChecker, all_findings, check_samples

    tokenizer, template_name, image_tokens = tokenizer_and_layout(args)
    template = get_template(template_name)
    check_tokenizer(template, tokenizer)
    rejected = []
    if args.data_mixture:
        samples, sources = mixture_samples(args.data_mixture, args.seed, rejected)
    else:
        samples, sources = load_samples(args.data_path, rejected), None
    checker = SampleChecker(template, tokenizer, image_tokens, args.model_max_length,
                            Path(args.image_folder) if args.image_folder else None, args.system_prompt)
    print(f"[validate-data] {args.data_path or args.data_mixture}: {len(samples) + len(rejected)} records; template "
          f"{template_name!r}, {image_tokens} image tokens, model_max_length {args.model_max_length}", flush=True)
    findings = all_findings(rejected, samples, check_samples(samples, checker, workers=args.num_workers), sources)
    return Report(len(samples) + len(rejected), findings), samples


def mixture_samples(spec: str, seed: int, rejected: list) -> tuple[list, list]:
    """Every source's samples once, each sample's source, and (printed) what the mixture draws."""
    from collections import Counter

    from ..data.mixture import mix, parse_mixture
    from ..data.records import load_samples

    parts = parse_mixture(spec)
    loaded = [load_samples(part.path, rejected) for part in parts]
    samples, part_of, plan = mix(parts, loaded, seed)
    drawn = Counter(part_of[i] for i in plan)
    for k, (part, source) in enumerate(zip(parts, loaded)):
        print(f"[validate-data] mixture: {part.path}: {len(source)} samples read, {drawn.get(k, 0)} drawn "
              f"({part.share}, seed {seed})", flush=True)
    return samples, part_of


def run(args, name: str) -> int:
    from ..data.images import set_max_image_pixels
    from ..data.records import DataError

    set_max_image_pixels(args.max_image_pixels)
    from ..data.validate import clean_records

    try:
        report, samples = validate(args)
    except (DataError, ValueError, OSError) as error:
        raise SystemExit(f"validate-data: {error}") from None
    for finding in report.findings[:args.show]:
        severity = "ERROR  " if finding.is_error else "warning"
        print(f"{severity} {finding.kind:<20} {finding.sample_id if finding.sample_id is not None else '-'}: {finding.message}")
    if len(report.findings) > args.show:
        print(f"... and {len(report.findings) - args.show} more" + ("" if args.report else " (use --report to keep them all)"))
    if args.report:
        report.write_jsonl(Path(args.report))
    if args.write_clean:
        records = clean_records(samples, report)
        out = Path(args.write_clean)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as handle:
            if out.suffix == ".jsonl":
                handle.writelines(json.dumps(record) + "\n" for record in records)
            else:
                json.dump(records, handle)
        print(f"[validate-data] wrote {len(records)} valid samples to {out}")
    print(f"[validate-data] {report.summary()}")
    return 1 if report.errors else 0
