"""The paper's table layouts from an experiment's metrics.json and costs.json.

Table 1 (knowledge-intensive tasks, per model): a row per (task, shots); columns base, +RAG,
FT, FT+RAG.  Table 2 (current events): a row per (model, task, shots); columns base, +RAG,
then every fine-tuning closed book and with RAG.  Arms with an instruction follow these, each
its own column (``rename``, ``+RAG+rename``, ``ft-reg+rename``; in Table 1 ``FT+rename``).
A figure is accuracy [95% CI]; * marks p < 0.05 and ** p < 0.01 in the exact McNemar test
against the same model's base column.  Beside them, what each column cost, and above them
the verdict: per task, which column is best where the intervals say so.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path

from kinject.evaluation.arms import arm_instruction, arm_kind, uses_rag
from kinject.evaluation.report import _detail_lines, _k_grid_rows, _markdown, short_ci
from kinject.fileio import write_text


def generic_column(metric: dict, models: dict) -> str:
    """A cell's column whatever its model's label: base, rag, oracle, <ft>, <ft>+rag, each
    maybe with +<instruction> (the closed-book arm with one: <instruction>, <ft>+<instruction>)."""
    finetune = models.get(metric["model"], {}).get("finetune")
    if finetune is None:
        return metric["arm"]
    return finetune if metric["arm"] == "base" else f"{finetune}+{metric['arm']}"


def training_label(models: dict, base_model: str, finetune: str) -> str | None:
    """The model label a fine-tuning's training costs are kept under (with several seeds:
    their shared label, not one seed's)."""
    return next(
        (
            label
            for label, row in models.items()
            if row["finetune"] == finetune
            and row["base_model"] == base_model
            and not row["sweep"]
            and "group" not in row
        ),
        None,
    )


def _plain_column(metric: dict, models: dict) -> str:
    """The column of a cell's arm without its instruction (``ft-reg+rag+rename``: ft-reg+rag)."""
    return generic_column({**metric, "arm": arm_kind(metric["arm"])}, models)


def column_header(column: str) -> str:
    """A column's heading: rag is +RAG (the paper's), ft-par+RAG, +RAG+rename."""
    if column in ("base", "oracle"):
        return column
    parts = ["RAG" if part == "rag" else part for part in column.split("+")]
    return ("+" if parts[0] == "RAG" else "") + "+".join(parts)


