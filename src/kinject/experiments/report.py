"""``kinject report``: a `kinject run` folder as one readable page.

``report.html`` is one self-contained file: inline CSS, plots as inline SVG, no script and no
external reference (a Content-Security-Policy forbids both).  ``report.md`` holds the same
Markdown tables as ``table.md`` with the plots as SVG files under ``report_files/``, linked
relatively so the report renders on GitHub.

Made from ``metrics.json``, ``costs.json`` and ``records.jsonl`` alone: no model, no task file.
Both files are deterministic (fixed SVG hash salt, no date, data in file order), so running
the report twice gives the same bytes.  Every name, question and answer from the run is
escaped: a question holding ``<script>`` shows as text.

Plots (each a ``<figure class="plot">``; a plot whose data the run lacks is left out)::

    fig-accuracy          accuracy by column with 95% CIs, per (task, shots), rag at chosen K
    fig-updated           on tasks with previous answers (updated facts): the new value's
                          accuracy beside the previous value's rate, by column, with 95% CIs
    fig-sweep-<name>      accuracy vs the swept value (e.g. number of paraphrases)
    fig-k                 rag accuracy vs K on the validation task
    fig-training-<label>  training loss; validation loss and accuracy by epoch per LR
    fig-forgetting        gain on the learned tasks vs change on tables.forgetting_tasks
    fig-cost              accuracy (lowest shots) vs compute seconds of each column
"""

from __future__ import annotations

import dataclasses
import functools
import html
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import DataError, KinjectError
from kinject.evaluation.arms import arm_kind, uses_rag
from kinject.experiments.tables import (
    UPDATED_TITLE,
    Results,
    column_costs,
    column_header,
    index_seconds,
    markdown_sections,
    paper_shaped,
    updated_columns,
)
from kinject.fileio import read_jsonl, write_text

FILES_DIR = "report_files"
REQUIRED = ("metrics.json", "costs.json", "records.jsonl")
# matplotlib settings for every plot: ids hashed with a fixed salt (no uuid), text as SVG
# <text> (escaped by matplotlib, no glyph outlines), no "$...$" math parsing of user names.
RC = {
    "svg.hashsalt": "kinject",
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.size": 9,
    "font.sans-serif": ["DejaVu Sans"],  # shipped with matplotlib: the same layout anywhere
    "axes.grid": True,
    "grid.alpha": 0.3,
}
SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
SWEEP_AXES = {"data.n_paraphrases": "number of paraphrases"}


@dataclass(frozen=True)
class Plot:
    id: str  # the <figure>'s id and the SVG file's stem
    section: str
    caption: str
    svg: str  # a standalone SVG document


@dataclass(frozen=True)
class Run:
    """A run folder's three result files; only the records of the sample questions."""

    metrics: dict
    costs: dict
    records: dict[tuple, dict]  # (model, arm, split, shots, k, question_id) -> record
    results: Results


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (plots in ``report_files/``) into ``out``
    (default: the run folder); return both paths.  A `kinject run` or `kinject demo` folder
    gets the experiment's report, a `kinject eval` folder its own (its table and accuracy)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    if not (run_dir / "plan.json").exists() and (run_dir / "config.yaml").is_file():
        title, plots, tables = eval_page(run_dir)
        html_page = render_page(title, plots, tables)
        markdown_page = render_page_markdown(title, plots, tables)
    else:
        run = load_run(run_dir)
        plots = make_plots(run)
        html_page, markdown_page = render_html(run, plots), render_markdown(run, plots)
    files = out / FILES_DIR
    for stale in sorted(files.glob("*.svg")) if files.is_dir() else []:
        if stale.stem not in {plot.id for plot in plots}:
            stale.unlink()
    for plot in plots:
        write_text(files / f"{plot.id}.svg", plot.svg)
    html_path, md_path = out / "report.html", out / "report.md"
    write_text(md_path, markdown_page)
    write_text(html_path, html_page)
    return html_path, md_path


# -- reading ------------------------------------------------------------------------------


def load_run(run_dir: Path) -> Run:
    for name in REQUIRED:
        if not (run_dir / name).is_file():
            raise KinjectError(
                f"{run_dir} has no {name}: the report needs a finished `kinject run` or "
                "`kinject demo` folder"
            )
    metrics = _read_json(run_dir / "metrics.json")
    costs = _read_json(run_dir / "costs.json")
    wanted = {(s["split"], s["question_id"]) for s in metrics.get("samples", [])}
    records = {}
    for _, r in read_jsonl(run_dir / "records.jsonl"):
        if (r["split"], r["question_id"]) in wanted:
            key = (r["model"], r["arm"], r["split"], r["shots"], r["k"], r["question_id"])
            records[key] = r
    return Run(metrics, costs, records, Results(metrics, costs))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(path, error.lineno, None, f"not valid JSON ({error.msg})") from None


