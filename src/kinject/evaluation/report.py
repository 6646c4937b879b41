"""Tables from per-cell metrics: Markdown for ``table.md`` and rich for the terminal.

Main table: a row per (task, shots), a column per arm.  The rag arm's column shows the cell
at the K chosen on the selection task (``selected``), with K and the retriever's recall@K
beside the accuracy; without selection every K gets its own column (``rag k=2``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from kinject.evaluation.arms import arm_kind
from kinject.evaluation.runner import column_name


def _fmt(metric: dict, key: str = "acc") -> str:
    return short_ci(metric[key], metric[f"{key}_ci"])


def short_ci(value: float, ci: Sequence[float]) -> str:
    """A share in [0, 1] and its interval, as every table shows them: 0.947 [.927–.963]
    (differences, which may be negative, keep the form [−0.120, +0.030])."""
    low, high = (f"{bound:.3f}".removeprefix("0") for bound in ci)
    return f"{value:.3f} [{low}–{high}]"


def _short(metric: dict) -> str:
    return short_ci(metric["acc"], metric["acc_ci"])


def _cell_text(metric: dict, short: bool = False) -> str:
    text = _short(metric) if short else _fmt(metric)
    if arm_kind(metric["arm"]) == "rag":
        text += f" k={metric['k']}"
        if "recall" in metric:
            text += f" R@{metric['k']}={metric['recall']:.2f}"
    return text


def _column(metric: dict) -> str:
    name = column_name(metric.get("model", "base"), metric["arm"])
    if arm_kind(metric["arm"]) == "rag" and "selected" not in metric:
        return f"{name} k={metric['k']}"
    return name


def _pivot(metrics: Sequence[dict], select_k_on: str | None) -> tuple[list[str], list[tuple], dict]:
    columns: list[str] = []
    rows: list[tuple] = []
    cells = {}
    for metric in metrics:
        if metric.get("selected") is False or metric["split"] == select_k_on:
            continue  # the K grid on the validation task: in the K table
        column = _column(metric)
        if column not in columns:
            columns.append(column)
        row = (metric["split"], metric["shots"])
        if row not in rows:
            rows.append(row)
        cells[(row, column)] = metric
    return columns, rows, cells


def _main_rows(
    metrics: Sequence[dict], select_k_on: str | None, short: bool = False
) -> tuple[list[str], list[list[str]]]:
    columns, rows, cells = _pivot(metrics, select_k_on)
    body = []
    for row in rows:
        values = [
            _cell_text(cells[(row, column)], short) if (row, column) in cells else "–"
            for column in columns
        ]
        body.append([row[0], str(row[1]), *values])
    return ["task", "shots", *columns], body


def _k_grid_rows(
    metrics: Sequence[dict], task: str, short: bool = False
) -> tuple[list[str], list[list[str]]]:
    grid = [m for m in metrics if arm_kind(m["arm"]) == "rag" and m["split"] == task]
    columns = []  # (model, arm, shots), models and rag arms in order of appearance
    for m in grid:
        if (m.get("model", "base"), m["arm"], m["shots"]) not in columns:
            columns.append((m.get("model", "base"), m["arm"], m["shots"]))
    ks = sorted({m["k"] for m in grid})
    by = {(m["k"], m.get("model", "base"), m["arm"], m["shots"]): m for m in grid}
    body = []
    for k in ks:
        row = [str(k)]
        for model, arm, s in columns:
            m = by.get((k, model, arm, s))
            if m is None:
                row.append("–")
                continue
            text = (_short(m) if short else _fmt(m)) + (" *" if m.get("selected") else "")
            if "recall" in m:
                text += f" R@{k}={m['recall']:.2f}"
            row.append(text)
        body.append(row)
    if {(model, arm) for model, arm, _ in columns} == {("base", "rag")}:
        return ["K", *[f"{s}-shot" for _, _, s in columns]], body
    return ["K", *[f"{column_name(model, arm)} {s}-shot" for model, arm, s in columns]], body


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in body]
    return lines


def _md_cell(text: str) -> str:
    """A table cell: a name holding ``|``, a newline or HTML stays in its cell, as text."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def markdown_table(metrics: Sequence[dict], select_k_on: str | None = None) -> str:
    """Accuracy with 95% bootstrap CI: the main table, the K grid, then every cell."""
    return "\n".join(_summary_lines(metrics, select_k_on) + [""] + _detail_lines(metrics)) + "\n"