class Results:
    """metrics.json and costs.json, indexed for tables: (base model, column, task, shots)."""

    def __init__(self, metrics: dict, costs: dict):
        self.metrics = metrics
        self.costs = costs
        self.validation = metrics.get("validation_task")
        self.models = metrics["models"]
        self.cells: dict[tuple, dict] = {}
        self.base_models: list[str] = []
        self.columns: list[str] = []
        self.rows: list[tuple[str, int]] = []
        self.instructed: dict[str, tuple[str, str]] = {}  # column -> (plain column, instruction)
        for m in metrics["cells"]:
            if m["split"] == self.validation or m.get("selected") is False:
                continue
            column = m["column"]
            self.cells[(m["base_model"], column, m["split"], m["shots"])] = m
            instruction = arm_instruction(m["arm"])
            if instruction is not None:
                self.instructed[column] = (_plain_column(m, self.models), instruction)
            for seen, value in (
                (self.base_models, m["base_model"]),
                (self.columns, column),
                (self.rows, (m["split"], m["shots"])),
            ):
                if value not in seen:
                    seen.append(value)
        self.p_vs_base: dict[tuple, dict] = {}
        for c in metrics["comparisons"]:
            for mine, other in (("a", "b"), ("b", "a")):
                if c[other] == "base":
                    self.p_vs_base[(c["base_model"], c[mine], c["split"], c["shots"])] = c

    def finetunes(self) -> list[str]:
        """The fine-tunings' closed-book columns."""
        named = {row["finetune"] for row in self.models.values() if not row["sweep"]}
        return [c for c in self.columns if c in named]

    def with_instructions(self, columns: list[str]) -> list[str]:
        """The instruction columns of ``columns`` (``rag+rename`` of rag), in order of
        appearance."""
        return [c for c, (plain, _) in self.instructed.items() if plain in columns]

    def text(self, base_model: str, column: str, split: str, shots: int) -> str:
        m = self.cells.get((base_model, column, split, shots))
        if m is None:
            return "–"
        text = short_ci(m["acc"], m["acc_ci"]) + self.mark(base_model, column, split, shots)
        if arm_kind(m["arm"]) == "rag":
            ks = [seed["k"] for seed in m.get("seeds", [])]
            text += " k" + (",".join(map(str, ks)) if len(set(ks)) > 1 else str(m["k"]))
        return text

    def mark(self, base_model: str, column: str, split: str, shots: int) -> str:
        test = self.p_vs_base.get((base_model, column, split, shots))
        if test is None:
            return ""
        return "**" if test["p_value"] < 0.01 else "*" if test["p_value"] < 0.05 else ""

    def row(self, base_model: str, column: str, split: str, shots: int) -> dict | None:
        m = self.cells.get((base_model, column, split, shots))
        if m is None:
            return None
        test = self.p_vs_base.get((base_model, column, split, shots))
        return {
            "model": base_model,
            "task": split,
            "shots": shots,
            "column": column,
            "k": m["k"],
            "n": m["n"],
            "acc": m["acc"],
            "ci_low": m["acc_ci"][0],
            "ci_high": m["acc_ci"][1],
            "relative_gain": m.get("relative_gain"),
            "knows": m.get("knows"),
            "p_vs_base": test["p_value"] if test else None,
            "discordant_vs_base": test["a_only"] + test["b_only"] if test else None,
        }


def table1(results: Results) -> tuple[list[str], dict[str, list[list[str]]], list[str]]:
    """Per base model: rows (task, shots), columns base, +RAG, FT, FT+RAG."""
    chosen = results.metrics.get("tables", {}).get("table1_finetune")
    finetunes = results.finetunes()
    with_rag = [f for f in finetunes if f"{f}+rag" in results.columns]
    ft = chosen if chosen in finetunes else next(iter(with_rag or finetunes), None)
    columns = ["base", "rag"] + ([ft, f"{ft}+rag"] if ft else [])
    names = {"rag": "+RAG", ft: "FT", f"{ft}+rag": "FT+RAG"}
    for column in results.with_instructions(columns):
        plain, instruction = results.instructed[column]
        names[column] = instruction if plain == "base" else f"{names[plain]}+{instruction}"
        if plain in (ft, f"{ft}+rag"):
            names[column] += f" ({ft})"
        columns.append(column)
    if ft:
        names.update({ft: f"FT ({ft})", f"{ft}+rag": f"FT+RAG ({ft})"})  # which fine-tuning
    header = ["task", "shots", *[names.get(c, c) for c in columns]]
    bodies = {
        model: [
            [split, str(shots), *[results.text(model, c, split, shots) for c in columns]]
            for split, shots in results.rows
        ]
        for model in results.base_models
    }
    return header, bodies, columns


