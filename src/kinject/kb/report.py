"""What the ``kinject kb`` commands print: change summaries, search hits, retrieval quality."""

from __future__ import annotations

from collections.abc import Sequence

from kinject.evaluation.report import short_ci
from kinject.kb.store import Change, KnowledgeBase


def change_lines(change: Change, verb: str) -> list[str]:
    lines = [f"warning: {warning}" for warning in change.warnings]
    parts = [f"{len(change.added)} added"]
    if verb != "built":
        parts += [
            f"{len(change.changed)} changed",
            f"{len(change.removed)} removed",
            f"{change.unchanged} unchanged",
        ]
    lines.append(
        f"{verb}: {change.documents} documents, {change.chunks} chunks "
        f"({', '.join(parts)}; {change.embedded} chunks embedded, {change.reused} reused)"
    )
    return lines


def search_table(kb: KnowledgeBase, query: str, hits, width: int = 160):
    from rich.table import Table

    titles = {row["id"]: row.get("title") for row in kb.manifest}
    table = Table(title=f"{query!r}", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("chunk")
    table.add_column("text")
    for rank, hit in enumerate(hits, start=1):
        chunk = kb.chunks[hit.row]
        text = " ".join(chunk.text.split())
        if len(text) > width:
            text = text[: width - 1] + "…"
        heading = chunk.heading or titles.get(chunk.doc_id)  # the line it is indexed under
        label = f"{chunk.id}\n{heading}" if heading else chunk.id
        table.add_row(str(rank), f"{hit.score:.4f}", label, text)
    return table


def quality_table(results: Sequence[dict], title: str):
    """A row per metric, a column per retriever (narrow enough for 80 columns)."""
    from rich.table import Table

    keys = _metric_keys(results)
    table = Table(title=title)
    table.add_column(f"n = {results[0]['n']}")
    for result in results:
        table.add_column(result["retriever"], justify="right")
    for key in keys:
        table.add_row(key, *[short_ci(result[key], result[f"{key}_ci"]) for result in results])
    return table


def _metric_keys(results: Sequence[dict]) -> list[str]:
    return [k for k in results[0] if k.startswith(("recall@", "mrr@")) and not k.endswith("_ci")]


def quality_markdown(results: Sequence[dict]) -> str:
    keys = _metric_keys(results)
    lines = ["| retriever | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for result in results:
        lines.append(
            f"| {result['retriever']} | {result['n']} | "
            + " | ".join(f"{result[key]:.3f}" for key in keys)
            + " |"
        )
    return "\n".join(lines) + "\n"


def fusion_grid_table(grid: Sequence[dict], title: str):
    """The hybrid fusions tried on the validation questions (* = chosen)."""
    from rich.table import Table

    keys = _metric_keys(grid)
    table = Table(title=title)
    for column in ("fusion", "dense weight", *keys):
        table.add_column(column, justify="left" if column == "fusion" else "right")
    for row in grid:
        mark = " *" if row.get("chosen") else ""
        cells = [f"{row[key]:.3f}" for key in keys]
        table.add_row(f"{row['fusion']}{mark}", f"{row['dense_weight']:g}", *cells)
    return table


def fusion_grid_markdown(grid: Sequence[dict]) -> str:
    keys = _metric_keys(grid)
    lines = ["| fusion | dense weight | " + " | ".join(keys) + " |"]
    lines.append("|---|---:|" + "---:|" * len(keys))
    for row in grid:
        mark = " (chosen)" if row.get("chosen") else ""
        cells = " | ".join(f"{row[key]:.3f}" for key in keys)
        lines.append(f"| {row['fusion']}{mark} | {row['dense_weight']:g} | {cells} |")
    return "\n".join(lines) + "\n"
