"""Peak memory of `kinject kb build` as the corpus grows: 1x and 10x the documents, one table.

A synthetic corpus of documents made of sentences sampled (seeded) from the SQuAD v1.1 dev
contexts, written as corpus JSONL files of 1,000 documents each (1% of the documents are
exact copies of an earlier one, so de-duplication runs too).  Each build is `python -m kinject
kb build` in its own process; its peak resident memory (``ru_maxrss`` of that child, from
``os.wait4``) is compared with the peak of a build of 20 documents (imports, the embedding
model and the tokenizer: the fixed cost), so ``growth`` is what the corpus costs.  The index
files (FAISS and BM25, which must hold every chunk) are listed separately.

The embedder is a sentence-transformers model built here from a config (MiniLM's tokenizer, a
BERT of width 384 with no layers, mean pooling): the real embedding code path at a cost that
lets a 10x corpus build in minutes on 2 cores.  Its vectors are meaningless; memory and files
are the same shape as MiniLM's (384 dimensions, 256-token chunks).

``--before-src`` runs the same builds with another kinject source tree (e.g. the main branch
before streaming ingestion) in the same run, so the table compares the two:

    mkdir -p /tmp/kinject-before && git archive 13ffd31 src | tar -x -C /tmp/kinject-before
    python bench/ingest_memory.py --before-src /tmp/kinject-before/src
    python bench/ingest_memory.py --smoke       # 40 and 80 documents: a check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD = 1_000  # documents per corpus JSONL file
DUPLICATE_EVERY = 100  # every 100th document copies an earlier one
BASELINE_DOCS = 20
MB = 1_000_000


def find_squad() -> Path:
    shared = os.environ.get("KINJECT_SHARED_DATA")
    bases = [Path(shared)] if shared else []
    bases += [ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]
    for base in bases:
        candidate = base / "squad_v1.1_dev" / "dev-v1.1.json"
        if candidate.exists():
            return candidate
    raise SystemExit("SQuAD dev set not found: set KINJECT_SHARED_DATA or pass --squad")


def squad_sentences(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    sentences = []
    for article in data:
        for paragraph in article["paragraphs"]:
            sentences += [s for s in re.split(r"(?<=[.!?])\s+", paragraph["context"]) if s]
    return sentences


def write_corpus(folder: Path, documents: int, sentences: list[str], seed: int) -> int:
    """``documents`` documents of 8 to 24 sampled sentences in paragraphs, as corpus JSONL
    shards; returns the bytes written."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    texts: list[str] = []
    written = 0
    for first in range(0, documents, SHARD):
        lines = []
        for number in range(first, min(first + SHARD, documents)):
            if number and number % DUPLICATE_EVERY == 0:
                text = texts[rng.randrange(len(texts))]
            else:
                picked = [rng.choice(sentences) for _ in range(rng.randint(8, 24))]
                cut = rng.randint(1, len(picked) - 1)
                text = " ".join(picked[:cut]) + "\n\n" + " ".join(picked[cut:])
            if len(texts) < 5_000:  # the pool copies are drawn from
                texts.append(text)
            row = {"id": f"doc-{number:07d}", "text": text, "title": f"Document {number}"}
            lines.append(json.dumps(row, ensure_ascii=False))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        (folder / f"part-{first // SHARD:05d}.jsonl").write_bytes(data)
        written += len(data)
    return written


