"""Open-answer QA over SQuAD v1.1 dev paragraphs with a real model, closed book vs RAG.

    python examples/smollm2/squad_open_qa.py --out runs/squad-smollm2

SmolLM2-135M-Instruct (the offline preset) answers a seeded sample of SQuAD's dev questions
in its chat template (lm-eval's --apply_chat_template), three ways: closed book (base), with
the question's own paragraph (oracle), and with the top-K paragraphs retrieved from a
knowledge base of all 2,067 dev paragraphs (rag, MiniLM embeddings + FAISS).  Answers are
scored by exact match, token F1 and "answer contained" (a gold answer among the reply's
words), each with a 95% bootstrap interval.  What it writes under --out:

    questions.jsonl   the sampled questions (kinject's open-QA JSONL, gold paragraph ids)
    paragraphs.jsonl  every dev paragraph as a corpus document (the oracle arm's corpus)
    kb/               the knowledge base (kinject kb build on the SQuAD file)
    eval.yaml         the kinject eval config; rerun or change it by hand:
                      kinject eval --config runs/squad-smollm2/eval.yaml --out runs/squad-smollm2/run
    run/              the run folder: table.md, metrics.json, records.jsonl

A second run reuses what is there (the knowledge base, the scored cells).  --model runs
another model (a folder, hub id, .gguf file or preset), --no-chat-template its plain prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad_v1.1_dev" / "dev-v1.1.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/squad-smollm2"))
    parser.add_argument("--squad", type=Path, default=SQUAD, help="a SQuAD v1.1 JSON file")
    parser.add_argument("--questions", type=int, default=200, help="questions sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--no-chat-template", action="store_true")
    args = parser.parse_args()

    from kinject.kb.ingest import squad_paragraph_id

    args.out.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.squad.read_text(encoding="utf-8"))["data"]
    paragraphs, questions = [], []
    for article in data:
        for index, paragraph in enumerate(article["paragraphs"]):
            doc_id = squad_paragraph_id(article["title"], index)
            title = article["title"].replace("_", " ")
            paragraphs.append({"id": doc_id, "title": title, "text": paragraph["context"]})
            for qa in paragraph["qas"]:
                answers = list(dict.fromkeys(a["text"].strip() for a in qa["answers"]))
                questions.append(
                    {
                        "id": qa["id"],
                        "question": qa["question"].strip(),
                        "answers": answers,
                        "doc_ids": [doc_id],
                    }
                )
    sample = random.Random(args.seed).sample(questions, min(args.questions, len(questions)))
    write_jsonl(args.out / "questions.jsonl", sample)
    write_jsonl(args.out / "paragraphs.jsonl", paragraphs)
    kb = args.out / "kb"
    if not (kb / "kb.json").exists():
        kinject("kb", "build", str(args.squad), "--out", str(kb))
    config = {
        "model": {"path": args.model},
        "tasks": [{"name": "squad", "format": "open_jsonl", "path": "questions.jsonl"}],
        "arms": ["base", "oracle", "rag"],
        "corpus": "paragraphs.jsonl",
        "rag": {"kb": "kb", "k": [1, 3]},
        "shots": [0],
        "scoring": {
            "chat_template": not args.no_chat_template,
            "max_new_tokens": 48,
            "batch_size": 16,
        },
        "seed": args.seed,
    }
    (args.out / "eval.yaml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    kinject("eval", "--config", str(args.out / "eval.yaml"), "--out", str(args.out / "run"))
    print((args.out / "run" / "table.md").read_text())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    temporary = path.with_suffix(".partial")
    temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    temporary.replace(path)


def kinject(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "kinject", *argv], check=True)


if __name__ == "__main__":
    main()
