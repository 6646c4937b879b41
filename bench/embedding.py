"""What embedding every document in a pass of its own costs, against batches by token length.

kinject embeds a knowledge base's chunks one per pass (``Embedder.embed``), so that a vector
is a function of its text alone on any CPU and `kb update` writes what a fresh build writes;
search queries, which are never stored, go in batches of texts of one token length
(``Embedder.embed_queries``).  This measures both ways on the same texts with the default
embedder (MiniLM, one thread): seconds, the ratio, and how far the batched vectors are from
the alone ones (on CPUs with AVX-512 or AMX they differ in the last bits; elsewhere they may
be equal).

    python bench/embedding.py                   # 300 SQuAD paragraphs and 1,000 questions
    python bench/embedding.py --smoke           # 12 and 40: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def squad_texts(paragraphs: int, questions: int) -> dict[str, list[str]]:
    shared = Path(os.environ.get("KINJECT_SHARED_DATA") or ROOT.parent / "shared" / "data")
    source = shared / "squad_v1.1_dev" / "dev-v1.1.json"
    if not source.exists():
        sys.exit(f"{source} not found; set KINJECT_SHARED_DATA")
    data = json.loads(source.read_text(encoding="utf-8"))["data"]
    contexts = [p["context"] for a in data for p in a["paragraphs"]]
    asked = [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    return {"paragraphs": contexts[:paragraphs], "questions": asked[:questions]}


def measure(embedder, texts: list[str]) -> dict:
    import numpy as np

    started = time.perf_counter()
    alone = embedder.embed(texts)
    alone_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = embedder.embed_queries(texts)
    batched_s = time.perf_counter() - started
    limit = embedder.model.max_seq_length
    lengths = [
        len(ids)
        for ids in embedder.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    ]
    return {
        "texts": len(texts),
        "tokens": sum(lengths) / len(lengths),
        "alone": alone_s,
        "batched": batched_s,
        "delta": float(np.abs(alone - batched).max()),
        "equal": int(sum(np.array_equal(a, b) for a, b in zip(alone, batched))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--questions", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=64, help="embed_queries' batches")
    parser.add_argument("--smoke", action="store_true", help="12 paragraphs, 40 questions")
    args = parser.parse_args(argv)
    if args.smoke:
        args.paragraphs, args.questions = 12, 40
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kinject.config import EmbedderConfig
    from kinject.kb.embedders import make_embedder

    embedder = make_embedder(EmbedderConfig(batch_size=args.batch_size))
    embedder.embed(["warm-up"])  # the model loads outside the clock
    print(
        "| texts | n | mean tokens | alone s | batched s | alone / batched "
        "| max abs Δ | vectors equal |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, texts in squad_texts(args.paragraphs, args.questions).items():
        row = measure(embedder, texts)
        print(
            f"| {name} | {row['texts']} | {row['tokens']:.0f} | {row['alone']:.2f} "
            f"| {row['batched']:.2f} | {row['alone'] / row['batched']:.2f}x "
            f"| {row['delta']:.1e} | {row['equal']} of {row['texts']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