def table2(results: Results) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows (model, task, shots); columns base, +RAG, each fine-tuning, each with RAG."""
    tasks = results.metrics.get("tables", {}).get("table2_tasks")
    finetunes = results.finetunes()
    columns = ["base", "rag", *finetunes, *[f"{ft}+rag" for ft in finetunes]]
    instructed = results.with_instructions(columns)
    columns = [c for c in columns if c in results.columns] + instructed
    body = [
        [model, split, str(shots), *[results.text(model, c, split, shots) for c in columns]]
        for model in results.base_models
        for split, shots in results.rows
        if tasks is None or split in tasks
    ]
    return ["model", "task", "shots", *[column_header(c) for c in columns]], body, columns


UPDATED_TITLE = "Updated facts: new value vs previous value"
UPDATED_NOTE = (
    "The facts version of the renamed-entity probe (a model fine-tuned on a text where Romeo "
    "is renamed Bob: did it learn Bob, did it drop Romeo?): on questions whose answer changed "
    "(the base model learned the previous value, the knowledge base states the new one), "
    "'new value' is the accuracy and 'previous value' the share of questions still answered "
    "with the previous value, each with its 95% bootstrap CI, so each column shows whether "
    "fine-tuning on the new text, retrieving it or being instructed with it replaces the old "
    "fact or only competes with it (* and ** on the accuracy as in Table 2)."
)


def updated_columns(results: Results) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Table 2's columns and the (model, task, shots) rows whose cells carry ``previous_rate``
    (tasks with a ``previous`` answer); no rows when no task has one."""
    _, _, columns = table2(results)
    rows = [
        (model, split, shots)
        for model in results.base_models
        for split, shots in results.rows
        if any(
            "previous_rate" in results.cells.get((model, column, split, shots), {})
            for column in columns
        )
    ]
    return columns, rows


def updated_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """Two rows per (model, task, shots) with previous answers: the new value's accuracy and
    the previous value's rate, a column per arm as in Table 2."""
    columns, rows = updated_columns(results)
    body = []
    for model, split, shots in rows:
        new = [model, split, str(shots), "new value"]
        old = [model, split, str(shots), "previous value"]
        for column in columns:
            m = results.cells.get((model, column, split, shots))
            new.append(results.text(model, column, split, shots))
            has = m is not None and "previous_rate" in m
            old.append(short_ci(m["previous_rate"], m["previous_rate_ci"]) if has else "–")
        body += [new, old]
    header = ["model", "task", "shots", "answer", *[column_header(c) for c in columns]]
    return header, body


def updated_csv_rows(results: Results) -> list[dict]:
    """tables/updated.csv: one row per (model, task, shots, column) with previous answers."""
    columns, rows = updated_columns(results)
    out = []
    for model, split, shots in rows:
        for column in columns:
            m = results.cells.get((model, column, split, shots))
            if m is None or "previous_rate" not in m:
                continue
            out.append(
                {
                    "model": model,
                    "task": split,
                    "shots": shots,
                    "column": column,
                    "k": m["k"],
                    "n": m["n"],
                    "acc": m["acc"],
                    "ci_low": m["acc_ci"][0],
                    "ci_high": m["acc_ci"][1],
                    "previous_n": m["previous_n"],
                    "previous_rate": m["previous_rate"],
                    "previous_ci_low": m["previous_rate_ci"][0],
                    "previous_ci_high": m["previous_rate_ci"][1],
                }
            )
    return out


def updated_rich(metrics: dict, costs: dict):
    """The terminal's updated-facts table, or None when no task has previous answers."""
    from kinject.evaluation.report import _rich

    header, body = updated_rows(Results(metrics, costs))
    return _rich(UPDATED_TITLE + " [95% CI]", header, body) if body else None


def column_costs(results: Results) -> dict[tuple, dict]:
    """(base model, column) -> what the column cost: ``training`` (that fine-tuning's every
    learning-rate candidate and seed, or None), ``index`` (the knowledge base's build, for
    columns that retrieve, or None), and the scoring of its test cells: ``seconds``,
    ``questions``, ``requests`` and ``reused`` (requests an earlier cell had scored)."""
    training = results.costs.get("training", {})
    index = results.costs.get("index")
    scoring: dict[tuple, list[float]] = {}
    for c in results.costs.get("cells", []):
        if c["split"] == results.validation:
            continue
        fake = {"model": c["model"], "arm": c["arm"]}
        key = (c["base_model"], generic_column(fake, results.models))
        total = scoring.setdefault(key, [0.0, 0, 0, 0])
        total[0] += c["seconds"]
        total[1] += c["questions"]
        total[2] += c.get("requests", 0)
        total[3] += c.get("reused", 0)
    costs = {}
    for model in results.base_models:
        for column in results.columns:
            ft = column.split("+")[0] if column not in ("base", "rag", "oracle") else None
            label = training_label(results.models, model, ft) if ft else None
            seconds, questions, requests, reused = scoring.get((model, column), (0.0, 0, 0, 0))
            costs[(model, column)] = {
                "training": training.get(label) if label else None,
                "index": index if uses_rag(column) and index else None,
                "seconds": seconds,
                "questions": questions,
                "requests": requests,
                "reused": reused,
            }
    return costs


