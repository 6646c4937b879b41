"""Tables from per-cell metrics: Markdown for ``table.md`` and rich for the terminal."""

from __future__ import annotations

from collections.abc import Sequence


def _fmt(metric: dict, key: str = "acc") -> str:
    low, high = metric[f"{key}_ci"]
    return f"{metric[key]:.3f} [{low:.3f}, {high:.3f}]"


def _pivot(metrics: Sequence[dict]) -> tuple[list[str], list[tuple], dict]:
    arms: list[str] = []
    rows: list[tuple] = []
    cells = {}
    for metric in metrics:
        if metric["arm"] not in arms:
            arms.append(metric["arm"])
        row = (metric["split"], metric["shots"])
        if row not in rows:
            rows.append(row)
        cells[(row, metric["arm"])] = metric
    return arms, rows, cells


def markdown_table(metrics: Sequence[dict]) -> str:
    """Accuracy with 95% bootstrap CI: a row per (task, shots), a column per arm; then details."""
    arms, rows, cells = _pivot(metrics)
    lines = [
        "| task | shots | " + " | ".join(arms) + " |",
        "|---|---:|" + "---:|" * len(arms),
    ]
    for row in rows:
        values = [_fmt(cells[(row, arm)]) if (row, arm) in cells else "–" for arm in arms]
        lines.append(f"| {row[0]} | {row[1]} | " + " | ".join(values) + " |")
    lines += [
        "",
        "Accuracy (acc) with 95% bootstrap confidence intervals; n questions per cell below.",
        "",
        "| arm | task | shots | k | n | acc | acc_norm |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for m in metrics:
        lines.append(
            f"| {m['arm']} | {m['split']} | {m['shots']} | {m['k']} | {m['n']} | "
            f"{_fmt(m)} | {_fmt(m, 'acc_norm')} |"
        )
    return "\n".join(lines) + "\n"


def rich_table(metrics: Sequence[dict], title: str = "Accuracy [95% CI]"):
    from rich.table import Table

    arms, rows, cells = _pivot(metrics)
    table = Table(title=title)
    table.add_column("task")
    table.add_column("shots", justify="right")
    for arm in arms:
        table.add_column(arm, justify="right")
    for row in rows:
        table.add_row(
            row[0],
            str(row[1]),
            *[_fmt(cells[(row, arm)]) if (row, arm) in cells else "–" for arm in arms],
        )
    return table
