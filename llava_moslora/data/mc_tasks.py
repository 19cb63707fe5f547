"""`llava-moslora prepare-mc`: the MoE-LoRA paper's LLaVA tasks as this project's data: a training
file in LLaVA's form and a VLMEvalKit multiple-choice TSV that `eval` scores, split as the paper's
code (THUDM/MoELoRA_Riemannian, train_llava.py) splits them.

- visual7w: the Visual7W "telling" JSON as its authors ship it (dataset_v7w_telling.json; the
  paper's code renames it qa.json) with its images folder. Every question of the train split
  trains; the first --eval_rows of the test split are scored (the code took 100). The answer and
  the three wrong choices are shuffled into A-D by --seed (the code shuffled unseeded).
- vmcbench: VMCBench's dev split as the hub ships it (suyc21/VMCBench, a parquet file: index,
  question, A-D, answer, category, image as {bytes, path}). The first --train_rows (900) train,
  the rest are scored.

A sample asks "<image>\\n{question}\\nA. ...\\nB. ...\\nC. ...\\nD. ..." and is answered
"The answer is X.", the code's target; the conversation template wraps them as for any data.
"""
from __future__ import annotations

import base64
import json
import random
import sys
from pathlib import Path

LETTERS = "ABCD"
TASKS = {"visual7w": "Visual7W_MCQ", "vmcbench": "VMCBench_MCQ"}  # task -> its benchmark (TSV) name


def question_text(question: str, options: list[str]) -> str:
    lines = [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    return "<image>\n" + question.strip() + "\n" + "\n".join(lines)


def sample(sample_id: str, image: str, question: str, options: list[str], answer: str) -> dict:
    return {"id": sample_id, "image": image, "conversations": [
        {"from": "human", "value": question_text(question, options)},
        {"from": "gpt", "value": f"The answer is {answer}."}]}


def tsv_row(index: int, image_bytes: bytes, question: str, options: list[str], answer: str, category: str) -> dict:
    return {"index": index, "image": base64.b64encode(image_bytes).decode(), "question": question.strip(),
            **dict(zip(LETTERS, options)), "answer": answer, "category": category}


def visual7w(source: Path, image_folder: Path, eval_rows: int, seed: int) -> tuple[list, list]:
    """(training samples, TSV rows) from the telling JSON: images[].{filename, split, qa_pairs[].{qa_id,
    question, answer, multiple_choices, type}}."""
    rng = random.Random(seed)
    data = json.loads(Path(source).read_text())
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{source} is not Visual7W's telling JSON (a dict with 'images')")
    train, scored = [], []
    for image in data["images"]:
        for pair in image["qa_pairs"]:
            options = [pair["answer"], *pair["multiple_choices"]]
            if len(options) != 4:
                raise ValueError(f"{source}: question {pair['qa_id']} has {len(options)} options, not 4")
            order = rng.sample(range(4), 4)
            shuffled = [options[k] for k in order]
            answer = LETTERS[order.index(0)]
            if image["split"] == "train":
                train.append(sample(f"v7w-{pair['qa_id']}", image["filename"], pair["question"], shuffled, answer))
            elif image["split"] == "test" and len(scored) < eval_rows:
                image_bytes = (Path(image_folder) / image["filename"]).read_bytes()
                scored.append(tsv_row(pair["qa_id"], image_bytes, pair["question"], shuffled, answer, pair.get("type", "")))
    return train, scored


def vmcbench(source: Path, out: Path, train_rows: int) -> tuple[list, list]:
    """(training samples, TSV rows) from the dev parquet; training images are written to out/images."""
    import pandas as pd

    table = pd.read_parquet(source)
    missing = {"index", "question", "A", "B", "C", "D", "answer", "image"} - set(table.columns)
    if missing:
        raise ValueError(f"{source} lacks VMCBench's columns {sorted(missing)} (it has {list(table.columns)})")
    (out / "images").mkdir(parents=True, exist_ok=True)
    train, scored = [], []
    for position, row in enumerate(table.itertuples(index=False)):
        image = row.image["bytes"] if isinstance(row.image, dict) else row.image
        options = [str(getattr(row, letter)) for letter in LETTERS]
        if position < train_rows:
            name = f"images/vmcbench-{row.index}.png"
            (out / name).write_bytes(image)  # as stored: PIL reads the file by its content
            train.append(sample(f"vmcbench-{row.index}", name, str(row.question), options, str(row.answer)))
        else:
            scored.append(tsv_row(int(row.index), image, str(row.question), options, str(row.answer),
                                  str(getattr(row, "category", ""))))
    return train, scored


def prepare(task: str, source: Path, out: Path, image_folder: Path | None, train_rows: int, eval_rows: int,
            seed: int) -> dict:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    if task == "visual7w":
        if image_folder is None:
            raise ValueError("visual7w needs --image_folder, the folder of its images")
        train, scored = visual7w(source, image_folder, eval_rows, seed)
    else:
        train, scored = vmcbench(source, out, train_rows)
    (out / "train.json").write_text(json.dumps(train, ensure_ascii=False, indent=1))
    tsv = out / f"{TASKS[task]}.tsv"
    pd.DataFrame(scored).to_csv(tsv, sep="\t", index=False)
    return {"train": len(train), "scored": len(scored), "tsv": tsv}


def add_arguments(parser, name: str = "prepare-mc") -> None:
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="the MoE-LoRA paper's task")
    parser.add_argument("--source", required=True, help="visual7w: dataset_v7w_telling.json; vmcbench: the dev parquet")
    parser.add_argument("--image_folder", default=None, help="visual7w: the folder of its images")
    parser.add_argument("--out", required=True, help="folder for train.json (and images/) and the benchmark TSV")
    parser.add_argument("--train_rows", type=int, default=900, help="vmcbench: the first rows that train [900]")
    parser.add_argument("--eval_rows", type=int, default=100, help="visual7w: test questions scored [100]")
    parser.add_argument("--seed", type=int, default=0, help="visual7w: the options' order [0]")


def run(args, name: str = "prepare-mc") -> int:
    out = Path(args.out)
    try:
        counts = prepare(args.task, Path(args.source), out, Path(args.image_folder) if args.image_folder else None,
                         args.train_rows, args.eval_rows, args.seed)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    folder = args.image_folder if args.task == "visual7w" else out
    print(f"{name}: {counts['train']} training samples in {out / 'train.json'} (images under {folder}); "
          f"{counts['scored']} scored rows in {counts['tsv']}\n"
          f"  train: DATA_PATH={out / 'train.json'} IMAGE_FOLDER={folder} bash scripts/finetune.sh\n"
          f"  score: llava-moslora eval --model CKPT --benchmarks {TASKS[args.task]} --data-root {out} --work-dir DIR")
    return 0