def index_seconds(index: dict | None) -> float | None:
    """The knowledge base's build: embedding and FAISS index seconds."""
    if not index or "embed_seconds" not in index:
        return None
    return index["embed_seconds"] + index["index_seconds"]


def cost_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """What each column cost: training (every LR candidate), the index, scoring per question."""
    body = []
    for (model, column), cost in column_costs(results).items():
        train, index = cost["training"] or {}, cost["index"] or {}
        build = index_seconds(index)
        body.append(
            [
                model,
                column_header(column),
                f"{train['train_tokens']:,}" if train else "–",
                f"{train['train_seconds']:.1f}" if train else "–",
                f"{train['peak_memory_mb']:.0f}" if train else "–",
                f"{build:.2f}" if build is not None else "–",
                f"{index['index_bytes'] / 1e6:.2f}" if "index_bytes" in index else "–",
                f"{1000 * cost['seconds'] / cost['questions']:.1f}" if cost["questions"] else "–",
                f"{cost['reused'] / cost['requests']:.0%}" if cost["requests"] else "–",
            ]
        )
    header = [
        "model",
        "column",
        "train tokens",
        "train s",
        "peak MB",
        "index build s",
        "index MB",
        "ms / question",
        "reused",
    ]
    return header, body


PEAK_MEMORY = {
    "cuda_allocated": "the most GPU memory torch allocated while training",
    "process_peak_rss": "the peak resident memory of the whole process (CPU), which also "
    "counts what ran before the training in the same process",
}


def cost_note(results: Results) -> str:
    """What the cost columns measure."""
    kinds = sorted(
        {row.get("peak_memory_kind") for row in results.costs.get("training", {}).values()} - {None}
    )
    peak = "; ".join(f"{PEAK_MEMORY.get(kind, kind)}" for kind in kinds) or "–"
    return (
        "train: tokens and seconds of every learning-rate candidate trained; peak MB: "
        f"{peak}; index: embedding and FAISS build of the knowledge base; ms / question: "
        "scoring time of the column's test cells over their questions, as run: a request "
        "identical to one an earlier cell of the same model scored (the oracle's and rag's "
        "prompt when the gold chunk is retrieved; rag at K=0 and base) is not scored again, "
        "and 'reused' is the share of such requests."
    )


def forgetting_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """Per fine-tuning (closed book): gain over the base model on the tasks it had to learn,
    and the change on the tasks the base model knew (forgetting when negative)."""
    known = results.metrics.get("tables", {}).get("forgetting_tasks", [])
    if not known:
        return [], []
    learn = [split for split, _ in results.rows if split not in known]
    learn = list(dict.fromkeys(learn))
    shots_list = sorted({shots for _, shots in results.rows})
    body = []
    for model in results.base_models:
        for ft in results.finetunes():
            for shots in shots_list:
                row = [model, ft, str(shots)]
                for split in [*learn, *known]:
                    mine = results.cells.get((model, ft, split, shots))
                    base = results.cells.get((model, "base", split, shots))
                    row.append(f"{mine['acc'] - base['acc']:+.3f}" if mine and base else "–")
                body.append(row)
    header = ["model", "fine-tuning", "shots"]
    header += [f"gain on {s}" for s in learn] + [f"change on {s} (forgetting)" for s in known]
    return header, body


