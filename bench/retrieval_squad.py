"""Retrieval quality on the real SQuAD v1.1 dev set: BM25, dense and hybrid from one run,
beside a plain baseline.

The 2,067 paragraphs of ``dev-v1.1.json`` are the knowledge base; each of the 10,570
questions names its paragraph, so recall@k and MRR are exact.  The baseline is what the
field's retrieval papers index (DPR, BEIR): each paragraph as its article title and its
text, the same embedding model into a FAISS flat index, and bm25s with English stopwords
and Snowball stems.  Prints both tables, kinject's recall as a share of the baseline's
(docs/knowledge-bases.md copies them) and the time each step took.

    python bench/retrieval_squad.py                       # default embedder (MiniLM), flat index
    python bench/retrieval_squad.py --index hnsw --out bench/results/squad.json
    python bench/retrieval_squad.py --smoke      # 12 paragraphs of 3 articles: seconds
    python bench/retrieval_squad.py --no-baseline   # kinject's retrievers alone
    python bench/retrieval_squad.py --chunk-size 512 --no-fusion-grid  # paragraphs kept whole

Then hybrid's fusion is chosen as ``kinject kb eval --validation`` chooses it: on the
questions of half the articles (seeded), and scored on the other half's, beside dense and
BM25 on the same half (``--no-fusion-grid`` leaves this out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Hit:
    row: int  # the paragraph's position in the baseline's corpus


class FlatDense:
    """The plain dense baseline: one embedding per paragraph (title + text), a flat index."""

    name = "baseline dense (title + text, FAISS flat)"

    def __init__(self, model_path: str, texts: list[str], query_prefix: str = ""):
        import faiss
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_path, device="cpu")
        self.query_prefix = query_prefix  # what the embedder's preset puts before a query
        vectors = self._encode(texts)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def _encode(self, texts: list[str]):
        return self.model.encode(
            texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False
        )

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        _, rows = self.index.search(self._encode([self.query_prefix + q for q in queries]), k)
        return [[Hit(int(row)) for row in found if row >= 0] for found in rows]


class PlainBM25:
    """The plain BM25 baseline: bm25s over title + text, English stopwords, Snowball stems."""

    name = "baseline BM25 (bm25s, title + text)"

    def __init__(self, texts: list[str]):
        import bm25s
        import Stemmer

        self.stemmer = Stemmer.Stemmer("english")
        self.bm25 = bm25s.BM25()
        self.bm25.index(self._tokens(texts), show_progress=False)
        self.size = len(texts)

    def _tokens(self, texts: list[str]):
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        k = min(k, self.size)  # bm25s refuses a k above the corpus size
        rows, _ = self.bm25.retrieve(self._tokens(queries), k=k, show_progress=False)
        return [[Hit(int(row)) for row in found] for found in rows]


def baseline_rows(squad: Path, embedder: str, *question_sets) -> list[list[dict]]:
    """The plain baselines, built once, on each set of questions, scored by the same function
    as kinject."""
    from kinject.config import EmbedderConfig
    from kinject.kb.embedders import resolve_preset
    from kinject.kb.ingest import squad_paragraph_id
    from kinject.kb.quality import evaluate_retriever

    doc_ids, texts = [], []
    for article in json.loads(squad.read_text(encoding="utf-8"))["data"]:
        title = article["title"].replace("_", " ")
        for index, paragraph in enumerate(article["paragraphs"]):
            doc_ids.append(squad_paragraph_id(article["title"], index))
            texts.append(f"{title}\n{paragraph['context']}")
    preset = resolve_preset(EmbedderConfig(model=embedder))
    retrievers = [FlatDense(preset.model, texts, preset.query_prefix), PlainBM25(texts)]
    return [
        [evaluate_retriever(retriever, doc_ids, queries) for retriever in retrievers]
        for queries in question_sets
    ]


def split_articles(squad: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two SQuAD files: the questions of half the articles (a seeded choice) to choose on,
    and the other half's to score on."""
    import random

    data = json.loads(squad.read_text(encoding="utf-8"))
    articles = list(data["data"])
    random.Random(seed).shuffle(articles)
    half = len(articles) // 2
    paths = []
    for name, part in (("validation", articles[:half]), ("test", articles[half:])):
        path = folder / f"squad-{name}.json"
        path.write_text(json.dumps({**data, "data": part}), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def find_squad() -> Path:
    for base in (ROOT.parent / "shared", ROOT / "shared", Path("/work/shared")):
        candidate = base / "data" / "squad_v1.1_dev" / "dev-v1.1.json"
        if candidate.exists():
            return candidate
    raise SystemExit("SQuAD dev set not found: pass --squad PATH/dev-v1.1.json")


def smoke_subset(squad: Path, folder: Path) -> Path:
    """The first 4 paragraphs of the first 3 articles, in the dev set's layout."""
    data = json.loads(squad.read_text(encoding="utf-8"))
    articles = [{**a, "paragraphs": a["paragraphs"][:4]} for a in data["data"][:3]]
    path = folder / "squad-smoke.json"
    path.write_text(json.dumps({**data, "data": articles}), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squad", type=Path, help="dev-v1.1.json (default: ../shared/data/…)")
    parser.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--embedder", default="minilm", help="Preset, folder or hub id.")
    parser.add_argument(
        "--chunk-size",
        type=int,
        help="kb chunking.size in the embedder's tokens (default: kinject's, 256); 512 keeps "
        "all but a few paragraphs whole",
    )
    parser.add_argument("--out", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument("--smoke", action="store_true", help="12 paragraphs: seconds.")
    parser.add_argument("--no-baseline", action="store_true", help="kinject's retrievers only.")
    parser.add_argument(
        "--no-fusion-grid", action="store_true", help="Leave out choosing hybrid's fusion."
    )
    args = parser.parse_args(argv)

    from rich.console import Console

    from kinject.config import KBConfig
    from kinject.kb.quality import evaluate_kb, load_queries
    from kinject.kb.report import fusion_grid_markdown, quality_markdown, quality_table
    from kinject.kb.retrievers import Fusion
    from kinject.kb.store import SourceOptions, build_kb

    squad = args.squad or find_squad()
    chunking = {} if args.chunk_size is None else {"chunking": {"size": args.chunk_size}}
    config = KBConfig(index={"kind": args.index}, embedder={"model": args.embedder}, **chunking)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            squad = smoke_subset(squad, Path(tmp))
        kb_dir = Path(tmp) / "squad-kb"
        started = time.perf_counter()
        change = build_kb([squad], kb_dir, config, SourceOptions(strict=True))
        built = time.perf_counter() - started
        started = time.perf_counter()
        # the whole set: hybrid as plain RRF (the default fusion was chosen on half of it)
        report = evaluate_kb(kb_dir, squad, fusion=Fusion("rrf", 0.5))
        evaluated = time.perf_counter() - started
        validation, test = split_articles(squad, Path(tmp))
        tuned = None
        if not args.no_fusion_grid:
            started = time.perf_counter()
            tuned = evaluate_kb(kb_dir, test, validation=validation)
            tuned_s = time.perf_counter() - started
        baseline, held_out_baseline, baseline_s = [], [], 0.0
        if not args.no_baseline:
            started = time.perf_counter()
            baseline, held_out_baseline = baseline_rows(
                squad, args.embedder, load_queries(squad), load_queries(test)
            )
            baseline_s = time.perf_counter() - started
    console.print(quality_table(report.rows + baseline, "SQuAD v1.1 dev"))
    print(report.note)
    print(quality_markdown(report.rows + baseline))
    print(
        f"knowledge base: {change.documents} paragraphs, {change.chunks} chunks "
        f"({args.embedder}, {args.index}); built in {built:.0f} s; "
        f"{report.rows[0]['n']} questions x {len(report.rows)} retrievers in {evaluated:.0f} s"
    )
    if baseline:
        print(f"baselines: built and evaluated in {baseline_s:.0f} s")
        print(ratio_markdown(report.rows, baseline))
    if tuned is not None:
        print("hybrid's fusion, chosen on the questions of half the articles (by MRR@20):")
        print(fusion_grid_markdown(tuned.fusion_grid))
        print(f"scored on the other half's questions (hybrid: {tuned.fusion.describe()}):")
        print(quality_markdown(tuned.rows + held_out_baseline))
        print(f"{tuned.note}; chosen and scored in {tuned_s:.0f} s")
        if held_out_baseline:
            print(ratio_markdown(tuned.rows, held_out_baseline))
    if args.out is not None:
        summary = {"whole_set": report.rows + baseline, "note": report.note}
        if tuned is not None:
            summary |= {
                "fusion_grid": tuned.fusion_grid,
                "held_out": tuned.rows + held_out_baseline,
                "held_out_note": tuned.note,
            }
        args.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")


def ratio_markdown(rows: list[dict], baseline: list[dict]) -> str:
    """kinject's recall as a share of its counterpart's: dense of the dense baseline, BM25 of
    the BM25 baseline, hybrid of the better baseline at each rank."""
    keys = ("recall@1", "recall@5", "recall@20")
    dense, bm25 = baseline
    better = {key: max(dense[key], bm25[key]) for key in keys}
    against = {"dense": dense, "bm25": bm25, "hybrid": better}
    lines = [
        "| kinject retriever | against | recall@1 ratio | recall@5 ratio | recall@20 ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        other = against[row["retriever"]]
        name = other.get("retriever", "the better baseline at each rank")
        ratios = " | ".join(f"{row[key] / other[key]:.3f}" for key in keys)
        lines.append(f"| {row['retriever']} | {name} | {ratios} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
