"""kinject's log-likelihood scorer against lm-evaluation-harness, side by side.

    python bench/scoring.py                    # 200 questions per cell (about 17 min on 2 cores)
    python bench/scoring.py --questions 0      # every question
    python bench/scoring.py --models demo      # only the demo's tiny base model
    python bench/scoring.py --models smollm2 --questions 50   # the real model (~15 min)
    python bench/scoring.py --smoke            # seconds: the quick demo's world, 8 questions

Cells (the same requests for every scorer):
  rag-k5   option-text multiple choice on the demo world's `new` questions, the 5 chunks
           the demo's knowledge base retrieves before each question, 0-shot;
  mmlu-5   letter-style MMLU 5-shot on the five subjects in ../shared/data/mmlu
           ($KINJECT_SHARED_DATA/mmlu where that is set).
Models: the demo's tiny base model (pretrained and cached by `kinject demo`; built here if
missing), a ~30M-parameter Llama built from a config (random weights: speed and
exactness do not need trained ones), and smollm2: SmolLM2-135M-Instruct, the real model of
the smollm2-135m-instruct preset (its converted safetensors folder, so lm-eval loads the
very same float32 weights).  ``--smoke`` runs the same code on the quick demo's
world and model, 8 questions per cell and a 2-layer Llama: a check of the script, not a
measurement.

Columns: seconds of kinject's scorer (a question's options in one packed sequence, a prefix
shared by several questions run once into a key/value cache), and of lm_eval's HFLM (model
loaded before the clock starts, the same batch size, fp32); the ratio lm_eval / kinject;
the largest |Δ log-likelihood| against lm_eval; whether every question's prediction is the
same; kinject's achieved FLOP/s (2 × parameters per token it ran, plus attention's
4 × hidden × layers per query-key pair) as a share of this machine's fp32 matmul peak,
measured first; then kinject with bf16 autocast: seconds, FLOP/s as a share of the bf16
matmul peak, largest |Δ| against lm_eval's fp32 and the questions whose prediction differs. `--unpacked` adds kinject one sequence per
option, as lm-eval runs them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KINJECT_SHARED_DATA") or ROOT.parent / "shared" / "data") / "mmlu"
SUBJECTS = ("anatomy", "astronomy", "college_biology", "college_chemistry", "prehistory")


def matmul_peak(dtype: str = "float32", device: str = "cpu") -> float:
    """FLOP/s of a 1024² matmul in ``dtype`` on ``device`` (best of 10, after a second of
    warm-up: on CPUs with AMX the first bf16 calls run at a third of the later speed)."""
    import torch

    a = torch.randn(1024, 1024, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(1024, 1024, dtype=getattr(torch, dtype), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    warm_until = time.perf_counter() + 1.0
    while time.perf_counter() < warm_until:
        a @ b
    best = float("inf")
    for _ in range(10):
        sync()
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    return 10 * 2 * 1024**3 / best


def demo_world(quick: bool = False) -> dict[str, str]:
    """The demo's world, knowledge base and base model (``quick``: the quick demo's)."""
    from rich.console import Console

    from kinject.demo import demo_experiment, load_demo_config
    from kinject.experiments.runner import prepare_world

    config = load_demo_config(None, quick)
    return prepare_world(demo_experiment(config).world, True, Console(stderr=True))


def cell_requests(name: str, world: dict[str, str], limit: int) -> list[list[tuple[str, str]]]:
    """Each question's (context, option) requests, as kinject's score_cell builds them."""
    from dataclasses import replace

    from kinject.config import RagConfig, TaskSpec
    from kinject.evaluation.arms import BaseArm
    from kinject.evaluation.evaluate import load_task, rag_arms
    from kinject.evaluation.runner import cell_prompts

    if name == "rag-k5":
        tasks_dir = Path(world["world"]) / "tasks"
        spec = TaskSpec(name="new", path=str(tasks_dir / "new.jsonl"))
        tasks = [load_task(spec)]
        (arm,) = rag_arms(RagConfig(kb=world["world_kb"], k=[5]))
        shots = 0
    else:
        tasks = [
            load_task(TaskSpec(format="mmlu_csv", path=str(SHARED / "test" / f"{s}_test.csv")))
            for s in SUBJECTS
        ]
        arm, shots = BaseArm(), 5
    questions = []
    per_task = max(1, limit // len(tasks)) if limit else 0
    for task in tasks:
        if per_task:
            task = replace(task, items=task.items[:per_task])
        _, prompts = cell_prompts(task, arm, shots)
        questions += [[(p.context, c) for c in p.continuations] for p in prompts]
    return questions


# hidden size, MLP width, layers (= attention heads) of the Llamas built from a config
LLAMAS = {"llama-30m": (512, 1376, 8), "llama-smoke": (64, 128, 2)}


def config_llama(tokenizer_dir: str, folder: Path, name: str = "llama-30m") -> Path:
    """A Llama of ``LLAMAS[name]``'s shape with random weights and the demo's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, mlp, layers = LLAMAS[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=layers,
        num_key_value_heads=layers,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measure(model_dir: str, questions, batch_size: int, peak: dict, unpacked: bool) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from kinject.config import ModelSpec
    from kinject.models.loading import load_causal_lm
    from kinject.scoring.loglikelihood import LoglikelihoodScorer

    requests = [request for question in questions for request in question]
    model, tokenizer = load_causal_lm(ModelSpec(path=model_dir, device="cpu"))
    params = sum(p.numel() for p in model.parameters())
    row = {"params": params, "questions": len(questions), "requests": len(requests)}

    def timed(**options):
        scorer = LoglikelihoodScorer(model, tokenizer, batch_size, **options)
        started = time.perf_counter()
        scores = scorer.loglikelihood(requests)
        return scores, time.perf_counter() - started

    ours, row["kinject"] = timed()
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size)
    flops = _flops(model, scorer, [scorer.encode_pair(c, x) for c, x in requests])
    ours_bf16, row["kinject bf16"] = timed(bf16=True)
    if unpacked:
        _, row["kinject unpacked"] = timed(share_prefix=False)
    reference = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=batch_size)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i)
        for i, r in enumerate(requests)
    ]
    started = time.perf_counter()
    theirs = [logprob for logprob, _ in reference.loglikelihood(instances, disable_tqdm=True)]
    row["lm_eval"] = time.perf_counter() - started
    for name, scores in (("", ours), (" bf16", ours_bf16)):
        row["max_delta" + name] = max(abs(a.logprob - b) for a, b in zip(scores, theirs))
        row["different" + name] = _different_predictions(questions, scores, theirs)
    row["flops_share"] = flops / row["kinject"] / peak["float32"]
    row["flops_share bf16"] = flops / row["kinject bf16"] / peak["bfloat16"]
    return row