SEEDS_NOTE = (
    "Each fine-tuned column trained once per seed: every seed's accuracy, their mean and "
    "standard deviation, the 95% interval that resamples seeds and then questions (training "
    "noise and question noise; the figure the other tables show) and the interval over "
    "questions alone, the seeds held fixed."
)


def seed_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """A row per fine-tuned cell trained with several seeds."""
    body = []
    for (model, column, split, shots), m in results.cells.items():
        if "seeds" not in m:
            continue
        body.append(
            [
                model,
                column_header(column),
                split,
                str(shots),
                " ".join(f"{s['acc']:.3f}" for s in m["seeds"]),
                f"{m['acc']:.3f}",
                f"{m['acc_sd']:.3f}",
                short_ci(m["acc"], m["acc_ci"]).split(" ", 1)[1],
                short_ci(m["acc"], m["acc_ci_questions"]).split(" ", 1)[1],
            ]
        )
    header = ["model", "column", "task", "shots", "per seed", "mean", "sd"]
    return header + ["seeds + questions", "questions only"], body


DIFFERENCES_NOTE = (
    "Accuracy differences between columns on the same questions, where a column was trained "
    "with several seeds (against base and rag, and between such columns): a − b with the 95% "
    "interval of the paired bootstrap over seeds and questions, its p-value, and the exact "
    "McNemar p of each seed pair; 'holds' marks a difference whose interval excludes 0."
)


def difference_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    seeded = {column for (_, column, _, _), m in results.cells.items() if "seeds" in m}
    body = []
    for c in results.metrics["comparisons"]:
        pair = {c["a"], c["b"]}
        if not (pair <= seeded or (pair & {"base", "rag"} and pair & seeded)):
            continue
        (a, b), difference, (low, high) = (c["a"], c["b"]), c["difference"], c["difference_ci"]
        if a not in seeded:  # the trained column first: its gain over base or rag
            a, b, difference, low, high = b, a, -difference, -high, -low
        per_seed = " ".join(f"{t['p_value']:.2g}" for t in c.get("per_seed", [])) or "–"
        body.append(
            [
                c["base_model"],
                c["split"],
                str(c["shots"]),
                f"{column_header(a)} − {column_header(b)}",
                f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]",
                f"{c['p_value']:.3g}",
                per_seed,
                "holds" if low > 0 or high < 0 else "",
            ]
        )
    header = ["model", "task", "shots", "a − b", "difference [95% CI]", "p", "McNemar p per seed"]
    return [*header, ""], body


SELECTION_NOTE = (
    "Learning rate and epoch chosen on the validation questions (with several seeds: on the "
    "seeds' mean accuracy); the runner-up is the next best (learning rate, epoch), and the "
    "margin the chosen one's lead over it: a margin within the seeds' spread is a choice "
    "another run could make differently."
)


def selection_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    body = []
    for label, row in (metrics.get("finetuning") or {}).items():
        runner = row.get("runner_up")
        seeds = row.get("seeds") or []
        body.append(
            [
                label,
                str(len(seeds) or 1),
                f"{row['learning_rate']:g}",
                str(row["epoch"]),
                f"{row['validation_acc']:.3f}" if row["validation_acc"] is not None else "–",
                " ".join(f"{s['validation_acc']:.3f}" for s in seeds) or "–",
                f"lr {runner['learning_rate']:g}, epoch {runner['epoch']}: "
                f"{runner['validation_acc']:.3f}"
                if runner
                else "–",
                f"{row['validation_margin']:+.3f}" if runner else "–",
            ]
        )
    header = ["fine-tuning", "seeds", "lr", "epoch", "validation acc", "per seed"]
    return header + ["runner-up", "margin"], body