# -- plots --------------------------------------------------------------------------------


def make_plots(run: Run) -> list[Plot]:
    """Every plot the run has data for, in report order, with unique ids."""
    plots = [
        plot_accuracy(run),
        plot_updated(run),
        *plot_sweeps(run),
        plot_k(run),
        *plot_training(run),
        plot_forgetting(run),
        plot_cost(run),
    ]
    unique: list[Plot] = []
    for plot in (p for p in plots if p is not None):
        taken, n, new_id = {p.id for p in unique}, 2, plot.id
        while new_id in taken:
            new_id, n = f"{plot.id}-{n}", n + 1
        unique.append(dataclasses.replace(plot, id=new_id))
    return unique


def _plotting(function: Callable) -> Callable:
    """Run a plot function under the report's matplotlib settings (the caller's untouched)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(RC):
            return function(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float):
    """A pyplot-free figure (no global figure registry, no GUI backend to choose)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata=SVG_METADATA)
    fig.clear()
    return buffer.getvalue().decode("utf-8")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.") or "x"


def _legend(text: str) -> str:
    return " " + text if text.startswith("_") else text  # matplotlib hides labels "_..."


def _errors(cells: list[dict]) -> list[list[float]]:
    """Error-bar lengths below and above each accuracy, from its 95% CI."""
    return [
        [max(m["acc"] - m["acc_ci"][0], 0.0) for m in cells],
        [max(m["acc_ci"][1] - m["acc"], 0.0) for m in cells],
    ]


def _label(results: Results, base_model: str, column: str) -> str:
    header = column_header(column)
    return f"{base_model} {header}" if len(results.base_models) > 1 else header


