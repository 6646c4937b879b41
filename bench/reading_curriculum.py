"""How fast the tiny base model learns to read, with and without the short-bio curriculum.

Trains only the reading warm-up of the base model's recipe (the same documents and batches
`kinject demo` trains on) and scores oracle-context accuracy on `new` (240 questions, gold
bio before the question) every 100 steps:

    python bench/reading_curriculum.py                      # curriculum, seed 0
    python bench/reading_curriculum.py --flat --seeds 0 1   # bios of all six facts from the start
    python bench/reading_curriculum.py --smoke              # a small world, 4 steps: seconds

Each run is about 2-3 minutes on 2 cores.  Prints one row per (variant, seed, step).
"""

from __future__ import annotations

import argparse
import random
import time


def run(
    config, steps: int, world_config=None, questions: int = 240, every: int = 100
) -> list[tuple[int, float, float]]:
    """``(step, oracle accuracy on new, seconds)`` every ``every`` steps of the warm-up."""
    from kinject.config import TinyModelConfig, WorldConfig
    from kinject.models.base_model import pretraining_batches, train_world_tokenizer
    from kinject.models.tiny import build_tiny_llama
    from kinject.scoring.loglikelihood import LoglikelihoodScorer
    from kinject.tasks.items import MCItem, Task
    from kinject.tasks.prompts import build_prompt
    from kinject.training.loop import Schedule, train
    from kinject.world.build import build_world, kb_documents, task_questions

    world = build_world(world_config or WorldConfig())
    tokenizer = train_world_tokenizer(world, TinyModelConfig(), config)
    model = build_tiny_llama(TinyModelConfig(), tokenizer, seed=config.seed)
    batch_for = pretraining_batches(
        world, tokenizer, config.model_copy(update={"reading_warmup_steps": steps})
    )

    kb = {d["id"]: d["text"] for d in kb_documents(world)}
    rows = task_questions(world, "new")
    random.Random(0).shuffle(rows)
    items = [
        MCItem(
            r["id"],
            r["question"],
            tuple(r["choices"]),
            r["answer"],
            r["subject"],
            tuple(r["doc_ids"]),
        )
        for r in rows[:questions]
    ]
    task = Task("new", tuple(items))
    prompts = [build_prompt(task, item, 0, kb[item.doc_ids[0]]) for item in items]
    requests = [(p.context, c) for p in prompts for c in p.continuations]
    curve, began = [], time.perf_counter()

    def score(step: int) -> None:
        if step % every:
            return
        scorer = LoglikelihoodScorer(model, tokenizer, batch_size=64, bf16=True)
        scores = scorer.loglikelihood(requests)
        correct = sum(
            max(range(4), key=lambda j: scores[4 * i + j].logprob) == item.answer
            for i, item in enumerate(items)
        )
        curve.append((step, correct / len(items), time.perf_counter() - began))
        model.train()

    schedule = Schedule(
        steps, config.learning_rate, config.warmup_steps, config.weight_decay, kind=config.schedule
    )
    train(model, batch_for, schedule, bf16=True, show_progress=False, after_step=score)
    return curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--flat", action="store_true", help="no curriculum: six-fact bios throughout"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a small world, 4 steps, 24 questions: seconds"
    )
    args = parser.parse_args(argv)
    from kinject.config import PretrainConfig, WorldConfig

    world, questions, every = None, 240, 100
    if args.smoke:
        small = WorldConfig(n_known=20, n_new=24, n_updated=5, n_reading=20, n_dev=5)
        world, questions, every, args.steps = small, 24, 2, 4

    print(f"{'variant':28s} {'seed':>4s} {'step':>5s} {'oracle acc on new':>18s} {'seconds':>8s}")
    for seed in args.seeds:
        config = PretrainConfig(seed=seed)
        if args.flat:
            config = config.model_copy(update={"reading_curriculum": [6]})
        variant = f"curriculum {config.reading_curriculum}"
        for step, accuracy, seconds in run(config, args.steps, world, questions, every):
            print(f"{variant:28s} {seed:4d} {step:5d} {accuracy:18.3f} {seconds:8.0f}", flush=True)


if __name__ == "__main__":
    main()
