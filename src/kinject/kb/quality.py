"""Retrieval quality: recall@k and MRR against the gold documents questions name.

A question's gold documents are its ``doc_ids``.  Chunks are ranked; a chunk is a hit when its
document is gold.  recall@k is the share of a question's gold documents found among its top k
chunks (for one gold document: whether it was found), averaged over questions; MRR@n is the
mean of 1 / rank of the first gold chunk within the top n (0 when none).  Gold ids that the
knowledge base dropped as exact duplicates count as the document it kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kinject.errors import DataError, KinjectError
from kinject.evaluation.stats import bootstrap_ci
from kinject.fileio import parse_json, read_bytes, read_jsonl
from kinject.kb.retrievers import FUSIONS, Fusion

DEFAULT_KS = (1, 5, 20)


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    doc_ids: tuple[str, ...]


def load_queries(path: str | Path) -> list[Query]:
    """Questions with gold ``doc_ids``: kinject multiple-choice or open-QA JSONL, or SQuAD JSON."""
    path = Path(path)
    if path.suffix == ".json":
        return _squad_queries(path)
    queries = []
    for line, row in read_jsonl(path):
        for key in ("id", "question"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise DataError(path, line, key, "missing or not a non-empty string")
        doc_ids = row.get("doc_ids")
        if (
            not isinstance(doc_ids, list)
            or not doc_ids
            or not all(isinstance(d, str) for d in doc_ids)
        ):
            raise DataError(
                path, line, "doc_ids", "retrieval quality needs a non-empty list of document ids"
            )
        queries.append(Query(row["id"], row["question"], tuple(doc_ids)))
    return queries


def _squad_queries(path: Path) -> list[Query]:
    from kinject.kb.ingest import squad_paragraph_id

    try:
        data = parse_json(path, None, read_bytes(path).decode("utf-8"))
        articles = data["data"]
        queries = []
        for article in articles:
            for index, paragraph in enumerate(article["paragraphs"]):
                doc_id = squad_paragraph_id(article["title"], index)
                for qa in paragraph["qas"]:
                    queries.append(Query(qa["id"], qa["question"], (doc_id,)))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DataError(path, None, None, f"not a SQuAD-format JSON file ({error})") from None
    return queries


def evaluate_retriever(
    retriever,
    chunk_doc_ids: Sequence[str],
    queries: Sequence[Query],
    aliases: dict[str, str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    batch_size: int = 256,
    on_batch=None,
) -> dict:
    """recall@k for each k and MRR@max(k), each with a 95% bootstrap CI over questions."""
    if not queries:
        raise KinjectError("no questions to evaluate retrieval on")
    aliases = aliases or {}
    depth = max(ks)
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    reciprocal_ranks: list[float] = []
    for first in range(0, len(queries), batch_size):
        batch = queries[first : first + batch_size]
        for query, hits in zip(batch, retriever.search([q.text for q in batch], depth)):
            gold = {aliases.get(doc_id, doc_id) for doc_id in query.doc_ids}
            docs = [chunk_doc_ids[hit.row] for hit in hits]
            for k in ks:
                recalls[k].append(len(gold & set(docs[:k])) / len(gold))
            rank = next((i for i, doc in enumerate(docs, start=1) if doc in gold), None)
            reciprocal_ranks.append(1.0 / rank if rank else 0.0)
        if on_batch:
            on_batch(len(batch))
    result = {"retriever": retriever.name, "n": len(queries)}
    for k in ks:
        result[f"recall@{k}"] = round(sum(recalls[k]) / len(queries), 4)
        result[f"recall@{k}_ci"] = list(bootstrap_ci(recalls[k], seed, 1000))
    result[f"mrr@{depth}"] = round(sum(reciprocal_ranks) / len(queries), 4)
    result[f"mrr@{depth}_ci"] = list(bootstrap_ci(reciprocal_ranks, seed, 1000))
    return result


def missing_gold(queries: Sequence[Query], doc_ids: set[str], aliases: dict[str, str]) -> int:
    """Questions whose gold documents are none of them in the knowledge base."""
    return sum(
        1
        for query in queries
        if not any(aliases.get(doc_id, doc_id) in doc_ids for doc_id in query.doc_ids)
    )


@dataclass(frozen=True)
class QualityReport:
    rows: list[dict]
    note: str  # e.g. "10570 questions; 0 name no document in the knowledge base"
    fusion_grid: list[dict] = field(default_factory=list)  # on the validation questions
    fusion: Fusion | None = None  # the hybrid retriever's, chosen there (or as given)


FUSION_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FUSION_DEPTH = 100  # each list's depth before fusion (as HybridRetriever's)


class _FusedRankings:
    """A hybrid retriever over rankings fetched once: every fusion of a grid is scored on
    the same dense and BM25 lists."""

    name = "hybrid"

    def __init__(self, rankings: dict[str, tuple[list, list]], fusion: Fusion):
        self.rankings = rankings
        self.fusion = fusion

    def search(self, queries: Sequence[str], k: int) -> list[list]:
        return [self.fusion.fuse(*self.rankings[query], k) for query in queries]


def choose_fusion(
    hybrid,
    chunk_doc_ids: Sequence[str],
    queries: Sequence[Query],
    aliases=None,
    rrf_k: int = 60,
    on_batch=None,
) -> tuple[Fusion, list[dict]]:
    """The fusion (RRF or convex, dense weight 0.1 … 0.9) with the highest MRR@20 on
    ``queries`` (ties: higher recall@1, then the earlier in the grid), and every setting's
    figures (``chosen`` marks the one)."""
    texts = list(dict.fromkeys(query.text for query in queries))
    rankings: dict[str, tuple[list, list]] = {}
    for first in range(0, len(texts), 256):
        batch = texts[first : first + 256]
        rankings.update(zip(batch, hybrid.rankings(batch, FUSION_DEPTH)))
        if on_batch:
            on_batch(len(batch))
    grid = []
    for kind in FUSIONS:
        for weight in FUSION_WEIGHTS:
            fusion = Fusion(kind, weight, rrf_k)
            row = evaluate_retriever(
                _FusedRankings(rankings, fusion), chunk_doc_ids, queries, aliases
            )
            grid.append({"fusion": kind, "dense_weight": weight, **row})
    key = f"mrr@{max(DEFAULT_KS)}"
    best = max(range(len(grid)), key=lambda i: (grid[i][key], grid[i]["recall@1"], -i))
    grid[best]["chosen"] = True
    return Fusion(grid[best]["fusion"], grid[best]["dense_weight"], rrf_k), grid


def evaluate_kb(
    kb_dir: str | Path,
    questions: str | Path,
    retrievers: Sequence[str] = ("dense", "bm25", "hybrid"),
    out: str | Path | None = None,
    show_progress: bool = True,
    fusion: Fusion | None = None,
    validation: str | Path | None = None,
    rerank=None,
) -> QualityReport:
    """``kinject kb eval``: every retriever on the same questions, one table.  Hybrid fuses
    by ``fusion``, or, given ``validation`` questions, by the fusion chosen on them
    (:func:`choose_fusion`); with ``rerank`` (a :class:`RerankConfig`), each retriever's top
    chunks reordered by the cross-encoder."""
    from kinject.fileio import write_json
    from kinject.kb.store import KnowledgeBase
    from kinject.progress import progress_bar

    kb = KnowledgeBase.open(kb_dir)
    queries = load_queries(questions)
    doc_ids = {row["id"] for row in kb.manifest}
    missing = missing_gold(queries, doc_ids, kb.duplicates)
    chunk_doc_ids = [chunk.doc_id for chunk in kb.chunks]
    grid: list[dict] = []
    fusion = fusion or Fusion()
    if validation is not None:
        held_out = load_queries(validation)
        overlap = {q.text for q in held_out} & {q.text for q in queries}
        if overlap:
            raise KinjectError(
                f"{validation}: {len(overlap)} of its questions are also in {questions} "
                f"(e.g. {min(overlap)!r}); choose the fusion on other questions"
            )
        distinct = len({query.text for query in held_out})
        hybrid = kb.retriever("hybrid", fusion)
        with progress_bar("choosing the fusion", distinct, enabled=show_progress) as bar:
            fusion, grid = choose_fusion(
                hybrid, chunk_doc_ids, held_out, kb.duplicates, fusion.rrf_k, bar.advance
            )
    rows = []
    for name in retrievers:
        retriever = kb.retriever(name, fusion, rerank)
        with progress_bar(f"retrieval: {name}", len(queries), enabled=show_progress) as bar:
            rows.append(
                evaluate_retriever(
                    retriever, chunk_doc_ids, queries, kb.duplicates, on_batch=bar.advance
                )
            )
    for row in rows:
        if row["retriever"].startswith("hybrid"):
            row["fusion"] = fusion.describe()
    note = f"{len(queries)} questions; {missing} name no document in the knowledge base"
    if out is not None:
        summary = {"kb": str(kb_dir), "questions": str(questions), "note": note, "results": rows}
        if validation is not None:
            summary |= {"validation": str(validation), "fusion_grid": grid}
        write_json(out, summary)
    return QualityReport(rows, note, grid, fusion)