@_plotting
def plot_accuracy(run: Run) -> Plot | None:
    results = run.results
    if not results.cells:
        return None
    groups = len(results.rows)
    fig = _figure(max(8.0, min(16.0, 1.3 * groups + 3)), 3.8 * len(results.base_models))
    axes = fig.subplots(len(results.base_models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, results.base_models):
        _accuracy_bars(ax, results, model)
    caption = (
        "Accuracy by column on each test task and number of shots, with 95% bootstrap CIs "
        "(open questions: exact match); rag at the K chosen on "
        f"'{results.validation}'; dotted: chance."
    )
    if any("seeds" in m for m in results.cells.values()):
        caption += (
            " A column trained with several seeds: the bar is their mean, its CI resamples "
            "seeds and questions, and a dot marks each seed."
        )
    return Plot("fig-accuracy", "Accuracy by arm", caption, _svg(fig))


def _accuracy_bars(ax, results: Results, model: str) -> None:
    columns = [c for c in results.columns if any(k[:2] == (model, c) for k in results.cells)]
    width = 0.8 / max(len(columns), 1)
    for j, column in enumerate(columns):
        offset = (j - (len(columns) - 1) / 2) * width
        placed = [
            (i + offset, results.cells[(model, column, split, shots)])
            for i, (split, shots) in enumerate(results.rows)
            if (model, column, split, shots) in results.cells
        ]
        cells = [m for _, m in placed]
        bars = ax.bar(
            [x for x, _ in placed],
            [m["acc"] for m in cells],
            width,
            yerr=_errors(cells),
            capsize=2,
            label=_legend(column_header(column)),
        )
        # a bar of height 0 would be an empty slot, read as a missing cell: it is labelled
        zeros = ["0" if m["acc"] < 0.0005 else "" for m in cells]
        ax.bar_label(bars, zeros, padding=1, fontsize=6)
        seeded = [(x, s["acc"]) for x, m in placed for s in m.get("seeds", [])]
        if seeded:  # each training seed's accuracy on its column's bar
            ax.plot(*zip(*seeded), linestyle="none", marker=".", color="0.15", markersize=3)
    for i, (split, shots) in enumerate(results.rows):
        chances = [
            m["chance"]
            for k, m in results.cells.items()
            if k[0] == model and k[2:] == (split, shots) and "chance" in m
        ]
        if chances:
            ax.hlines(chances[0], i - 0.45, i + 0.45, colors="0.3", linestyles=":")
    ax.set_xticks(range(len(results.rows)), [f"{s}\n{n}-shot" for s, n in results.rows])
    ax.set(ylim=(0, 1.06), ylabel="accuracy", title=model)  # room for the caps at 1.0
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")


@_plotting
def plot_updated(run: Run) -> Plot | None:
    """Updated facts: per (model, task, shots) with previous answers, a pair of bars per
    column, the new value's accuracy and the previous value's rate."""
    results = run.results
    columns, rows = updated_columns(results)
    if not rows:
        return None
    ncols = min(len(rows), 2)
    nrows = -(-len(rows) // ncols)
    fig = _figure(max(6.0, min(16.0, 0.9 * len(columns) + 2)) * ncols / 1.4, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (model, split, shots) in zip(axes, rows):
        cells = [(c, results.cells.get((model, c, split, shots))) for c in columns]
        cells = [(c, m) for c, m in cells if m is not None and "previous_rate" in m]
        xs = range(len(cells))
        new = [m for _, m in cells]
        old = [{"acc": m["previous_rate"], "acc_ci": m["previous_rate_ci"]} for _, m in cells]
        ax.bar(
            [x - 0.2 for x in xs],
            [m["acc"] for m in new],
            0.4,
            yerr=_errors(new),
            capsize=2,
            label="new value (accuracy)",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [m["acc"] for m in old],
            0.4,
            yerr=_errors(old),
            capsize=2,
            label="previous value",
        )
        ax.set_xticks(list(xs), [column_header(c) for c, _ in cells], rotation=30, ha="right")
        title = f"{split}, {shots}-shot" + (f" ({model})" if len(results.base_models) > 1 else "")
        ax.set(ylim=(0, 1), ylabel="share of questions", title=title)
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()  # above the plots: bars reach 1
    fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize="small")
    caption = (
        "The facts version of the renamed-entity probe: on questions whose answer changed "
        "(the base model learned the previous value, the knowledge base states the new one), "
        "the share answered with the new value (accuracy) beside the share still answered "
        "with the previous value, by column (fine-tuning on the new text, retrieval, "
        "instruction), with 95% bootstrap CIs; rag at its chosen K."
    )
    return Plot("fig-updated", UPDATED_TITLE, caption, _svg(fig))


def plot_sweeps(run: Run) -> list[Plot]:
    sweeps = run.metrics.get("sweeps") or []
    several = len({s["base_model"] for s in sweeps}) > 1
    return [_sweep_plot(sweep, several) for sweep in sweeps if sweep["points"]]


@_plotting
def _sweep_plot(sweep: dict, several_models: bool) -> Plot:
    values = [point["value"] for point in sweep["points"]]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(values)))
    series: dict[tuple, list[tuple]] = {}
    for x, point in zip(xs, sweep["points"]):
        for cell in point["cells"]:
            series.setdefault((cell["split"], cell["shots"]), []).append((x, cell))
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for (split, shots), points in series.items():
        x = [p[0] for p in points]
        cells = [p[1] for p in points]
        (line,) = ax.plot(
            x, [m["acc"] for m in cells], marker="o", label=_legend(f"{split} {shots}-shot")
        )
        low = [m["acc_ci"][0] for m in cells]
        high = [m["acc_ci"][1] for m in cells]
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axis = SWEEP_AXES.get(sweep["key"], sweep["key"])
    ax.set_xticks(xs, [str(v) for v in values])
    model = f" of {sweep['base_model']}" if several_models else ""
    ax.set(
        xlabel=axis,
        ylabel="accuracy",
        ylim=(0, 1),
        title=f"{sweep['finetune']}{model}: accuracy by {axis}",
    )
    ax.legend(fontsize="small")
    name = _slug(f"{sweep['base_model']}-{sweep['name']}" if several_models else sweep["name"])
    caption = (
        f"Accuracy vs {axis} (sweep '{sweep['name']}' of {sweep['finetune']}{model}, "
        f"{sweep['key']}); one line per task and shots; shaded: 95% bootstrap CI."
    )
    return Plot(f"fig-sweep-{name}", f"Accuracy vs {axis}", caption, _svg(fig))