def sweep_rows(sweep: dict) -> tuple[list[str], list[list[str]]]:
    cells = [(c["split"], c["shots"]) for c in sweep["points"][0]["cells"]]
    body = []
    for point in sweep["points"]:
        by = {(c["split"], c["shots"]): c for c in point["cells"]}
        body.append(
            [
                str(point["value"]),
                f"{point['learning_rate']:g}",
                str(point["epoch"]),
                f"{point['validation_acc']:.3f}" if point["validation_acc"] is not None else "–",
                *[short_ci(by[c]["acc"], by[c]["acc_ci"]) if c in by else "–" for c in cells],
            ]
        )
    header = [sweep["key"], "lr", "epoch", "validation acc"]
    return header + [f"{split} {shots}-shot" for split, shots in cells], body


# -- the verdict: on each population, which column is best, in plain words ---------------------
#
# A column is called best only when the 95% interval of its difference from every other column
# on the same questions excludes 0.  The interval is the paired bootstrap of metrics.json's
# comparisons, which resamples seeds as well as questions wherever a column was trained with
# several seeds: a lead that another training seed could undo is not a verdict.  The oracle
# reads each question's gold document: the ceiling the others are measured against.

VERDICT_NOTE = (
    "Per task and shot count, the column with the highest accuracy (exact match on open "
    "questions). It is called best only where the 95% interval of its difference from every "
    "other column excludes 0 (a paired bootstrap over the same questions, and over the "
    "training seeds where a column was trained with several); otherwise the columns it cannot "
    "be told from are named. The oracle, which reads each question's gold document, is the "
    "ceiling, not a contender. Costs: training (every seed and learning rate), the index "
    "build, and scoring time per question."
)


def verdict_lines(results: Results) -> list[str]:
    """One Markdown bullet per (base model, task, shots) with at least two contenders."""
    lines = []
    several = len(results.base_models) > 1
    costs = column_costs(results)
    differences = {}  # (model, split, shots, a, b) -> a − b and its interval, both ways round
    for c in results.metrics["comparisons"]:
        low, high = c["difference_ci"]
        where = (c["base_model"], c["split"], c["shots"])
        differences[(*where, c["a"], c["b"])] = (c["difference"], low, high)
        differences[(*where, c["b"], c["a"])] = (-c["difference"], -high, -low)
    for model in results.base_models:
        for split, shots in results.rows:
            cells = {
                column: results.cells[(model, column, split, shots)]
                for column in results.columns
                if column != "oracle" and (model, column, split, shots) in results.cells
            }
            if len(cells) < 2:
                continue
            where = f"**{_name(split)}**, {shots}-shot" + (f" ({_name(model)})" if several else "")
            best = _best(cells)
            leads = {  # a comparison missing (metrics.json edited by hand) separates nothing
                other: differences.get((model, split, shots, best, other))
                for other in cells
                if other != best
            }
            text, costed = _population(results, (model, split, shots), cells, best, leads)
            cost = _cost_words(costs.get((model, costed))) if costed else ""
            lines.append(f"- {where}: {text}" + (f" Cost: {cost}." if cost else ""))
    return lines


def _best(cells: dict[str, dict]) -> str:
    """The highest accuracy; a tie goes to the column shown first (base before the others)."""
    return max(cells, key=lambda column: (cells[column]["acc"], -list(cells).index(column)))


def _population(
    results: Results, where: tuple[str, str, int], cells: dict, best: str, leads: dict
) -> tuple[str, str | None]:
    """The line's words about ``best`` and its ``leads`` over the other columns, and the
    column whose cost follows them (None when every column ties)."""
    unseparated = [other for other, lead in leads.items() if lead is None or lead[1] <= 0]
    figure = short_ci(cells[best]["acc"], cells[best]["acc_ci"])
    costed: str | None = best
    if len({cell["acc"] for cell in cells.values()}) == 1:
        text, costed = f"every column scores {cells[best]['acc']:.3f}; none is shown best.", None
    elif unseparated:
        names = _names(sorted(unseparated, key=lambda c: -cells[c]["acc"]))
        text = (
            f"no column is shown best. {_header(best)} scores highest, {figure}, but "
            f"its lead over {names} has an interval that includes 0."
        )
    else:
        runner_up = max(leads, key=lambda c: cells[c]["acc"])
        difference, low, high = leads[runner_up]
        text = (
            f"**{_header(best)}** is best, {figure}, ahead of "
            f"{_header(runner_up)} by {difference:+.3f} [{low:+.3f}, {high:+.3f}]."
        )
    if best != "base" and "base" in cells:
        text += f" Base: {cells['base']['acc']:.3f}."
    oracle = results.cells.get((where[0], "oracle", *where[1:]))
    if oracle is not None:
        text += f" Oracle: {oracle['acc']:.3f}."
    return text, costed


