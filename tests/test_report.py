"""kinject report: one self-contained, deterministic, escaped HTML page and a Markdown twin,
made from a real `kinject run` folder's three result files alone."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kinject.errors import KinjectError
from kinject.experiments.report import FILES_DIR, write_report
from kinject.experiments.tables import Results, column_header

RESULT_FILES = ("metrics.json", "costs.json", "records.jsonl")
FIGURES = {
    "fig-accuracy",
    "fig-sweep-paraphrases",
    "fig-k",
    "fig-training-ft-reg",
    "fig-training-ft-par",
    "fig-forgetting",
    "fig-cost",
}
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
PWN = "<script>document.title='pwned'</script>"
PWN_IMG = "<img src=x onerror=\"document.title='pwned'\">"  # no alert(): it would hang Chromium


def _copy(run: Path, into: Path) -> Path:
    """The run folder's result files only: the report must need nothing else (no models,
    no plan, no task files)."""
    shutil.copytree(
        run,
        into,
        ignore=lambda folder, names: [
            n for n in names if Path(folder) != run or n not in RESULT_FILES
        ],
    )
    return into


def _outputs(run: Path) -> dict[str, bytes]:
    files = [run / "report.html", run / "report.md", *sorted((run / FILES_DIR).iterdir())]
    return {str(path.relative_to(run)): path.read_bytes() for path in files}


def _figure_ids(page: str) -> set[str]:
    return set(re.findall(r'<figure class="plot" id="([^"]+)"', page))


def _plant(run: Path, text: str, img: str = IMG) -> dict:
    """Put ``text`` where user data reaches the page: the experiment's name, a sample
    question and option, a sweep's name and key (a plot title and axis), a fine-tuning's
    label (a plot title)."""
    path = run / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["experiment"] = f"{text} {img}"
    sample = metrics["samples"][0]
    sample["question"] = f"{text} {sample['question']}"
    sample["choices"] = [f"{img} {choice}" for choice in sample["choices"]]
    metrics["sweeps"][0]["name"] = text
    metrics["sweeps"][0]["key"] = f"data.{text}"
    metrics["finetuning"] = {f"{text} {label}": row for label, row in metrics["finetuning"].items()}
    path.write_text(json.dumps(metrics), encoding="utf-8")
    return metrics


@pytest.fixture(scope="module")
def report_run(quick_experiment_run, tmp_path_factory) -> Path:
    run = _copy(quick_experiment_run, tmp_path_factory.mktemp("report") / "run")
    write_report(run)
    return run


def test_report_is_one_self_contained_page_with_every_plot_and_table(report_run):
    page = (report_run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page  # not even an SVG namespace
    for link in re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page):
        assert link.startswith("#"), link  # only links within the page
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert _figure_ids(page) == FIGURES
    figures = re.findall(r'<figure class="plot".*?</figure>', page, flags=re.DOTALL)
    assert len(figures) == len(FIGURES)
    for figure in figures:
        assert "<svg" in figure and "</svg>" in figure and "<figcaption>" in figure
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # several inline SVGs, no clashing ids
    # every Markdown table of table.md as an HTML table, plus one per sampled task
    md_tables = (report_run / "report.md").read_text(encoding="utf-8").count("\n|---")
    assert md_tables == 9  # with each fine-tuning's learning rate, epoch and runner-up
    assert "<h3>Learning rate and epoch</h3>" in page
    assert page.count("<table") == md_tables + 3  # samples of known, new, new_open
    assert "<th>FT+RAG (ft-par)</th>" in page and "<th>ms / question</th>" in page
    verdict = page.index('<section id="verdict">')
    assert page.index("<h1>") < verdict < page.index("<figure") < page.index('id="tables"')
    assert "<h2>Verdict</h2>" in page and "<ul><li><strong>known</strong>, 0-shot" in page
    assert '<section id="tables">' in page and '<section id="samples">' in page
    assert "Helsinki" in page  # a sample question's correct answer
    assert re.search(r'<td class="(right|wrong)">[^<]+ [✓✗]</td>', page)


def test_report_markdown_links_the_plots_and_holds_the_tables(report_run):
    from kinject.experiments.tables import markdown_sections

    text = (report_run / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {Path(link).stem for link in links} == FIGURES
    for link in links:
        assert link.startswith(f"{FILES_DIR}/")
        svg = (report_run / link).read_text(encoding="utf-8")
        assert "<svg" in svg and "<metadata" not in svg  # no date, no matplotlib version
    metrics = json.loads((report_run / "metrics.json").read_text(encoding="utf-8"))
    costs = json.loads((report_run / "costs.json").read_text(encoding="utf-8"))
    sections = markdown_sections(metrics, costs)
    for _, lines in sections:
        assert "\n".join(lines).strip() in text
    assert [name for name, _ in sections][:3] == ["verdict", "table1", "table2"]
    verdict, table2 = text.index("## Verdict"), text.index("## Table 2 layout")
    assert verdict < table2 < text.index("![") < text.index("## Table 1 layout")


def test_report_is_byte_identical_when_written_again(report_run, tmp_path):
    first = _outputs(report_run)
    again = _copy(report_run, tmp_path / "elsewhere")  # another folder, another process
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from kinject.experiments.report import write_report; write_report({str(again)!r})",
        ],
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        timeout=300,
    )
    assert _outputs(again) == first
    (again / "report.html").unlink()
    (again / "report.md").unlink()
    shutil.rmtree(again / FILES_DIR)
    write_report(again)
    assert _outputs(again) == first


def test_report_escapes_every_name_question_and_answer(report_run, tmp_path):
    run = _copy(report_run, tmp_path / "run")
    _plant(run, SCRIPT)
    html_path, md_path = write_report(run)
    page = html_path.read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert title.startswith("&lt;script&gt;")
    # the sample question, its option (as the correct answer and columns' answers) ...
    assert re.search(r'class="question">&lt;script&gt;alert\(1\)&lt;/script&gt; ', page)
    assert re.search(r"<b>&lt;img src=x onerror=alert\(2\)&gt; \w", page)
    # ... and matplotlib's SVG text: the sweep key as an axis label, the label as a title
    sweep_svg = next((run / FILES_DIR).glob("fig-sweep-*.svg")).read_text(encoding="utf-8")
    assert "data.&lt;script&gt;alert(1)&lt;/script&gt;" in sweep_svg
    assert "<script" not in sweep_svg
    training = [fig for fig in _figure_ids(page) if fig.startswith("fig-training-")]
    assert len(training) == 2 and all("script" in fig for fig in training)
    for name in re.findall(r'\bid="([^"]*)"', page):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name  # ids are slugs
    assert "<script" not in md_path.read_text(encoding="utf-8").split("\n", 1)[0]


def _table_blocks(text: str) -> list[list[str]]:
    blocks, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks, block = [*blocks, block], []
    return blocks


def test_markdown_tables_keep_their_columns_when_a_name_holds_a_pipe(report_run, tmp_path):
    run = _copy(report_run, tmp_path / "run")
    path = run / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["sweeps"][0]["key"] = "data.a|b"
    metrics["cells"][0]["split"] = "new|<b>\nold"
    path.write_text(json.dumps(metrics), encoding="utf-8")
    html_path, md_path = write_report(run)
    text = md_path.read_text(encoding="utf-8")
    assert "data.a\\|b" in text and "new\\|&lt;b&gt; old" in text
    page = html_path.read_text(encoding="utf-8")
    assert "<th>data.a|b</th>" in page and "<td>new|&lt;b&gt; old</td>" in page
    blocks = _table_blocks(text)
    assert len(blocks) >= 5
    for block in blocks:
        columns = {len(re.findall(r"(?<!\\)\|", line)) for line in block}
        assert len(columns) == 1, block


def test_report_leaves_out_plots_without_data(report_run, tmp_path):
    run = _copy(report_run, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    metrics["sweeps"], metrics["finetuning"] = [], {}
    metrics["tables"]["forgetting_tasks"] = []
    metrics["cells"] = [m for m in metrics["cells"] if m["split"] != metrics["validation_task"]]
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (run / FILES_DIR).mkdir()
    (run / FILES_DIR / "fig-k.svg").write_text("<svg/>", encoding="utf-8")  # from an older run
    html_path, md_path = write_report(run)
    page = html_path.read_text(encoding="utf-8")
    assert _figure_ids(page) == {"fig-accuracy", "fig-cost"}
    assert page.count("<section") == 5  # the verdict, two plots, the tables, the samples
    assert sorted(p.name for p in (run / FILES_DIR).iterdir()) == [
        "fig-accuracy.svg",
        "fig-cost.svg",
    ]
    assert "fig-k" not in md_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", RESULT_FILES)
def test_report_names_a_missing_result_file(report_run, tmp_path, name):
    run = _copy(report_run, tmp_path / "run")
    (run / name).unlink()
    with pytest.raises(KinjectError, match=re.escape(name)) as raised:
        write_report(run)
    assert "\n" not in str(raised.value)
    assert not (run / "report.html").exists()


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium")
    assert chromium, (
        "headless Chromium is needed to check the report in a browser: "
        "run `apt-get install chromium` (the Makefile installs it)"
    )
    profile.mkdir()
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("Chromium hung on the report (a script ran and opened a dialog?)")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_renders_in_headless_chromium_and_runs_no_script(report_run, tmp_path):
    run = _copy(report_run, tmp_path / "run")
    _plant(run, PWN, PWN_IMG)
    html_path, _ = write_report(run)
    shot = tmp_path / "shot.png"
    _chromium(html_path, tmp_path / "profile-1", f"--screenshot={shot}", "--window-size=1280,4000")
    assert _png_size(shot) == (1280, 4000)
    from PIL import Image

    with Image.open(shot) as image:
        gray = image.convert("L")
        dark = sum(gray.histogram()[:128])
    assert dark > 20_000, "the screenshot is (nearly) blank"  # text, bars, axes drawn

    dom = _chromium(html_path, tmp_path / "profile-2", "--dump-dom").stdout
    title = re.search(r"<title>(.*?)</title>", dom, flags=re.DOTALL).group(1)
    assert title != "pwned" and title.startswith("&lt;script&gt;document.title=")
    assert "<script" not in dom.lower() and "<img" not in dom.lower()
    assert dom.count("&lt;script&gt;document.title='pwned'&lt;/script&gt;") >= 2
    assert "&lt;img src=x onerror=\"document.title='pwned'\"&gt;" in dom
    ids = _figure_ids(html_path.read_text(encoding="utf-8"))
    assert len(ids) == len(FIGURES) and _figure_ids(dom) == ids
    assert dom.count("<svg") == len(FIGURES)
    assert dom.count("<table") == 12 and '<section id="samples">' in dom  # 9 tables + 3 samples


def _text_of(svg: str) -> list[str]:
    """The text elements of a plot's SVG, as drawn (matplotlib writes each as <text>)."""
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def test_plots_read_right_when_labels_coincide_cells_are_0_or_training_is_one_step(report_run):
    files = report_run / "report_files"
    metrics = json.loads((report_run / "metrics.json").read_text(encoding="utf-8"))
    results = Results(metrics, json.loads((report_run / "costs.json").read_text()))
    # cost vs accuracy: every column labelled exactly once, though it has a point per task
    cost = _text_of((files / "fig-cost.svg").read_text(encoding="utf-8"))
    labels = [name for text in cost for name in text.split(", ")]
    headers = {column_header(column) for column in results.columns}
    assert sorted(n for n in labels if n in headers) == sorted(headers)
    # accuracy: a cell at 0.000 is a labelled bar, not an empty slot
    zeros = [m for m in results.cells.values() if m["acc"] == 0]
    assert zeros  # the quick run's open questions: exact match 0
    accuracy = _text_of((files / "fig-accuracy.svg").read_text(encoding="utf-8"))
    assert accuracy.count("0") == len(zeros)
    # a fine-tuning that logged one step shows that step, not a one-point curve
    one_step = [
        label for label, row in metrics["finetuning"].items() if len(row["loss_curve"]) == 1
    ]
    assert one_step
    for label in one_step:
        svg = (files / f"fig-training-{label}.svg").read_text(encoding="utf-8")
        assert "one logged step" in _text_of(svg)


