"""Every multiple-choice cell of a kinject run scored again by lm-evaluation-harness itself,
on the same model, and compared question by question.

    kinject eval --config examples/smollm2/mmlu.yaml --out runs/mmlu-smollm2
    python examples/smollm2/mmlu_vs_lm_eval.py runs/mmlu-smollm2

The run is exported with `kinject export lm-eval` (kinject's exact prompts as lm-eval tasks,
written to RUN/lm-eval), lm-eval builds its requests from those tasks (its own k-shot
sampler, its chat rendering when the run used one), and its ``HFLM`` scores them with the
run's model loaded once.  Printed per cell: kinject's and lm-eval's accuracy, the questions
whose prediction differs, and the largest |Δ log-likelihood|.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a kinject eval run folder")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from kinject.config import EvalConfig, load_config
    from kinject.export.lm_eval import export_lm_eval
    from kinject.models.loading import load_causal_lm

    out = args.run / "lm-eval"
    if not (out / "manifest.json").exists():
        export_lm_eval(args.run, out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    config = load_config(EvalConfig, args.run / "config.yaml")
    model, tokenizer = load_causal_lm(config.model)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
    manager = TaskManager(include_path=str(out), include_defaults=False)
    print(
        "| cell | questions | kinject acc | lm-eval acc | predictions differing | max abs Δ loglik |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    differing = 0
    for entry in manifest["tasks"]:
        records = [json.loads(line) for line in Path(entry["cell_file"]).read_text().splitlines()]
        task = manager.load([entry["name"]])["tasks"][entry["name"]]
        task.set_config(key="num_fewshot", value=entry["num_fewshot"])
        task.set_fewshot_seed(seed=1234)
        chat = entry.get("chat_template")
        requests = {}
        if chat is not None:
            requests = {
                "apply_chat_template": True,
                "fewshot_as_multiturn": chat["multiturn"],
                "chat_template": reference.apply_chat_template,
            }
        task.build_all_requests(limit=None, rank=0, world_size=1, **requests)
        instances = sorted(task.instances, key=lambda inst: (inst.doc_id, inst.idx))
        scores = reference.loglikelihood(instances, disable_tqdm=True)
        theirs: dict[int, list[float]] = {}
        for instance, (logprob, _) in zip(instances, scores):
            theirs.setdefault(instance.doc_id, []).append(logprob)
        docs = list(task.test_docs())
        by_id = {doc["id"]: theirs[i] for i, doc in enumerate(docs)}
        delta, different, right = 0.0, 0, 0
        for record in records:
            lls = by_id[record["question_id"]]
            pred = max(range(len(lls)), key=lambda i: (lls[i], -i))  # numpy.argmax's ties
            different += pred != record["pred"]
            right += pred == record["answer"]
            delta = max(delta, *(abs(a - b) for a, b in zip(lls, record["loglikelihoods"])))
        differing += different
        kinject_acc = sum(r["correct"] for r in records) / len(records)
        print(
            f"| {entry['cell']['split']} {entry['cell']['shots']}-shot | {len(records)} "
            f"| {kinject_acc:.3f} | {right / len(records):.3f} | {different} | {delta:.1e} |"
        )
    print(f"predictions differing in all: {differing}", file=sys.stderr)


if __name__ == "__main__":
    main()
