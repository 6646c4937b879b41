"""``kinject compare``: one table across experiment runs (say, two base models), from their
run folders' metrics.json and costs.json alone; no model is loaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kinject.errors import KinjectError
from kinject.evaluation.report import short_ci
from kinject.experiments.tables import Results, column_header


def load_results(run_dir: Path) -> Results:
    files = {}
    for name in ("metrics.json", "costs.json"):
        path = run_dir / name
        if not path.exists():
            raise KinjectError(f"{path} not found: is {run_dir} a finished `kinject run` folder?")
        files[name] = json.loads(path.read_text(encoding="utf-8"))
    if "models" not in files["metrics.json"]:
        raise KinjectError(f"{run_dir}/metrics.json is not an experiment's (made by `kinject run`)")
    return Results(files["metrics.json"], files["costs.json"])


def comparison_rows(run_dirs: Sequence[Path]) -> tuple[list[str], list[list[str]]]:
    """A row per (run, model, column), a column per (task, shots) any run scored."""
    loaded = [(Path(run_dir), load_results(Path(run_dir))) for run_dir in run_dirs]
    names = _run_names([run_dir for run_dir, _ in loaded])
    groups: list[tuple[str, int]] = []
    for _, results in loaded:
        groups += [row for row in results.rows if row not in groups]
    body = []
    for name, (_, results) in zip(names, loaded):
        for model in results.base_models:
            for column in results.columns:
                line = [name, model, column_header(column)]
                for split, shots in groups:
                    metric = results.cells.get((model, column, split, shots))
                    line.append(short_ci(metric["acc"], metric["acc_ci"]) if metric else "–")
                body.append(line)
    header = ["run", "model", "column", *[f"{split} {shots}-shot" for split, shots in groups]]
    return header, body


def _run_names(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the shortest distinguishing paths when two runs share a name."""
    names = [run_dir.name for run_dir in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(run_dir) for run_dir in run_dirs]