def _summary_lines(metrics: Sequence[dict], select_k_on: str | None) -> list[str]:
    lines = _markdown(*_main_rows(metrics, select_k_on))
    if select_k_on:
        lines += ["", f"RAG: K chosen on '{select_k_on}' (* = chosen), accuracy by K:", ""]
        lines += _markdown(*_k_grid_rows(metrics, select_k_on))
    return lines


def _detail_lines(metrics: Sequence[dict]) -> list[str]:
    closed = [m for m in metrics if not m.get("open")]
    lines = []
    if closed:
        lines += [
            (
                "Accuracy (acc) with 95% bootstrap confidence intervals; R@k: the share of "
                "questions whose gold document was among the k retrieved chunks."
            ),
            "",
            "| arm | task | shots | k | n | acc | acc_norm | recall |",
            "|---|---|---:|---:|---:|---|---|---:|",
        ]
    for m in closed:
        recall = f"{m['recall']:.3f}" if "recall" in m else "–"
        arm, split = _md_cell(column_name(m.get("model", "base"), m["arm"])), _md_cell(m["split"])
        lines.append(
            f"| {arm} | {split} | {m['shots']} | {m['k']} | {m['n']} | "
            f"{_fmt(m)} | {_fmt(m, 'acc_norm')} | {recall} |"
        )
    generated = [m for m in metrics if m.get("open")]
    if generated:
        lines += [
            *([""] if closed else []),
            (
                "Open questions, answered by greedy generation: exact match (the table's acc), "
                "token F1 and answer contained (a gold answer among the reply's words) with 95% "
                "bootstrap CIs, corpus BLEU-4, mean ROUGE F-measures."
            ),
            "",
            (
                "| arm | task | shots | k | n | exact match | token F1 | contained | BLEU-4 "
                "| ROUGE-1 | ROUGE-2 | ROUGE-L |"
            ),
            "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|",
        ]
    for m in generated:
        arm, split = _md_cell(column_name(m.get("model", "base"), m["arm"])), _md_cell(m["split"])
        lines.append(
            f"| {arm} | {split} | {m['shots']} | {m['k']} | {m['n']} | {_fmt(m)} | "
            f"{_fmt(m, 'f1')} | {_fmt(m, 'contains') if 'contains' in m else '–'} | "
            f"{m['bleu4']:.3f} | {m['rouge1']:.3f} | {m['rouge2']:.3f} | {m['rougeL']:.3f} |"
        )
    return lines


def rich_tables(
    metrics: Sequence[dict], select_k_on: str | None = None, title: str = "Accuracy [95% CI]"
) -> list:
    """The main table, and the rag arm's accuracy by K on the validation task if it has one."""
    from rich.table import Table

    table = _rich(title, *_main_rows(metrics, select_k_on, short=True))
    if not select_k_on:
        return [table]
    header, body = _k_grid_rows(metrics, select_k_on, short=True)
    k_table = Table(title=f"rag: accuracy by K on '{select_k_on}' (* = chosen)")
    for name in header:
        k_table.add_column(name, justify="right")
    for row in body:
        k_table.add_row(*row)
    return [table, k_table]


def _rich(title: str, header: list[str], body: list[list[str]]):
    from rich.table import Table

    table = Table(title=title)
    for position, name in enumerate(header):
        table.add_column(name, justify="left" if position == 0 else "right")
    for row in body:
        table.add_row(*row)
    return table
