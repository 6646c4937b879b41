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
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import DataError, KinjectError
from kinject.evaluation.stats import bootstrap_ci
from kinject.fileio import parse_json, read_bytes, read_jsonl

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


def evaluate_kb(
    kb_dir: str | Path,
    questions: str | Path,
    retrievers: Sequence[str] = ("dense", "bm25", "hybrid"),
    out: str | Path | None = None,
    show_progress: bool = True,
) -> QualityReport:
    """``kinject kb eval``: every retriever on the same questions, one table."""
    from kinject.fileio import write_json
    from kinject.kb.store import KnowledgeBase
    from kinject.progress import progress_bar

    kb = KnowledgeBase.open(kb_dir)
    queries = load_queries(questions)
    doc_ids = {row["id"] for row in kb.manifest}
    missing = missing_gold(queries, doc_ids, kb.duplicates)
    chunk_doc_ids = [chunk.doc_id for chunk in kb.chunks]
    rows = []
    for name in retrievers:
        retriever = kb.retriever(name)
        with progress_bar(f"retrieval: {name}", len(queries), enabled=show_progress) as bar:
            rows.append(
                evaluate_retriever(
                    retriever, chunk_doc_ids, queries, kb.duplicates, on_batch=bar.advance
                )
            )
    note = f"{len(queries)} questions; {missing} name no document in the knowledge base"
    if out is not None:
        write_json(
            out, {"kb": str(kb_dir), "questions": str(questions), "note": note, "results": rows}
        )
    return QualityReport(rows, note)