@_plotting
def plot_k(run: Run) -> Plot | None:
    validation = run.metrics.get("validation_task")
    grid = [
        m for m in run.metrics["cells"] if arm_kind(m["arm"]) == "rag" and m["split"] == validation
    ]
    if not grid:
        return None
    several = len(run.results.base_models) > 1
    series: dict[tuple, list[dict]] = {}
    for m in grid:  # rag and each rag+<instruction> arm of a model: K chosen for each
        series.setdefault((m["model"], m["arm"], m["shots"]), []).append(m)
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for index, ((model, _, shots), cells) in enumerate(series.items()):
        cells = sorted(cells, key=lambda m: m["k"])
        dodge = (index - (len(series) - 1) / 2) * 0.04  # overlapping lines stay visible
        x = [m["k"] + dodge for m in cells]
        column = cells[0]["column"]
        label = f"{cells[0]['base_model']} {column}" if several else column
        bars = ax.errorbar(
            x,
            [m["acc"] for m in cells],
            yerr=_errors(cells),
            marker="o",
            capsize=3,
            label=_legend(f"{label} {shots}-shot"),
        )
        chosen = [(xi, m["acc"]) for xi, m in zip(x, cells) if m.get("selected")]
        if chosen:
            color = bars.lines[0].get_color()
            ax.plot(*zip(*chosen), marker="*", markersize=14, color=color, linestyle="none")
    ax.set_xticks(sorted({m["k"] for m in grid}))
    ax.set(
        xlabel="K (retrieved chunks)",
        ylabel="accuracy",
        ylim=(0, 1),
        title=f"RAG on '{validation}'",
    )
    ax.legend(fontsize="small")
    caption = (
        f"RAG accuracy vs K on the validation task '{validation}', one line per model and "
        "shots, with 95% bootstrap CIs; star: the K chosen for the test tasks."
    )
    return Plot("fig-k", "Accuracy vs K", caption, _svg(fig))


def plot_training(run: Run) -> list[Plot]:
    finetuning = run.metrics.get("finetuning") or {}
    return [_training_plot(label, row) for label, row in finetuning.items()]


@_plotting
def _training_plot(label: str, row: dict) -> Plot:
    fig = _figure(11.0, 3.4)
    loss_ax, val_loss_ax, val_acc_ax = fig.subplots(1, 3)
    curve = row.get("loss_curve") or []
    loss_ax.set(xlabel="step", ylabel="training loss", title="training loss (chosen LR)")
    if len(curve) < 2:  # one logged step is no curve: say what there is
        loss_ax.set(xticks=[], yticks=[])
        said = (
            f"one logged step\nstep {curve[0]['step']}: loss {curve[0]['loss']:.3f}"
            if curve
            else "no logged step"
        )
        loss_ax.text(
            0.5,
            0.5,
            said,
            ha="center",
            va="center",
            transform=loss_ax.transAxes,
        )
    else:
        loss_ax.plot(
            [p["step"] for p in curve],
            [p["loss"] for p in curve],
            marker="." if len(curve) < 50 else None,
        )
    _validation_curves(val_loss_ax, val_acc_ax, row)
    fig.suptitle(label)
    caption = (
        f"Fine-tuning {label}: training loss by step at the chosen learning rate "
        f"({row['learning_rate']:g}, epoch {row['epoch']}); validation loss and accuracy by "
        "epoch for every learning rate tried; star: the chosen (learning rate, epoch)."
    )
    return Plot(f"fig-training-{_slug(label)}", "Training", caption, _svg(fig))


def _validation_curves(loss_ax, acc_ax, row: dict) -> None:
    """Validation loss and accuracy by epoch, a line per learning rate; a star at the chosen."""
    by_rate: dict[float, list[dict]] = {}
    for point in row.get("validation_curve") or []:
        by_rate.setdefault(point["learning_rate"], []).append(point)
    for rate in sorted(by_rate):
        points = sorted(by_rate[rate], key=lambda p: p["epoch"])
        with_loss = [p for p in points if p.get("loss") is not None]
        loss_ax.plot(
            [p["epoch"] for p in with_loss],
            [p["loss"] for p in with_loss],
            marker="o",
            label=f"lr {rate:g}",
        )
        acc_ax.plot(
            [p["epoch"] for p in points],
            [p["acc"] for p in points],
            marker="o",
            label=f"lr {rate:g}",
        )
    if row.get("validation_acc") is not None:
        acc_ax.plot(
            [row["epoch"]],
            [row["validation_acc"]],
            marker="*",
            markersize=14,
            color="black",
            linestyle="none",
            label="chosen",
        )
    loss_ax.set(xlabel="epoch", ylabel="validation loss", title="validation loss")
    acc_ax.set(
        xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1), title="validation accuracy"
    )
    epochs = sorted({p["epoch"] for points in by_rate.values() for p in points})
    for ax in (loss_ax, acc_ax):
        ax.set_xticks(epochs)
        if by_rate:
            ax.legend(fontsize="small")


def _mean_change(results: Results, model: str, column: str, splits: list[str]) -> float | None:
    """Mean accuracy change of ``column`` over the base column on ``splits`` (every shots)."""
    changes = [
        results.cells[(model, column, split, shots)]["acc"]
        - results.cells[(model, "base", split, shots)]["acc"]
        for split, shots in results.rows
        if split in splits
        and (model, column, split, shots) in results.cells
        and (model, "base", split, shots) in results.cells
    ]
    return sum(changes) / len(changes) if changes else None