def tiny_embedder(folder: Path) -> Path:
    """A sentence-transformers folder: MiniLM's tokenizer, a BERT of width 384 with no layers
    (token and position embeddings, layer norm; seeded random weights), mean pooling,
    normalisation.  384 dimensions like MiniLM, no matrix products: a text's vector does not
    depend on its batch (a dense layer on the pooled vectors would break that)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kinject.config import EmbedderConfig
    from kinject.kb.embedders import resolve_preset

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_preset(EmbedderConfig()).model)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=384,
        num_hidden_layers=0,
        num_attention_heads=1,
        intermediate_size=4,
        max_position_embeddings=512,
    )
    bert = folder / "bert"
    BertModel(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    modules = [Transformer(str(bert), max_seq_length=256), Pooling(384, "mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder / "model"))
    return folder / "model"


def run_build(src: Path, corpus: Path, out: Path, config: Path, log: Path) -> dict:
    """`python -m kinject kb build` in a child process with ``src`` first on its path: its
    peak RSS (``ru_maxrss`` of that child alone), wall time and file sizes."""
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "kinject", "kb", "build", str(corpus), "--out", str(out)]
    command += ["--config", str(config)]
    started = time.perf_counter()
    with open(log, "wb") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"kb build with {src} failed ({child.returncode}):\n{tail}")
    pointer = json.loads((out / "kb.json").read_text(encoding="utf-8"))
    snapshot = out / pointer["snapshot"]
    build = json.loads((snapshot / "build.json").read_text(encoding="utf-8"))
    bm25 = sum(p.stat().st_size for p in (snapshot / "bm25").rglob("*") if p.is_file())
    return {
        "seconds": seconds,
        "peak": usage.ru_maxrss * 1024,  # kilobytes on Linux
        "documents": build["documents"],
        "chunks": build["chunks"],
        "faiss": (snapshot / "dense.faiss").stat().st_size,
        "bm25": bm25,
        "embeddings": (snapshot / "embeddings.npy").stat().st_size,
    }


def measure(codes: list[tuple[str, Path]], corpora: dict, config: Path, work: Path) -> list[dict]:
    """Every corpus built by every code, one code after the other for each corpus (so a
    change in the machine's load falls on both); rows grouped by code."""
    rows = []
    for name, (corpus, size) in corpora.items():
        for label, src in codes:
            out = work / f"kb-{label}-{name}"
            row = run_build(src, corpus, out, config, work / f"{label}-{name}.log")
            shutil.rmtree(out)
            rows.append({"code": label, "corpus": name, "corpus_bytes": size, **row})
            print(
                f"  {label} {name}: {row['seconds']:.0f} s, peak {row['peak'] / MB:.0f} MB",
                file=sys.stderr,
            )
    rows.sort(key=lambda row: [label for label, _ in codes].index(row["code"]))  # stable
    for label, _ in codes:
        own = [row for row in rows if row["code"] == label]
        for row in own:
            row["growth"] = row["peak"] - own[0]["peak"]
            row["rest"] = row["growth"] - row["faiss"] - row["bm25"]
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| code | corpus | documents | text MB | chunks | build s | peak RSS MB | growth MB "
        "| FAISS MB | BM25 MB | growth - indexes MB |"
    )
    lines = [head, "|" + "---|" * 2 + "---:|" * 9]
    for r in rows:
        lines.append(
            f"| {r['code']} | {r['corpus']} | {r['documents']:,} | {r['corpus_bytes'] / MB:.1f} "
            f"| {r['chunks']:,} | {r['seconds']:.1f} | {r['peak'] / MB:.0f} "
            f"| {r['growth'] / MB:.0f} | {r['faiss'] / MB:.1f} | {r['bm25'] / MB:.1f} "
            f"| {r['rest'] / MB:.0f} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict], small: str, large: str) -> str:
    lines = []
    for code in dict.fromkeys(r["code"] for r in rows):
        by = {r["corpus"]: r for r in rows if r["code"] == code}
        a, b = by[small], by[large]
        lines.append(
            f"{code}: {large} / {small}: text {b['corpus_bytes'] / a['corpus_bytes']:.1f}x, "
            f"peak {b['peak'] / a['peak']:.2f}x, growth {b['growth'] / max(a['growth'], 1):.2f}x, "
            f"growth - indexes {b['rest'] / max(a['rest'], 1):.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python bench/ingest_memory.py --before-src /tmp/kinject-before/src",
    )
    parser.add_argument("--docs", type=int, default=2_000, help="Documents at 1x (2,000).")
    parser.add_argument("--scale", type=int, default=10, help="The larger corpus: this many x.")
    parser.add_argument("--before-src", type=Path, help="Also build with this kinject src.")
    parser.add_argument(
        "--squad",
        type=Path,
        help="dev-v1.1.json (default: $KINJECT_SHARED_DATA or ../shared/data/…)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="40 documents, 2x: seconds.")
    args = parser.parse_args(argv)
    docs, scale = (40, 2) if args.smoke else (args.docs, args.scale)
    small, large = "1x", f"{scale}x"

    sentences = squad_sentences(args.squad or find_squad())
    with tempfile.TemporaryDirectory(prefix="ingest-memory-") as tmp:
        work = Path(tmp)
        model = tiny_embedder(work / "embedder")
        config = work / "kb.yaml"
        config.write_text(f"embedder: {{model: {model}}}\n", encoding="utf-8")
        corpora = {}
        for name, count in (("base", BASELINE_DOCS), (small, docs), (large, docs * scale)):
            folder = work / f"corpus-{name}"
            corpora[name] = (folder, write_corpus(folder, count, sentences, args.seed))
        codes = [("after", ROOT / "src")]
        if args.before_src:
            codes.insert(0, ("before", args.before_src.resolve()))
        rows = measure(codes, corpora, config, work)
    print(table(rows))
    print(ratios(rows, small, large))
    print(
        f"growth: peak RSS minus the peak of a {BASELINE_DOCS}-document build with the same "
        "code (imports, embedding model); the FAISS and BM25 indexes hold every chunk, so they "
        "grow with the corpus by design."
    )


if __name__ == "__main__":
    sys.exit(main())
