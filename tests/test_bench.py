"""Every benchmark in bench/ runs: its `--smoke` mode (tiny sizes, the same code path) prints
the comparison it exists for.  A benchmark nothing runs breaks unseen when the code under it
changes; these runs are checks of the scripts, never measurements."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA

BENCH = Path(__file__).resolve().parents[1] / "bench"


def rows(output: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``output``, by column name."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, output
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        for line in lines[2:]
        if not line.startswith("|---")
    ]


def number(text: str) -> float:
    return float(text.replace(",", "").rstrip("x%"))


def check_scoring(output: str) -> None:
    table = rows(output)
    assert {(r["model"], r["cell"]) for r in table} == {
        (model, cell) for model in ("demo", "llama-smoke") for cell in ("rag-k5", "mmlu-5")
    }
    for row in table:
        assert number(row["lm_eval / kinject"]) > 0 and row["same predictions"].startswith(
            ("yes", "no (")
        )
        assert number(row["max abs Δ loglik"]) <= 1e-4  # the same scores as lm-eval
    assert re.search(r"matmul peak: fp32 [\d.]+ GFLOP/s, bf16 [\d.]+ GFLOP/s", output)


def check_training(output: str) -> None:
    packed, padded = rows(output)
    assert (packed["variant"], padded["variant"]) == ("packed", "padded")
    assert packed["real tokens"] == padded["real tokens"]
    assert number(packed["packed / padded tokens/s"]) > 0
    assert packed["method"] == "full"
    assert 0 < number(packed["FLOP/s / peak"]) < 100


def check_batch_memory(output: str) -> None:
    table = rows(output)
    assert [(r["rows"], r["width"], r["cached"]) for r in table] == [
        ("2", "32", "0"),
        ("2", "32", "32"),
    ]
    assert all(number(r["estimate / measured"]) > 0 for r in table)


def check_embedding(output: str) -> None:
    table = rows(output)
    assert [(r["texts"], r["n"]) for r in table] == [("paragraphs", "12"), ("questions", "40")]
    for row in table:
        assert number(row["alone / batched"]) > 0
        assert number(row["max abs Δ"]) <= 1e-5  # the same vectors up to float rounding


def check_generation(output: str) -> None:
    table = rows(output)
    assert [r["generator"] for r in table] == ["kinject", "transformers", "lm_eval"]
    assert all(number(r["seconds / kinject's"]) > 0 for r in table)
    assert table[0]["answers identical to kinject's"] == "4 of 4"
    assert "4 prompts (plain, stop at newline)" in output


def check_index_scale(output: str) -> None:
    table = rows(output)
    assert [r["index"] for r in table if r["index"]] == ["flat", "hnsw", "ivf"]
    assert number(table[0]["recall@10"]) == 1.0  # the exact index is the reference
    assert "N = 2,000 random unit vectors" in output


def check_ingest_memory(output: str) -> None:
    table = rows(output)
    assert [(r["code"], r["corpus"]) for r in table] == [("after", c) for c in ("base", "1x", "2x")]
    assert re.search(r"after: 2x / 1x: text 2\.0x, peak [\d.]+x", output)


def check_retrieval_squad(output: str) -> None:
    recall: dict[str, dict] = {}  # the whole set's rows come first, then the held-out half's
    for row in rows(output):
        if row.get("n", "").isdigit():
            recall.setdefault(row["retriever"], row)
    dense, bm25 = "baseline dense (title + text, FAISS flat)", "baseline BM25 (bm25s, title + text)"
    assert set(recall) >= {"dense", "bm25", "hybrid", dense, bm25}
    assert "knowledge base: 12 paragraphs" in output
    # the comparison: each kinject retriever's recall over its counterpart's, as printed
    ratio_lines = [line for line in output.splitlines() if line.count("|") == 6]
    ratios: dict[str, list[str]] = {}  # the whole set's (the held-out half's come after)
    for line in ratio_lines:
        ratios.setdefault(line.split("|")[1].strip(), line.split("|")[2:6])
    for ours, theirs in (("dense", dense), ("bm25", bm25)):
        against, at1, at5, at20 = (cell.strip() for cell in ratios[ours])
        assert against == theirs
        for printed, key in ((at1, "recall@1"), (at5, "recall@5"), (at20, "recall@20")):
            expected = number(recall[ours][key]) / number(recall[theirs][key])
            assert number(printed) == pytest.approx(expected, abs=0.002), (ours, key)
    # hybrid's fusion: 18 settings, the chosen one has the best MRR@20 on validation
    grid = [line.strip("|").split("|") for line in output.splitlines()]
    grid = [
        [c.strip() for c in cells]
        for cells in grid
        if cells[0].strip().startswith(("rrf", "convex"))
    ]
    assert len(grid) == 18 and sum("(chosen)" in cells[0] for cells in grid) == 1
    chosen = next(cells for cells in grid if "(chosen)" in cells[0])
    assert number(chosen[-1]) == max(number(cells[-1]) for cells in grid)
    kind, weight = chosen[0].split()[0], chosen[1]
    assert f"(hybrid: {kind} dense_weight={weight}" in output
    assert len([line for line in ratio_lines if line.startswith("| hybrid |")]) == 2


def check_reading_curriculum(output: str) -> None:
    steps = [line.split()[-3] for line in output.splitlines() if line.startswith("curriculum")]
    assert steps == ["2", "4"], output


def check_budgets(output: str) -> None:
    said = output.splitlines()  # the cold demo's own output, then the table
    header = max(i for i, line in enumerate(said) if line.startswith("what "))
    said = said[header + 1 :]
    assert len(said) == 2  # one row each
    for what in ("kinject --help", "kinject demo --quick, cold cache"):
        (line,) = [line for line in said if line.startswith(what)]
        seconds, budget, ratio = map(float, line.split()[-3:])
        # as printed: seconds to 0.1, the ratio to 0.01
        assert seconds > 0 and ratio == pytest.approx(seconds / budget, abs=0.05 / budget + 0.006)


CHECKS = {
    "scoring.py": check_scoring,
    "training.py": check_training,
    "batch_memory.py": check_batch_memory,
    "embedding.py": check_embedding,
    "generation.py": check_generation,
    "index_scale.py": check_index_scale,
    "ingest_memory.py": check_ingest_memory,
    "retrieval_squad.py": check_retrieval_squad,
    "reading_curriculum.py": check_reading_curriculum,
    "budgets.py": check_budgets,
}


def test_every_benchmark_has_a_smoke_check():
    assert sorted(CHECKS) == sorted(path.name for path in BENCH.glob("*.py"))


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_smoke_run_prints_its_comparison(script, tmp_path):
    if script in ("scoring.py", "generation.py"):
        pytest.importorskip("lm_eval")
    env = {
        **os.environ,
        "KINJECT_SHARED_DATA": str(SHARED_DATA),
        "KINJECT_CACHE_DIR": str(tmp_path.parent / "bench-cache"),  # one quick world for all
        "COLUMNS": "200",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    CHECKS[script](result.stdout)