@_plotting
def plot_forgetting(run: Run) -> Plot | None:
    results = run.results
    known = (run.metrics.get("tables") or {}).get("forgetting_tasks") or []
    if not known:
        return None
    learn = list(dict.fromkeys(split for split, _ in results.rows if split not in known))
    points = []
    for model in results.base_models:
        for ft in results.finetunes():
            gain = _mean_change(results, model, ft, learn)
            change = _mean_change(results, model, ft, known)
            if gain is not None and change is not None:
                points.append((_label(results, model, ft), gain, change))
    if not points:
        return None
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    for label, gain, change in points:
        ax.plot([gain], [change], marker="o", linestyle="none")
        ax.annotate(
            label, (gain, change), textcoords="offset points", xytext=(5, 5), fontsize="small"
        )
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.margins(0.3)
    ax.set(
        xlabel=f"gain over base on the learned tasks ({', '.join(learn)})",
        ylabel=f"change on {', '.join(known)} (below 0: forgetting)",
        title="Gain and forgetting (closed book)",
    )
    caption = (
        "Each fine-tuning closed book: mean accuracy gain over its base model on the tasks it "
        f"had to learn ({', '.join(learn)}) against the mean change on the tasks the base "
        f"model knew ({', '.join(known)}), averaged over tasks and shots."
    )
    return Plot("fig-forgetting", "Forgetting", caption, _svg(fig))


def column_seconds(run: Run) -> dict[tuple, float]:
    """(base model, column) -> training (every LR candidate) + index build + scoring seconds
    of the test tasks."""
    total = {}
    for key, cost in column_costs(run.results).items():
        if not cost["questions"]:
            continue
        seconds = cost["seconds"] + (index_seconds(cost["index"]) or 0.0)
        total[key] = seconds + (cost["training"] or {}).get("train_seconds", 0.0)
    return total