def _name(text: str) -> str:
    """A name from the user's config in a verdict line: its HTML as text, on one line."""
    return html.escape(text, quote=False).replace("\n", " ")


def _header(column: str) -> str:
    return _name(column_header(column))


def _names(columns: list[str]) -> str:
    names = [_header(column) for column in columns]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _cost_words(cost: dict | None) -> str:
    if cost is None:
        return ""
    parts = []
    training = cost["training"]
    if training:
        seeds = training.get("seeds", 1)
        runs = f"{seeds} seed{'s' if seeds != 1 else ''}"
        if training.get("candidates", seeds) != seeds:
            runs += f", {training['candidates']} trainings"
        seconds = training["train_seconds"]
        parts.append(f"{seconds:,.{1 if seconds < 10 else 0}f} s of training ({runs})")
    build = index_seconds(cost["index"])
    if build is not None:
        parts.append(f"an index built in {build:.1f} s")
    if cost["questions"]:
        parts.append(f"{1000 * cost['seconds'] / cost['questions']:.0f} ms per question scored")
    return ", ".join(parts)


def markdown(metrics: dict, costs: dict) -> str:
    """``table.md``: the title, then every section of :func:`markdown_sections`."""
    title = metrics.get("experiment", "experiment")
    sections = markdown_sections(metrics, costs)
    return "\n".join([f"# {title}", "", *(line for _, lines in sections for line in lines)])


def markdown_sections(metrics: dict, costs: dict) -> list[tuple[str, list[str]]]:
    """The tables as (name, Markdown lines) in their order: ``verdict``, ``table1``,
    ``table2``, then the seeds, differences, selection, costs, forgetting, sweeps, the K grid
    and every cell (a section a run has nothing for is left out)."""
    results = Results(metrics, costs)
    sections: list[tuple[str, list[str]]] = []
    verdict = verdict_lines(results)
    if verdict:
        sections.append(("verdict", ["## Verdict", "", VERDICT_NOTE, "", *verdict, ""]))
    note = (
        "Accuracy [95% bootstrap CI]; * p < 0.05, ** p < 0.01 (exact McNemar test against the "
        "same model's base column, on the same questions); rag at the K chosen on "
        f"'{results.validation}' (k1: K=1; k0: K=0 was chosen, so the cell is the closed-book "
        "model's; k0,1,0: the K each seed's model chose)."
    )
    if seed_rows(results)[1]:
        note += (
            " A column trained with several seeds shows their mean, its interval resamples "
            "seeds and questions, and its stars come from the paired bootstrap over seeds and "
            "questions (see Training seeds)."
        )
    header, bodies, _ = table1(results)
    lines = []
    for model, body in bodies.items():
        lines += [f"## Table 1 layout: {model}", "", note, "", *_markdown(header, body), ""]
    sections.append(("table1", lines))
    header, body, _ = table2(results)
    sections.append(("table2", ["## Table 2 layout", "", *_markdown(header, body), ""]))
    updated = updated_rows(results)
    if updated[1]:
        lines = [f"## {UPDATED_TITLE}", "", UPDATED_NOTE, "", *_markdown(*updated), ""]
        sections.append(("updated", lines))
    seeds = seed_rows(results)
    if seeds[1]:
        sections.append(
            ("seeds", ["## Training seeds", "", SEEDS_NOTE, "", *_markdown(*seeds), ""])
        )
    differences = difference_rows(results)
    if differences[1]:
        lines = ["## Differences over seeds", "", DIFFERENCES_NOTE, "", *_markdown(*differences)]
        sections.append(("differences", [*lines, ""]))
    selection = selection_rows(metrics)
    if selection[1]:
        lines = ["## Learning rate and epoch", "", SELECTION_NOTE, "", *_markdown(*selection)]
        sections.append(("selection", [*lines, ""]))
    lines = ["## Costs", "", cost_note(results), "", *_markdown(*cost_rows(results)), ""]
    sections.append(("costs", lines))
    forgetting = forgetting_rows(results)
    if forgetting[1]:
        lines = ["## Gain and forgetting (closed book)", "", *_markdown(*forgetting), ""]
        sections.append(("forgetting", lines))
    lines = []
    for sweep in metrics.get("sweeps", []):
        lines += [f"## Sweep '{sweep['name']}': {sweep['finetune']} by {sweep['key']}", ""]
        lines += [*_markdown(*sweep_rows(sweep)), ""]
    if lines:
        sections.append(("sweeps", lines))
    if results.validation and (metrics.get("selected_k") or metrics.get("selected_k_by_arm")):
        every = metrics["cells"] + metrics.get("seed_cells", [])  # seeded models' grids too
        grid = [m for m in every if arm_kind(m["arm"]) == "rag"]
        lines = [f"## RAG: accuracy by K on '{results.validation}' (* = chosen)", ""]
        sections.append(
            ("k_grid", [*lines, *_markdown(*_k_grid_rows(grid, results.validation)), ""])
        )
    every = metrics["cells"] + metrics.get("seed_cells", [])  # and each seed's own cells
    sections.append(("cells", ["## Every cell", "", *_detail_lines(every), ""]))
    return sections


