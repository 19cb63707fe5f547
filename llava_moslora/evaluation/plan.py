"""How each benchmark will be scored, decided before any model is loaded.

VLMEvalKit's run.py picks a judge per benchmark from its type and name (`get_judge_kwargs`,
ported below from VLMEvalKit commit e8e78f05). Multiple-choice and yes/no sets fall back to exact
matching when no LLM judge answers; the sets run.py hands to an LLM judge (MathVista, MMVet, ...)
assert a working one after all their inference. So a benchmark whose judge is not configured is
skipped at start, with the reason, instead of failing hours later.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .benchmarks import local_tsv, tsv_type, unscorable

EXACT = "exact_matching"
# Types whose VLMEvalKit evaluators use exact matching when no LLM judge works.
EXACT_MATCHING_TYPES = ("MCQ", "Y/N", "MCQ_MMMU_Pro")
# Non-multiple-choice benchmarks run.py gives an LLM judge, in run.py's order: (name parts, judge).
LLM_JUDGED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("moviechat1k", "mme-reasoning"), "gpt-4o-mini"),  # run.py matches these two lower-cased
    (("LLaVABench_KO",), "gpt-4o-0806"),
    (("MMVet", "LLaVABench", "MMBench_Video"), "gpt-4-turbo"),
    (("VGRPBench",), "gpt-4o"),
    (("MathVista", "MathVerse", "MathVision", "LENS", "DynaMath", "VL-RewardBench", "LogicVista", "MOAT",
      "OCR_Reasoning", "VTCBench", "Asclepius", "MMSafetyBench", "MSSBench", "SIUO", "XSTest", "Flames"),
     "gpt-4o-mini"),
    (("MMLongBench_32K", "MMLongBench_128K", "MMLongBench_256K", "MMLongBench_512K"), "gpt-5.5-2026-04-24"),
    (("MMLongBench", "MMDU", "DUDE", "SLIDEVQA", "MIA-Bench", "WildVision", "MMAlignBench", "MM-IFEval",
      "ChartMimic", "MMVMBench", "M4Bench"), "gpt-4o"),
    (("VDC",), "llama31-8b"),
    (("Video_MMLU_QA", "Video_MMLU_CAP"), "qwen-72b"),
    (("CVQA_EN", "CVQA_LOC", "AyaVisionBench", "MMReason", "CoreCognition"), "gpt-4.1"),
    (("MathCanvas",), "gpt-4.1-2025-04-14"),
    (("WorldVQA",), "gpt-4o-1120"),
    (("Video-MME", "MaCBench", "SciDocBench"), "gpt-4o-mini"),
)
SILICONFLOW_JUDGES = ("qwen-7b", "qwen-72b", "deepseek")  # build_judge serves these through SiliconFlow
LOCAL_JUDGES = ("llama31-8b",)  # a Hugging Face model run in-process, no key


@dataclass(frozen=True)
class Located:
    """Where a benchmark's rows come from: its VLMEvalKit type, and "VLMEvalKit" or a TSV path."""

    kind: Optional[str]
    source: str
    official: bool


@dataclass(frozen=True)
class BenchmarkPlan:
    name: str
    kind: Optional[str]
    source: str
    judge: str  # what the evaluator is given (its `model=`)
    scoring: str  # how it will be scored, for the table printed at start
    skip: Optional[str] = None  # why it will not run at all

    @property
    def runs(self) -> bool:
        return self.skip is None


def llm_judge_of(name: str, kind: Optional[str]) -> Optional[str]:
    """The LLM judge run.py would give a benchmark whose evaluator needs one, else None."""
    if kind in EXACT_MATCHING_TYPES:
        return None
    for parts, judge in LLM_JUDGED:
        # run.py's listinstr is case-sensitive, but for the two names it lower-cases first
        if any(part in (name.lower() if part.islower() else name) for part in parts):
            return judge
    return None


def judge_problem(judge: str, env: Mapping[str, str]) -> Optional[str]:
    """Why `judge` cannot score here (the variables VLMEvalKit's build_judge reads), else None."""
    if judge == EXACT:
        return "exact_matching cannot score its free-form answers"
    if env.get("LOCAL_LLM") or judge in LOCAL_JUDGES:
        return None
    if judge in SILICONFLOW_JUDGES:
        return None if env.get("SiliconFlow_API_KEY") else f"{judge} needs SiliconFlow_API_KEY"
    if env.get("OPENAI_API_KEY") or env.get("AZURE_OPENAI_API_KEY"):
        return None
    return (f"{judge} needs OPENAI_API_KEY (and OPENAI_API_BASE for a non-OpenAI server), or LOCAL_LLM, "
            "in the environment or VLMEvalKit's .env")


def plan_benchmark(name: str, located: Located | str, judge: Optional[str], env: Mapping[str, str], *,
                   llm_judges: bool = True) -> BenchmarkPlan:
    """The plan for one benchmark; `located` is where its rows are, or why they cannot be had.
    `judge` is --judge (None: run.py's choice per benchmark); `llm_judges` False for a backend
    that has only exact matching."""
    kind = located.kind if isinstance(located, Located) else None
    source = located.source if isinstance(located, Located) else "-"
    reasons = [] if isinstance(located, Located) else [located]
    needed, chosen, scoring = llm_judge_of(name, kind), judge or EXACT, ""
    if needed:
        chosen = judge or needed
        problem = judge_problem(chosen, env) if llm_judges else "only the vlmeval backend runs LLM judges"
        if problem:
            reasons.insert(0, f"needs an LLM judge (run.py uses {needed}): {problem}")
        scoring = f"LLM judge {chosen}"
    elif kind in EXACT_MATCHING_TYPES:
        scoring = "exact matching" if chosen == EXACT else f"{chosen} (exact matching if it does not answer)"
    elif kind is not None and not located.official:  # a kind means `located` is a Located
        scoring = "normalized exact match (ours: VLMEvalKit has no scorer for custom free-form TSVs)"
    elif kind is not None:
        scoring = "VLMEvalKit's metric for the benchmark"
    return BenchmarkPlan(name, kind, source, chosen, scoring, "; ".join(reasons) or None)


def locate_local(name: str, root: Path) -> Located | str:
    """The builtin backend's view: a local TSV it can score (MCQ, yes/no, free-form), or why not."""
    tsv = local_tsv(name, root)
    if tsv is None:
        return (f"no {Path(root) / (name + '.tsv')} (the builtin backend scores local TSVs; "
                "official benchmarks need --backend vlmeval)")
    problem = unscorable(tsv)
    return Located(tsv_type(tsv), str(tsv), official=False) if problem is None else problem


def make_plan(names: Sequence[str], locate: Callable[[str], Located | str], judge: Optional[str],
              env: Mapping[str, str], *, llm_judges: bool = True) -> list[BenchmarkPlan]:
    return [plan_benchmark(name, locate(name), judge, env, llm_judges=llm_judges) for name in names]


def render_plan(plans: Sequence[BenchmarkPlan]) -> str:
    width = max([len(p.name) for p in plans] + [9]) + 2
    lines = [f"{'benchmark':<{width}}{'type':<7}scoring"]
    for plan in plans:
        how = f"SKIPPED: {plan.skip}" if plan.skip else plan.scoring
        lines.append(f"{plan.name:<{width}}{plan.kind or '?':<7}{how}")
    return "\n".join(lines)