def _log_x(ax, values: list[float]) -> None:
    """A log x axis labelled in plain numbers (math text is off, so no 10^x): 1-2-5 ticks
    over a few decades, powers of ten over more."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    decades = math.log10(max(values) / min(values)) if values else 0.0
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


@_plotting
def plot_cost(run: Run) -> Plot | None:
    results = run.results
    seconds = column_seconds(run)
    splits = list(dict.fromkeys(split for split, _ in results.rows))
    if not splits or not seconds:
        return None
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    highest: dict[tuple, tuple[float, float]] = {}  # column -> its highest point
    for split, marker in zip(splits, "osD^v<>pPX*h" * len(splits)):
        shots = min(n for s, n in results.rows if s == split)
        cells = [
            (k, m) for k, m in results.cells.items() if k[2:] == (split, shots) and k[:2] in seconds
        ]
        xs = [max(seconds[k[:2]], 1e-3) for k, _ in cells]
        ax.plot(
            xs,
            [m["acc"] for _, m in cells],
            marker=marker,
            linestyle="none",
            label=_legend(f"{split} {shots}-shot"),
        )
        for x, (k, m) in zip(xs, cells):
            if k[:2] not in highest or m["acc"] > highest[k[:2]][1]:
                highest[k[:2]] = (x, m["acc"])
    for (x, acc), names in _coincident(highest, results).items():
        ax.annotate(
            ", ".join(names),  # a label per column, at its highest point; shared on one spot
            (x, acc),
            textcoords="offset points",
            xytext=(4, 3),
            fontsize="x-small",
        )
    _log_x(ax, [max(v, 1e-3) for v in seconds.values()])
    ax.set(
        xlabel="compute seconds: training (every LR tried) + index build + scoring",
        ylabel="accuracy",
        ylim=(0, 1.1),  # a point at 1.0 and its label stay inside the axes
        title="Cost vs accuracy",
    )
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.legend(fontsize="small")
    caption = (
        "Accuracy on each test task (at its fewest shots) against what the column cost in "
        "compute seconds (log scale): fine-tuning every learning-rate candidate, building the "
        "retrieval index, and scoring every test question at every number of shots."
    )
    return Plot("fig-cost", "Cost vs accuracy", caption, _svg(fig))


def _coincident(points: dict[tuple, tuple[float, float]], results: Results) -> dict:
    """The cost plot's labels: ``{spot: [column label, ...]}``, the columns whose points
    (``{(base model, column): (seconds, accuracy)}``) fall on the same spot (seconds within
    5%, accuracy within 0.03) under one label, so that no two are drawn over each other
    (``ft-regbase``)."""
    import math

    spots: dict[tuple, list[str]] = {}
    for (model, column), (x, acc) in points.items():
        near = next(
            (
                spot
                for spot in spots
                if abs(math.log(spot[0] / x)) < 0.05 and abs(spot[1] - acc) < 0.03
            ),
            (x, acc),
        )
        spots.setdefault(near, []).append(_label(results, model, column))
    return spots


# -- HTML ---------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.7em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em}
figure.plot{margin:1.5em 0}figure.plot svg{max-width:100%;height:auto}
figcaption{color:#444;font-size:.92em;max-width:60em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right}
.right{color:#1a7f37}.wrong{color:#c62828}
.question{font-weight:600}.meta{color:#666;font-size:.8em}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def eval_page(run_dir: Path) -> tuple[str, list[Plot], str]:
    """A `kinject eval` folder's page: its title (the model), its accuracy plot and its
    table (Markdown, as ``kinject table`` prints it), from its files alone."""
    from kinject.config import EvalConfig, load_config
    from kinject.evaluation.report import markdown_table

    for name in REQUIRED:
        if not (run_dir / name).is_file():
            raise KinjectError(
                f"{run_dir} has no {name}: the report needs a finished `kinject eval` folder"
            )
    config = load_config(EvalConfig, run_dir / "config.yaml")
    cells = _read_json(run_dir / "metrics.json").get("cells") or []
    select_k_on = config.rag.select_k_on if config.rag else None
    title = f"{run_dir.name}: {Path(config.model.path).name}"
    plot = plot_eval_accuracy([m for m in cells if m["split"] != select_k_on], select_k_on)
    return title, [plot] if plot else [], markdown_table(cells, select_k_on)


@_plotting
def plot_eval_accuracy(cells: list[dict], select_k_on: str | None) -> Plot | None:
    """A `kinject eval` folder's accuracy: a bar per arm (rag: per K) on each task and number
    of shots, with its 95% CI and its value written on it (so 0.000 is a bar, not a gap)."""
    if not cells:
        return None

    def column(m: dict) -> str:
        return f"{m['arm']} K={m['k']}" if uses_rag(m["arm"]) else m["arm"]

    columns = list(dict.fromkeys(column(m) for m in cells))
    rows = list(dict.fromkeys((m["split"], m["shots"]) for m in cells))
    fig = _figure(max(6.0, min(16.0, 0.9 * len(rows) * len(columns) + 3)), 4.0)
    ax = fig.subplots()
    width = 0.8 / len(columns)
    for j, name in enumerate(columns):
        placed = [
            (i + (j - (len(columns) - 1) / 2) * width, m)
            for i, row in enumerate(rows)
            for m in cells
            if (m["split"], m["shots"]) == row and column(m) == name
        ]
        bars = ax.bar(
            [x for x, _ in placed],
            [m["acc"] for _, m in placed],
            width,
            yerr=_errors([m for _, m in placed]),
            capsize=2,
            label=_legend(name),
        )
        ax.bar_label(bars, [f"{m['acc']:.3f}" for _, m in placed], padding=2, fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{split}\n{shots}-shot" for split, shots in rows])
    ax.set(ylim=(0, 1.12), ylabel="accuracy")
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    where = f"; rag at the K chosen on '{select_k_on}'" if select_k_on else ""
    caption = (
        "Accuracy by arm on each task and number of shots, with 95% bootstrap CIs (open "
        f"questions: exact match){where}."
    )
    return Plot("fig-accuracy", "Accuracy by arm", caption, _svg(fig))


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def render_html(run: Run, plots: list[Plot]) -> str:
    title = run.metrics.get("experiment") or "experiment"
    samples = _samples_html(run)
    lead, rest = _lead_and_rest(run)
    return render_page(title, plots, rest, samples, lead=lead)


def _lead_and_rest(run: Run) -> tuple[str, str]:
    """The tables' Markdown in two: what the page opens with (the verdict, and the paper's
    Table 2 beside it when the run has the paper's columns), and the rest."""
    sections = markdown_sections(run.metrics, run.costs)
    first = {"verdict", "table2"} if paper_shaped(run.results) else {"verdict"}
    lead = [line for name, lines in sections if name in first for line in lines]
    rest = [line for name, lines in sections if name not in first for line in lines]
    return "\n".join(lead), "\n".join(rest)


