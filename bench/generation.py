"""Greedy open answers: kinject's batched generator against transformers' ``generate`` one
prompt at a time and lm-evaluation-harness's ``generate_until``, on the same prompts.

    python bench/generation.py                  # SmolLM2-135M-Instruct, 48 SQuAD questions
    python bench/generation.py --questions 16 --max-new-tokens 64
    python bench/generation.py --smoke          # a 2-layer Llama, 4 questions: seconds

Prompts: SQuAD v1.1 dev questions (a seeded sample) with their own paragraph before them
(the oracle arm's prompt), rendered with the model's chat template when it has one, so that
an answer is the assistant's turn up to its end token; a model without one (the smoke's)
gets the plain prompt and stops at a newline.  Greedy decoding everywhere, fp32, CPU.

  kinject        kinject.scoring.generation.GreedyGenerator: prompts sorted by length,
                 left-padded batches of --batch-size, a batch ends once every row has ended;
  transformers   model.generate on one prompt at a time (no padding; the usual loop);
  lm_eval        HFLM.generate_until, the same batch size (its own length-sorted batches).

Before the clock starts, kinject answers two of the prompts once (untimed), so that
first-call costs (allocation, kernel selection, a CPU's bf16/AMX warm-up) fall on no one's
measurement. Printed: seconds and answers per second of each, the ratio of each to kinject, and how many
answers are identical to kinject's (greedy decoding of the same prompts: they differ only
where batching changes a near tie).  Shared data is read from $KINJECT_SHARED_DATA, else
../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KINJECT_SHARED_DATA") or ROOT.parent / "shared" / "data")


def squad_items(n: int, seed: int) -> list[tuple[str, str]]:
    """``(paragraph, question)`` pairs, a seeded sample of SQuAD v1.1 dev."""
    path = SHARED / "squad_v1.1_dev" / "dev-v1.1.json"
    pairs = [
        (paragraph["context"], qa["question"].strip())
        for article in json.loads(path.read_text(encoding="utf-8"))["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    return random.Random(seed).sample(pairs, n)


def prompts_for(tokenizer, pairs: list[tuple[str, str]]) -> tuple[list[str], bool]:
    """The oracle arm's open prompts, chat-rendered when the tokenizer has a template."""
    from kinject.tasks.items import OpenItem, Task
    from kinject.tasks.prompts import ChatFormat, build_open_prompt

    chat = ChatFormat(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    task = Task(name="squad", items=(), dev=())
    prompts = [
        build_open_prompt(task, OpenItem(f"q{i}", question, ("-",)), 0, paragraph, chat=chat)
        for i, (paragraph, question) in enumerate(pairs)
    ]
    return prompts, chat is not None


def one_at_a_time(model, tokenizer, prompts, max_new_tokens: int, chat: bool) -> list[str]:
    import torch

    from kinject.scoring.generation import end_tokens

    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat).input_ids
        stopping = {} if chat else {"stop_strings": ["\n"], "tokenizer": tokenizer}
        with torch.no_grad():
            output = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=end_tokens(model, tokenizer) if chat else tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                **stopping,
            )
        text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        answers.append(text if chat else text.split("\n")[0])
    return [answer.strip() for answer in answers]


def lm_eval_answers(model, tokenizer, prompts, max_new_tokens: int, batch_size: int, chat: bool):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    until = [] if chat else ["\n"]  # lm-eval adds the tokenizer's EOS to these
    instances = [
        Instance(
            request_type="generate_until",
            doc={},
            arguments=(
                prompt,
                {"until": until, "max_gen_toks": max_new_tokens, "do_sample": False},
            ),
            idx=i,
        )
        for i, prompt in enumerate(prompts)
    ]
    return [answer.strip() for answer in reference.generate_until(instances, disable_tqdm=True)]


def smoke_model(folder: Path) -> str:
    """bench/scoring.py's 2-layer ``llama-smoke`` (random weights) with a byte-level BPE
    trained here on SQuAD paragraphs."""
    import importlib.util

    from kinject.models.tokenizer import train_bpe_tokenizer

    spec = importlib.util.spec_from_file_location(
        "kinject_bench_scoring", Path(__file__).with_name("scoring.py")
    )
    scoring = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scoring)
    texts = [paragraph for paragraph, _ in squad_items(200, 1)]
    train_bpe_tokenizer(texts, vocab_size=800).save_pretrained(folder / "tokenizer")
    return str(scoring.config_llama(str(folder / "tokenizer"), folder / "llama", "llama-smoke"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="any kinject model path")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a 2-layer Llama, 4 questions")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from kinject.config import ModelSpec
    from kinject.models.loading import load_causal_lm
    from kinject.scoring.generation import GreedyGenerator

    with tempfile.TemporaryDirectory(prefix="kinject-bench-") as scratch:
        if args.smoke:
            args.questions, args.max_new_tokens, args.batch_size = 4, 8, 2
            args.model = smoke_model(Path(scratch))
        model, tokenizer = load_causal_lm(ModelSpec(path=args.model, device="cpu"))
        prompts, chat = prompts_for(tokenizer, squad_items(args.questions, args.seed))
        generator = GreedyGenerator(
            model, tokenizer, args.batch_size, args.max_new_tokens, end_of_turn=chat
        )
        timings, answers = {}, {}
        runs = {
            "kinject": lambda: generator.generate(prompts),
            "transformers": lambda: one_at_a_time(
                model, tokenizer, prompts, args.max_new_tokens, chat
            ),
            "lm_eval": lambda: lm_eval_answers(
                model, tokenizer, prompts, args.max_new_tokens, args.batch_size, chat
            ),
        }
        generator.generate(prompts[:2])  # untimed: first-call costs fall on no one's clock
        for name, run in runs.items():
            torch.manual_seed(0)
            started = time.perf_counter()
            answers[name] = run()
            timings[name] = time.perf_counter() - started
            print(f"done: {name} {timings[name]:.1f} s", file=sys.stderr)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model {args.model} ({params / 1e6:.1f}M), {len(prompts)} prompts "
        f"({'chat template' if chat else 'plain, stop at newline'}), "
        f"max {args.max_new_tokens} new tokens, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "| generator | seconds | answers/s | seconds / kinject's | answers identical to kinject's |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, seconds in timings.items():
        same = sum(a == b for a, b in zip(answers[name], answers["kinject"]))
        print(
            f"| {name} | {seconds:.1f} | {len(prompts) / seconds:.2f} "
            f"| {seconds / timings['kinject']:.2f}x | {same} of {len(prompts)} |"
        )


if __name__ == "__main__":
    main()