def paper_shaped(results: Results) -> bool:
    """Whether the run has the paper's columns: base, +RAG and a fine-tuning."""
    return {"base", "rag"} <= set(results.columns) and bool(results.finetunes())


def _csv(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_tables(run_dir: Path, metrics: dict, costs: dict) -> None:
    """table.md, and tables/table1.csv, table2.csv, costs.csv (one row per figure), and
    updated.csv when a task has previous answers."""
    results = Results(metrics, costs)
    write_text(run_dir / "table.md", markdown(metrics, costs))
    _, _, columns1 = table1(results)
    _, _, columns2 = table2(results)
    for name, columns in (("table1", columns1), ("table2", columns2)):
        rows = [
            results.row(model, column, split, shots)
            for model in results.base_models
            for split, shots in results.rows
            for column in columns
        ]
        write_text(run_dir / "tables" / f"{name}.csv", _csv([r for r in rows if r]))
    header, body = cost_rows(results)
    write_text(run_dir / "tables" / "costs.csv", _csv([dict(zip(header, row)) for row in body]))
    updated = updated_csv_rows(results)
    if updated:
        write_text(run_dir / "tables" / "updated.csv", _csv(updated))


def rich_tables(metrics: dict, costs: dict) -> list:
    from kinject.evaluation.report import _rich

    results = Results(metrics, costs)
    tables = [_rich("accuracy [95% CI]; * p<.05 ** p<.01 vs base", *table2(results)[:2])]
    seeds = seed_rows(results)
    if seeds[1]:
        tables.append(_rich("training seeds: per seed, mean, sd, 95% intervals", *seeds))
    selection = selection_rows(metrics)
    if selection[1]:
        tables.append(_rich("learning rate and epoch (validation)", *selection))
    tables.append(_rich("costs", *cost_rows(results)))
    forgetting = forgetting_rows(results)
    if forgetting[1]:
        tables.append(_rich("gain and forgetting (closed book)", *forgetting))
    for sweep in metrics.get("sweeps", []):
        tables.append(_rich(f"{sweep['finetune']} by {sweep['key']}", *sweep_rows(sweep)))
    return tables