def render_page(
    title: str, plots: list[Plot], tables: str, samples: str = "", lead: str = ""
) -> str:
    """The report page: the title, ``lead`` (Markdown: the verdict), the plots by section,
    the tables (Markdown, its own title line dropped: the page's <h1> is the title) and the
    sample questions' section."""
    sections = list(dict.fromkeys(plot.section for plot in plots))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if lead:
        parts.append(f'<section id="verdict">\n{markdown_html(lead)}\n</section>')
    parts += [
        _nav(sections, bool(samples)),
    ]
    for number, section in enumerate(sections, start=1):
        parts.append(f'<section id="section-{number}"><h2>{_e(section)}</h2>')
        parts += [_figure_html(plot) for plot in plots if plot.section == section]
        parts.append("</section>")
    parts += [_tables_html(tables), samples, "</body></html>", ""]
    return "\n".join(parts)


def _nav(sections: list[str], samples: bool) -> str:
    links = [f'<a href="#section-{n}">{_e(s)}</a>' for n, s in enumerate(sections, start=1)]
    links.append('<a href="#tables">Tables</a>')
    if samples:
        links.append('<a href="#samples">Sample questions</a>')
    return "<nav>" + "".join(links) + "</nav>"


def _figure_html(plot: Plot) -> str:
    return (
        f'<figure class="plot" id="{_e(plot.id)}">\n{inline_svg(plot.svg, plot.id)}\n'
        f"<figcaption>{_e(plot.caption)}</figcaption></figure>"
    )


_TAG = re.compile(r"<[^>]*>")  # matplotlib escapes < and > in text and attributes
_ID_USE = re.compile(r'(\bid="|href="#|url\(#)')


def inline_svg(svg: str, prefix: str) -> str:
    """An SVG document as an element of the page: no XML prolog (its DTD URL), no namespace
    declarations (HTML puts <svg> in its namespace), and every id prefixed so several
    plots' ids (clip paths, markers) never clash."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
    svg = re.sub(r'^(<svg[^>]*?)\s+xmlns:xlink="[^"]*"', r"\1", svg)
    svg = re.sub(r'^(<svg[^>]*?)\s+xmlns="[^"]*"', r"\1", svg)
    return _TAG.sub(
        lambda tag: _ID_USE.sub(lambda m: m.group(1) + prefix + "-", tag.group(0)), svg
    ).strip()


def _tables_html(text: str) -> str:
    if text.startswith("# "):
        text = text.split("\n", 1)[1] if "\n" in text else ""  # the title is the page's <h1>
    return f'<section id="tables"><h2>Tables</h2>\n{markdown_html(text, shift=1)}\n</section>'


_RULE = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def markdown_html(text: str, shift: int = 0) -> str:
    """The Markdown ``tables.markdown`` writes as HTML: ``#`` headings, ``|`` tables and
    plain paragraphs, every text escaped (nothing else of Markdown is interpreted)."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text.strip()):
        lines = block.splitlines()
        while lines and lines[0].startswith("#"):
            level = min(len(lines[0]) - len(lines[0].lstrip("#")) + shift, 6)
            out.append(f"<h{level}>{_e(lines.pop(0).lstrip('#').strip())}</h{level}>")
        if (
            len(lines) >= 2
            and all(line.startswith("|") for line in lines)
            and _RULE.match(lines[1])
        ):
            out.append(_table_html(lines))
        elif lines and all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{_strong(_e(html.unescape(line[2:])))}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        elif lines:
            out.append(f"<p>{_e(' '.join(lines))}</p>")
    return "\n".join(out)


