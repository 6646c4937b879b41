"""The rag arm inside ``kinject eval``: retrieved chunks before the question, the K grid, K
chosen on a validation task only, records with chunk ids and scores, dynamic few-shot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kinject.config import EvalConfig, KBConfig, ModelSpec, RagConfig, TaskSpec, WorldConfig
from kinject.errors import KinjectError
from kinject.evaluation.evaluate import build_arms, retabulate, run_evaluation
from kinject.evaluation.fewshot import NearestExamples
from kinject.kb.store import KnowledgeBase, SourceOptions, build_kb
from kinject.tasks.loaders import jsonl_task
from kinject.tasks.prompts import build_prompt
from kinject.world.build import build_world, write_world


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    config = WorldConfig(n_known=4, n_new=4, n_updated=2, n_reading=2, n_dev=3)
    return write_world(build_world(config), tmp_path_factory.mktemp("w") / "world")


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory, world_dir) -> Path:
    out = tmp_path_factory.mktemp("kb") / "kb"
    build_kb([world_dir / "kb.jsonl"], out, KBConfig(), SourceOptions(show_progress=False))
    return out


def _task(world_dir: Path, split: str) -> TaskSpec:
    return TaskSpec(
        name=split,
        path=str(world_dir / "tasks" / f"{split}.jsonl"),
        dev=str(world_dir / "tasks" / "dev.jsonl"),
    )


def _config(world_dir, kb_dir, model_dir, **rag) -> EvalConfig:
    return EvalConfig(
        model=ModelSpec(path=str(model_dir), device="cpu"),
        tasks=[_task(world_dir, "validation"), _task(world_dir, "new")],
        arms=["base", "rag"],
        rag=RagConfig(kb=str(kb_dir), **{"k": [0, 1, 2], **rag}),
        shots=[0, 1],
        bootstrap_resamples=200,
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rag_context_is_the_top_chunks_in_rank_order(world_dir, kb_dir):
    config = _config(world_dir, kb_dir, "unused", k=[0, 2], template="Facts:\n{context}")
    arms = {arm.k: arm for arm in build_arms(config) if arm.name == "rag"}
    item = jsonl_task("new", world_dir / "tasks" / "new.jsonl").items[0]
    kb = KnowledgeBase.open(kb_dir)
    context = arms[2].context_for(item)
    hits = arms[2].cache.hits(item, 2)  # retrieved with the other questions, as scored
    alone = kb.retriever("dense").search([item.question], 2)[0]
    assert {hit.row for hit in hits} == {hit.row for hit in alone}
    texts = [kb.chunks[hit.row].text for hit in hits]
    titles = [kb.chunks[hit.row].heading for hit in hits]  # the people's names (kb.index_text)
    assert all(titles)
    shown = [f"{title}\n{text}" for title, text in zip(titles, texts)]
    assert context.text == "Facts:\n" + "\n\n".join(shown)
    assert [r["chunk"] for r in context.retrieved] == [kb.chunks[h.row].id for h in hits]
    assert context.retrieved[0]["doc_id"] == item.doc_ids[0]  # the person's bio comes first
    assert context.retrieved[0]["score"] >= context.retrieved[1]["score"]
    assert arms[0].context_for(item).text == ""  # K=0: the question alone

    last = _config(world_dir, kb_dir, "unused", k=[2], order="best_last")
    (arm,) = [arm for arm in build_arms(last) if arm.name == "rag"]
    assert arm.context_for(item).text == "\n\n".join(reversed(shown))


def test_k_is_chosen_on_validation_and_test_is_scored_at_that_k_only(
    tmp_path, world_dir, kb_dir, tiny_llama_dir
):
    config = _config(
        world_dir, kb_dir, tiny_llama_dir, select_k_on="validation", select_k_sample=10
    )
    result = run_evaluation(config, tmp_path / "run", show_progress=False)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    selected = {int(s): k for s, k in summary["selected_k"].items()}
    grid = [m for m in result.metrics if m["arm"] == "rag" and m["split"] == "validation"]
    assert sorted((m["shots"], m["k"]) for m in grid) == [(s, k) for s in (0, 1) for k in (0, 1, 2)]
    assert {m["n"] for m in grid} == {10}  # the seeded validation sample
    assert all(m["n"] == 4 * 6 for m in result.metrics if m["split"] == "new")
    for shots, k in selected.items():  # the best validation accuracy, ties to the smaller K
        best = max(m["acc"] for m in grid if m["shots"] == shots)
        assert k == min(m["k"] for m in grid if m["shots"] == shots and m["acc"] == best)
    test_cells = [
        (m["shots"], m["k"]) for m in result.metrics if m["arm"] == "rag" and m["split"] == "new"
    ]
    assert sorted(test_cells) == sorted(selected.items())  # never a grid on test

    records = _rows(tmp_path / "run" / "records.jsonl")
    rag_new = [r for r in records if r["arm"] == "rag" and r["split"] == "new" and r["k"] > 0]
    for row in rag_new:
        assert len(row["retrieved"]) == row["k"]
        assert {"chunk", "doc_id", "score"} <= set(row["retrieved"][0])
        assert row["doc_ids"]
    for metric in result.metrics:
        if metric["arm"] == "rag" and metric["k"] > 0:
            rows = [
                r
                for r in records
                if (r["arm"], r["split"], r["shots"], r["k"])
                == ("rag", metric["split"], metric["shots"], metric["k"])
            ]
            found = [r["doc_ids"][0] in {h["doc_id"] for h in r["retrieved"]} for r in rows]
            assert metric["recall"] == round(sum(found) / len(found), 4)
    table = (tmp_path / "run" / "table.md").read_text()
    assert "K chosen on 'validation'" in table and "R@" in table
    assert retabulate(tmp_path / "run").metrics == result.metrics  # rebuilt from records alone


def test_rag_run_resumes_without_rescoring(tmp_path, world_dir, kb_dir, tiny_llama_dir):
    config = _config(world_dir, kb_dir, tiny_llama_dir, select_k_on="validation")
    run_evaluation(config, tmp_path / "run", show_progress=False)
    cells = sorted((tmp_path / "run" / "cells").glob("*.jsonl"))
    stamps = {p.name: p.stat().st_mtime_ns for p in cells}
    (cells[-1]).unlink()  # as if killed before the last cell finished
    run_evaluation(config, tmp_path / "run", show_progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "cells").glob("*.jsonl")}
    assert set(after) == set(stamps)
    assert [name for name in after if after[name] != stamps[name]] == [cells[-1].name]


def test_select_k_on_must_name_a_task(tmp_path, world_dir, kb_dir, tiny_llama_dir):
    config = _config(world_dir, kb_dir, tiny_llama_dir, select_k_on="dev")
    with pytest.raises(KinjectError, match="select_k_on names task 'dev'"):
        run_evaluation(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_rag_needs_a_knowledge_base(tmp_path, world_dir, tiny_llama_dir):
    config = _config(world_dir, tmp_path / "nowhere", tiny_llama_dir)
    with pytest.raises(KinjectError, match="not a knowledge base"):
        run_evaluation(config, tmp_path / "run", show_progress=False)


def test_nearest_examples_are_the_most_similar_dev_questions(world_dir):
    task = jsonl_task("new", world_dir / "tasks" / "new.jsonl", world_dir / "tasks" / "dev.jsonl")
    selector = NearestExamples("bm25", KBConfig().embedder)
    items = task.items[:6]
    chosen = selector.examples(task, items, 2)
    for item, examples in zip(items, chosen):
        assert len(examples) == 2 and all(e in task.dev for e in examples)
        # bm25 ranks dev questions asked the same way (same template words) first
        ranked = selector._retriever(task).search([item.question], len(task.dev))[0]
        expected = [task.dev[h.row] for h in ranked if task.dev[h.row].id != item.id][:2]
        assert examples == list(reversed(expected))  # nearest next to the question
        prompt = build_prompt(task, item, 2, examples=examples)
        nearest = f"Question: {examples[-1].question}\nAnswer: {examples[-1].choices[examples[-1].answer]}"
        assert prompt.context.endswith(f"{nearest}\n\nQuestion: {item.question}\nAnswer:")


def test_nearest_fewshot_runs_end_to_end(tmp_path, world_dir, kb_dir, tiny_llama_dir):
    config = _config(world_dir, kb_dir, tiny_llama_dir).model_copy(update={"fewshot": "nearest"})
    result = run_evaluation(config, tmp_path / "run", show_progress=False)
    first = run_evaluation(
        _config(world_dir, kb_dir, tiny_llama_dir), tmp_path / "first", show_progress=False
    )
    zero = lambda metrics: [m["acc"] for m in metrics if m["shots"] == 0]
    assert zero(result.metrics) == zero(first.metrics)  # 0-shot has no examples to choose


def test_costs_count_the_requests_reused_from_an_earlier_cell(
    tmp_path, world_dir, kb_dir, tiny_llama_dir
):
    """rag at K=0 asks exactly the base arm's requests: scored once, counted as reused."""
    config = _config(world_dir, kb_dir, tiny_llama_dir, k=[0, 1])
    run_evaluation(config, tmp_path / "run", show_progress=False)
    costs = json.loads((tmp_path / "run" / "costs.json").read_text())["cells"]
    by = {(c["arm"], c["split"], c["shots"], c["k"]): c for c in costs}
    questions = {"new": 0, "validation": 0}
    for split in questions:
        questions[split] = len(_rows(world_dir / "tasks" / f"{split}.jsonl"))
    for (arm, split, shots, k), cost in by.items():
        assert cost["requests"] == 4 * questions[split] == 4 * cost["questions"]
        if arm == "rag" and k == 0:  # scored after base (arms in config order)
            assert cost["reused"] == cost["requests"]
        elif arm == "base":
            assert cost["reused"] == 0
        else:  # rag K=1 shares no prompt with base
            assert cost["reused"] < cost["requests"]