def _cell(column: str, acc: float, ci: tuple[float, float], split: str = "new") -> dict:
    arm = "rag" if column.endswith("rag") else "oracle" if column == "oracle" else "base"
    model = "m" if column in ("base", "rag", "oracle") else f"m-{column.split('+')[0]}"
    return {
        "model": model,
        "base_model": "m",
        "arm": arm,
        "column": column,
        "split": split,
        "shots": 0,
        "k": 1 if arm == "rag" else 0,
        "n": 100,
        "acc": acc,
        "acc_ci": list(ci),
    }


def _comparison(a: str, b: str, difference: float, ci: tuple[float, float], split: str = "new"):
    return {
        "base_model": "m",
        "split": split,
        "shots": 0,
        "a": a,
        "b": b,
        "difference": difference,
        "difference_ci": list(ci),
        "p_value": 0.5,
        "a_only": 1,
        "b_only": 1,
    }


def test_the_verdict_names_a_best_column_only_where_every_interval_excludes_zero():
    from kinject.experiments.tables import Results, verdict_lines

    models = {
        "m": {"finetune": None, "base_model": "m", "sweep": None},
        "m-ft": {"finetune": "ft", "base_model": "m", "sweep": None},
    }
    cells = [
        _cell("base", 0.25, (0.17, 0.34)),
        _cell("rag", 0.90, (0.84, 0.95)),
        _cell("ft", 0.40, (0.30, 0.50)),
        _cell("oracle", 0.97, (0.93, 1.0)),
        _cell("base", 0.80, (0.72, 0.88), "known"),
        _cell("rag", 0.78, (0.70, 0.86), "known"),
        _cell("ft", 0.83, (0.75, 0.90), "known"),
    ]
    comparisons = [
        _comparison("base", "rag", -0.65, (-0.74, -0.56)),
        _comparison("rag", "ft", 0.50, (0.39, 0.61)),
        _comparison("base", "ft", -0.15, (-0.26, -0.05)),
        _comparison("base", "rag", 0.02, (-0.03, 0.07), "known"),
        _comparison("ft", "base", 0.03, (-0.02, 0.08), "known"),
        _comparison("ft", "rag", 0.05, (0.01, 0.10), "known"),
    ]
    training = {"m-ft": {"seeds": 3, "candidates": 3, "train_seconds": 125.0}}
    scoring = [
        {
            "model": "m",
            "base_model": "m",
            "arm": "rag",
            "split": "new",
            "seconds": 0.5,
            "questions": 100,
            "requests": 400,
        }
    ]
    metrics = {"models": models, "cells": cells, "comparisons": comparisons}
    costs = {
        "training": training,
        "cells": scoring,
        "index": {"embed_seconds": 2.0, "index_seconds": 0.25},
    }
    lines = verdict_lines(Results(metrics, costs))
    assert lines == [
        (
            "- **new**, 0-shot: **+RAG** is best, 0.900 [.840–.950], ahead of ft by +0.500 "
            "[+0.390, +0.610]. Base: 0.250. Oracle: 0.970. Cost: an index built in 2.2 s, 5 ms "
            "per question scored."
        ),
        (
            "- **known**, 0-shot: no column is shown best. ft scores highest, 0.830 [.750–.900], "
            "but its lead over base has an interval that includes 0. Base: 0.800. Cost: 125 s of "
            "training (3 seeds)."
        ),
    ]