def _strong(escaped: str) -> str:
    """A list item's ``**bold**`` (in the verdict) as <strong>; the text is escaped already."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells as text: ``\\|`` is a ``|`` inside a cell, and a cell's
    HTML escapes (from :func:`kinject.evaluation.report._md_cell`) are undone."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [html.unescape(c.strip().replace("\\|", "|")) for c in re.split(r"(?<!\\)\|", inner)]


def _table_html(lines: list[str]) -> str:
    header, rule, body = _cells(lines[0]), _cells(lines[1]), [_cells(line) for line in lines[2:]]
    numeric = [cell.endswith(":") for cell in rule]
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    numeric += [False] * max(0, max((len(row) for row in body), default=0) - len(numeric))
    rows = ["<tr>" + "".join(_td(c, n) for c, n in zip(row, numeric)) + "</tr>" for row in body]
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def _td(text: str, numeric: bool) -> str:
    return f'<td class="num">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>"


def _samples_html(run: Run) -> str:
    by_split: dict[str, list[dict]] = {}
    for sample in run.metrics.get("samples") or []:
        by_split.setdefault(sample["split"], []).append(sample)
    tables = [_sample_table(run, split, samples) for split, samples in by_split.items()]
    if not any(tables):
        return ""
    intro = (
        "<p>A few questions of each test task with every column's answer at the task's fewest "
        'shots (rag at its chosen K): <span class="right">✓</span> right, '
        '<span class="wrong">✗</span> wrong; a column trained with several seeds shows its '
        "first seed's answer.</p>"
    )
    body = "\n".join(table for table in tables if table)
    return f'<section id="samples"><h2>Sample questions</h2>\n{intro}\n{body}\n</section>'


def _sample_table(run: Run, split: str, samples: list[dict]) -> str:
    """One task's sample questions: a row each, a column per table column ('' if the run
    has no cell on the task)."""
    results = run.results
    shots_seen = [n for s, n in results.rows if s == split]
    if not shots_seen:
        return ""
    shots = min(shots_seen)
    cells = [(key, cell) for key, cell in results.cells.items() if key[2:] == (split, shots)]
    head = "<th>question</th><th>correct answer</th>" + "".join(
        f"<th>{_e(_label(results, key[0], key[1]))}</th>" for key, _ in cells
    )
    rows = []
    for sample in samples:
        answers = [
            _answer(sample, _sample_record(run, c, shots, sample["question_id"])) for _, c in cells
        ]
        rows.append(
            f'<tr><td><span class="meta">{_e(sample["question_id"])}</span><br>'
            f'<span class="question">{_e(sample["question"])}</span></td>'
            f"<td><b>{_e(_correct(sample))}</b></td>"
            + "".join(_answer_td(text, right) for text, right in answers)
            + "</tr>"
        )
    return (
        f'<h3>{_e(split)}, {shots}-shot</h3>\n<table class="samples"><thead><tr>{head}</tr>'
        "</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def _sample_record(run: Run, cell: dict, shots: int, question_id: str) -> dict | None:
    """A column's record of a question; a column trained with several seeds: its first seed's."""
    source = cell["seeds"][0] if "seeds" in cell else cell
    key = (source["model"], cell["arm"], cell["split"], shots, source["k"], question_id)
    return run.records.get(key)


def _answer(sample: dict, record: dict | None) -> tuple[str, bool | None]:
    """A column's answer to a sample question (the option text it chose) and if it was right."""
    if record is None:
        return "(no record of this question)", None
    if "prediction" in record:
        text = record["prediction"]
        text = text if len(text) <= 160 else text[:159] + "…"
        return f"{text} (F1 {record.get('f1', 0.0):.2f})", bool(record["correct"])
    choices, pred = sample.get("choices") or [], record["pred"]
    text = choices[pred] if 0 <= pred < len(choices) else f"option {pred}"
    return text, bool(record["correct"])


def _answer_td(text: str, right: bool | None) -> str:
    if right is None:
        return f"<td>{_e(text)}</td>"
    mark, style = ("✓", "right") if right else ("✗", "wrong")
    return f'<td class="{style}">{_e(text)} {mark}</td>'


def _correct(sample: dict) -> str:
    if "answers" in sample:
        return " | ".join(str(a) for a in sample["answers"])
    return str(sample["choices"][sample["answer"]])


# -- Markdown -----------------------------------------------------------------------------


def render_markdown(run: Run, plots: list[Plot]) -> str:
    """The tables of ``table.md`` with the plots linked from ``report_files/`` after the
    verdict."""
    title = run.metrics.get("experiment") or "experiment"
    lead, rest = _lead_and_rest(run)
    return render_page_markdown(title, plots, rest, lead=lead)


def render_page_markdown(title: str, plots: list[Plot], text: str, lead: str = "") -> str:
    """``lead`` (the verdict) and then ``text`` (Markdown tables) under ``title``, the plots
    linked from ``report_files/`` between them."""
    rest = text.partition("\n")[2] if text.startswith("# ") else text
    lines = [f"# {_md_text(title)}", ""]
    if lead:
        lines += [lead.strip("\n"), ""]
    for section in dict.fromkeys(plot.section for plot in plots):
        lines += [f"## {_md_text(section)}", ""]
        for plot in (p for p in plots if p.section == section):
            lines += [f"![{plot.id}]({FILES_DIR}/{plot.id}.svg)", "", _md_text(plot.caption), ""]
    rest = rest.lstrip("\n")
    if plots and not rest.startswith("#"):
        rest = "\n" + rest  # a table after a caption needs a blank line before it
    return "\n".join(lines) + rest + ("" if rest.endswith("\n") else "\n")


def _md_text(text: str) -> str:
    """User names in Markdown prose: HTML-escaped (renders as the same characters) and
    Markdown's emphasis and link characters backslash-escaped."""
    return re.sub(r"([\\`*_\[\]])", r"\\\1", html.escape(text, quote=False))