def _different_predictions(questions, ours, theirs: list[float]) -> int:
    """Questions whose highest-scoring option differs between the two scorers."""
    different, position = 0, 0
    for question in questions:
        span = range(position, position + len(question))
        ours_best = max(span, key=lambda i: (ours[i].logprob, -i))
        theirs_best = max(span, key=lambda i: (theirs[i], -i))
        different += ours_best != theirs_best
        position += len(question)
    return different


def _flops(model, scorer, encoded) -> float:
    """FLOPs of the passes kinject's scorer runs (padding not counted): 2 × parameters per
    token, plus 4 × hidden size per layer for each (query, key) pair attention computes
    (the tokens and pairs: :meth:`LoglikelihoodScorer.work`)."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    tokens, pairs = scorer.work(encoded)
    return 2 * params * tokens + 4 * config.hidden_size * config.num_hidden_layers * pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=200, help="per cell; 0: all")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", nargs="+", choices=["demo", "smollm2", *LLAMAS])
    parser.add_argument(
        "--cells", nargs="+", default=["rag-k5", "mmlu-5"], choices=["rag-k5", "mmlu-5"]
    )
    parser.add_argument(
        "--unpacked", action="store_true", help="also time kinject one sequence per option"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the quick demo's world, 8 questions: seconds"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.questions = 8
    args.models = args.models or (["demo", "llama-smoke"] if args.smoke else ["demo", "llama-30m"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    peak = {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16")}
    print(
        f"matmul peak: fp32 {peak['float32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peak['bfloat16'] / 1e9:.1f} GFLOP/s"
    )
    world = demo_world(args.smoke)
    cells = {name: cell_requests(name, world, args.questions) for name in args.cells}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kinject-bench-") as scratch:
        models = {"demo": world["world_model"]}
        if "smollm2" in args.models:
            from kinject.config import ModelSpec
            from kinject.models.gguf import materialized

            models["smollm2"] = materialized(ModelSpec(path="smollm2-135m-instruct")).path
        for name in set(args.models) & set(LLAMAS):
            models[name] = str(config_llama(world["world_model"], Path(scratch) / name, name))
        for model_name in args.models:
            for cell, questions in cells.items():
                row = measure(models[model_name], questions, args.batch_size, peak, args.unpacked)
                rows.append((model_name, cell, row))
                print(f"done: {model_name} {cell}", file=sys.stderr)
    unpacked = " kinject unpacked s |" if args.unpacked else ""
    print(
        f"| model | params | cell | questions | requests | kinject s |{unpacked} lm_eval s "
        "| lm_eval / kinject | max abs Δ loglik | same predictions "
        "| kinject FLOP/s / fp32 peak | kinject bf16 s | FLOP/s / bf16 peak | bf16 max abs Δ "
        "| bf16 predictions differing |"
    )
    print("|---" * (15 if args.unpacked else 14) + "|")
    for model_name, cell, row in rows:
        extra = f" {row['kinject unpacked']:.1f} |" if args.unpacked else ""
        print(
            f"| {model_name} | {row['params'] / 1e6:.1f}M | {cell} | {row['questions']} "
            f"| {row['requests']} | {row['kinject']:.1f} |{extra} {row['lm_eval']:.1f} "
            f"| {row['lm_eval'] / row['kinject']:.2f}x | {row['max_delta']:.1e} "
            f"| {'yes' if row['different'] == 0 else 'no (' + str(row['different']) + ')'} "
            f"| {row['flops_share']:.1%} | {row['kinject bf16']:.1f} "
            f"| {row['flops_share bf16']:.1%} "
            f"| {row['max_delta bf16']:.1e} | {row['different bf16']} of {row['questions']} |"
        )


if __name__ == "__main__":
    main()
