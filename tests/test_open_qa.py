"""Open questions: the JSONL loader, the prompt, greedy generation against a plain reference
loop, the metrics against hand-computed values, and an evaluation run of a model trained to
answer (records, metrics, table, re-tabulation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_llama
from kinject.config import EvalConfig, ModelSpec, ScoringConfig, TaskSpec
from kinject.errors import DataError
from kinject.evaluation.evaluate import retabulate, run_evaluation
from kinject.evaluation.open_metrics import (
    bleu4,
    contains,
    exact_match,
    normalize,
    rouge,
    token_f1,
)
from kinject.scoring.generation import GreedyGenerator
from kinject.tasks.items import OpenItem, Task
from kinject.tasks.loaders import load_open_jsonl, open_task
from kinject.tasks.prompts import build_open_prompt
from near_ties import assert_same_generations

FACTS = {"Ada": "Oslo", "Bo": "Lima", "Cy": "Kyoto", "Di": "Quito"}
PROMPTS = [
    "Question: Where does Ada live?\nAnswer:",
    "Hi",
    "Ada Lovelace was born in London. " * 12 + "\nQuestion: Who is she?\nAnswer:",
    "Question: What did Bo study at Linden University?\nAnswer:",
    "x y",
    "The river runs north through the valley and the town. " * 5,
    "Where does Cy work?",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def random_model(bpe_tokenizer):
    return tiny_llama(bpe_tokenizer, seed=7).eval()


def _question(name: str) -> str:
    return f"Where does {name} live?"


def _open_rows() -> list[dict]:
    return [
        {"id": n.lower(), "question": _question(n), "answers": [c], "doc_ids": [n]}
        for n, c in FACTS.items()
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_normalize_and_exact_match_follow_squad():
    assert normalize("The  Cat!") == "cat"
    assert normalize("An apple, a day.") == "apple day"
    assert exact_match("The Oslo.", ["Bergen", "oslo"]) == 1.0
    assert exact_match("Oslo city", ["Oslo", "Bergen"]) == 0.0


def test_answer_contained_finds_a_gold_answer_among_the_replys_words():
    assert contains("The capital of France is Paris.", ["Paris"]) == 1.0
    assert contains("It was founded in 1999 by the Linden family", ["1999", "in 1999"]) == 1.0
    assert contains("It was founded in 1999.", ["1"]) == 0.0  # whole words only
    assert contains("Parisian food", ["Paris"]) == 0.0
    assert contains("the University of  LINDEN!", ["University of Linden"]) == 1.0
    assert contains("Oslo", ["Lima", "Bergen"]) == 0.0
    assert contains("An answer", ["the"]) == 0.0  # an answer empty after normalisation


def test_token_f1_by_hand():
    # linden university | university of linden: 2 common, P = 1, R = 2/3, F1 = 0.8
    assert token_f1("Linden University", ["University of Linden"]) == pytest.approx(0.8)
    # the best answer counts: an exact one wins over the partial one
    assert token_f1("Linden University", ["University of Linden", "linden university"]) == 1.0
    # tokens are counted: new new | new new york: 2 common, P = 1, R = 2/3, F1 = 0.8
    assert token_f1("new new", ["New New York"]) == pytest.approx(0.8)
    assert token_f1("Oslo", ["Lima"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both empty after normalisation


def test_bleu4_and_rouge_by_hand():
    sentence = "the cat sat on the mat today"
    assert bleu4([sentence], [[sentence]]) == pytest.approx(1.0)
    assert bleu4(["alpha beta gamma delta"], [["one two three four"]]) == 0.0
    # a question with two answers, beside one with a single answer: each hits one exactly
    assert bleu4(
        ["p q r s t", "a b c d e f"], [["p q r s t"], ["x y z w", "a b c d e f"]]
    ) == pytest.approx(1.0)

    same = rouge(["Linden University"], [["Linden University"]])
    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    # linden university | university of linden: R1 F = 0.8, R2 = 0, LCS 1: P 1/2, R 1/3, F 0.4
    partial = rouge(["Linden University"], [["University of Linden"]])
    assert partial == pytest.approx({"rouge1": 0.8, "rouge2": 0.0, "rougeL": 0.4})
    mean = rouge(["Linden University", "the cat"], [["University of Linden"], ["dog", "the cat"]])
    assert mean == pytest.approx({"rouge1": 0.9, "rouge2": 0.5, "rougeL": 0.7})


GOOD = {"id": "q1", "question": "Where does Ada live?", "answers": ["Oslo"], "doc_ids": ["ada"]}


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"id": "q2", "question": "q"}, "answers"),
        ({"id": "q2", "question": "q", "answers": []}, "answers"),
        ({"id": "q2", "question": "q", "answers": ["Oslo", 3]}, "answers"),
        ({"id": "q2", "question": "q", "answers": ["Oslo"], "choices": ["a"]}, "choices"),
        ({"id": "q2", "question": "q", "answers": ["Oslo"], "doc_ids": "ada"}, "doc_ids"),
        ({"id": "q1", "question": "q", "answers": ["Oslo"]}, "id"),  # duplicate of line 1
    ],
)
def test_bad_open_records_name_file_line_and_field(tmp_path, bad, field):
    path = tmp_path / "open.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_open_jsonl(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (path, 3, field)
    assert f"open.jsonl, line 3, field '{field}'" in str(caught.value)
    if field == "id":
        assert "first on line 1" in str(caught.value)


def test_open_task_loads_items_and_dev(tmp_path):
    test = _write_jsonl(tmp_path / "t.jsonl", [GOOD, {**GOOD, "id": "q2", "answers": ["A", "B"]}])
    dev = _write_jsonl(tmp_path / "d.jsonl", [{"id": "d1", "question": "q", "answers": ["x"]}])
    task = open_task("places", test, dev)
    assert task.is_open and not Task("mc", ()).is_open
    assert task.items[0] == OpenItem("q1", "Where does Ada live?", ("Oslo",), ("ada",))
    assert task.items[1].answers == ("A", "B") and task.dev[0].doc_ids == ()


def test_open_prompt_with_two_shots_and_context():
    dev = (
        OpenItem("d1", _question("Ada"), ("Oslo", "Christiania")),
        OpenItem("d2", _question("Bo"), ("Lima",)),
        OpenItem("d3", _question("Di"), ("Quito",)),
    )
    item = OpenItem("q", _question("Cy"), ("Kyoto",))
    task = Task("places", (item,), dev, description="Answer briefly.\n\n")
    assert build_open_prompt(task, item, 2, "Cy lives in Kyoto.") == (
        "Answer briefly.\n\n"
        "Question: Where does Ada live?\nAnswer: Oslo\n\n"
        "Question: Where does Bo live?\nAnswer: Lima\n\n"
        "Cy lives in Kyoto.\n\n"
        "Question: Where does Cy live?\nAnswer:"
    )
    bare = build_open_prompt(Task("p", (item,)), item, 0)
    assert bare == "Question: Where does Cy live?\nAnswer:"
    with pytest.raises(ValueError, match="4-shot needs 4"):
        build_open_prompt(task, item, 4)


def _reference(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding of one prompt alone: no padding, no batching, no cache."""
    import torch

    ids = tokenizer(prompt).input_ids
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + new])).logits[:, -1]
            token = int(logits.argmax(dim=-1))
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).split("\n")[0].strip()


def test_batched_generation_equals_one_prompt_at_a_time(random_model, bpe_tokenizer):
    lengths = [len(bpe_tokenizer(p).input_ids) for p in PROMPTS]
    assert max(lengths) > 10 * min(lengths)  # left padding does real work
    expected = [_reference(random_model, bpe_tokenizer, p, 10) for p in PROMPTS]
    assert len(set(expected)) >= 5  # the answers tell the prompts apart (order matters)
    generator = GreedyGenerator(random_model, bpe_tokenizer, batch_size=3, max_new_tokens=10)
    seen = []
    answers = generator.generate(PROMPTS, on_batch=seen.append)
    assert_same_generations(random_model, bpe_tokenizer, PROMPTS, answers, expected, 10)
    assert seen == [3, 3, 1]


def test_answers_end_at_the_first_stop_string(random_model, bpe_tokenizer):
    raw = GreedyGenerator(random_model, bpe_tokenizer, 4, 16, stop=()).generate(PROMPTS)
    # two distinct non-space characters of one answer, the later listed first
    text = next(t for t in raw if len({c for c in t[1:] if not c.isspace()}) >= 2)
    first = next(c for c in text[1:] if not c.isspace())
    second = next(c for c in text[text.index(first) + 1 :] if not c.isspace() and c != first)
    cut = text[: text.index(first)].strip()
    assert text != cut

    stopped = GreedyGenerator(random_model, bpe_tokenizer, 4, 16, stop=[second, first])
    answers = stopped.generate(PROMPTS)
    assert answers[raw.index(text)] == cut
    for whole, answer in zip(raw, answers):
        ends = [whole.find(s) for s in (first, second) if s in whole]
        assert answer == (whole[: min(ends)].strip() if ends else whole)


@pytest.fixture(scope="module")
def trained(bpe_tokenizer):
    """A tiny Llama that has learned the four facts in the Question/Answer layout."""
    from kinject.models.packing import PackedBlocks
    from kinject.training.loop import Schedule, train

    documents = [f"Question: {_question(n)}\nAnswer: {c}\n" for n, c in FACTS.items()]
    model = tiny_llama(bpe_tokenizer, seed=0)
    blocks = PackedBlocks(
        bpe_tokenizer, lambda e: documents[e % 4 :] + documents[: e % 4], 32, 4, True
    )
    schedule = Schedule(steps=250, learning_rate=3e-3, warmup_steps=10)
    train(model, blocks.batch_for, schedule, bf16=False, show_progress=False)
    return model


@pytest.fixture(scope="module")
def open_run(tmp_path_factory, trained, bpe_tokenizer):
    folder = tmp_path_factory.mktemp("open")
    rows = _open_rows()
    rows[0]["answers"] = ["Bergen", "the oslo."]  # any answer counts, after normalisation
    right = _write_jsonl(folder / "right.jsonl", rows)
    wrong_answers = ["Oslo Norway", "Kyoto", "Quito", "Oslo"]
    wrong = [{**row, "answers": [c]} for row, c in zip(rows, wrong_answers)]
    wrong = _write_jsonl(folder / "wrong.jsonl", wrong)
    closed = [{**row, "choices": ["Oslo", "Lima"], "answer": 0} for row in rows[:2]]
    for row in closed:
        del row["answers"]
    closed = _write_jsonl(folder / "closed.jsonl", closed)  # multiple choice in the same run
    corpus = _write_jsonl(
        folder / "kb.jsonl", [{"id": n, "text": f"{n} lives in {c}."} for n, c in FACTS.items()]
    )
    tasks = [
        TaskSpec(name="right", format="open_jsonl", path=str(right)),
        TaskSpec(name="closed", path=str(closed)),
        TaskSpec(name="wrong", format="open_jsonl", path=str(wrong)),
    ]
    config = _config(tasks, corpus, scoring=ScoringConfig(batch_size=3, max_new_tokens=6))
    run = folder / "run"
    result = run_evaluation(config, run, (trained, bpe_tokenizer), show_progress=False)
    return run, result


def _config(tasks: list[TaskSpec], corpus: Path, **values) -> EvalConfig:
    """Arms base and oracle; the model is handed over in memory, never loaded from ``path``."""
    model = ModelSpec(path="not-loaded", device="cpu")
    return EvalConfig(
        model=model, tasks=tasks, arms=["base", "oracle"], corpus=str(corpus),
        bootstrap_resamples=200, **values,
    )  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]


def test_a_trained_model_answers_and_wrong_answers_score_zero(open_run):
    run, result = open_run
    cells = {(m["arm"], m["split"]): m for m in result.metrics}
    splits = ("right", "closed", "wrong")
    assert set(cells) == {(a, s) for a in ("base", "oracle") for s in splits}
    assert cells[("base", "right")]["acc"] == 1.0 and cells[("base", "right")]["f1"] == 1.0
    # no answer matches exactly; Oslo | Oslo Norway: P 1, R 1/2, F1 2/3 (mean of four: 1/6)
    assert cells[("base", "wrong")]["acc"] == 0.0 and cells[("base", "wrong")]["f1"] == 0.1667

    records = _records(run)
    base = [r for r in records if (r["arm"], r["split"]) == ("base", "right")]
    assert [r["prediction"] for r in base] == list(FACTS.values())
    assert base[0]["answers"] == ["Bergen", "the oslo."]
    assert all(r["correct"] is True and r["f1"] == 1.0 for r in base)
    assert all(("prediction" in r) == (r["split"] != "closed") for r in records)
    assert all(("loglikelihoods" in r) == (r["split"] == "closed") for r in records)


def test_context_and_shots_reach_the_generated_prompt(tmp_path, random_model, bpe_tokenizer):
    rows = _open_rows()
    test = _write_jsonl(tmp_path / "t.jsonl", rows[:3])
    dev = _write_jsonl(tmp_path / "d.jsonl", rows[3:])
    texts = {n: f"{n} moved to {c} in 1990." for n, c in FACTS.items()}
    corpus = _write_jsonl(tmp_path / "kb.jsonl", [{"id": n, "text": t} for n, t in texts.items()])
    tasks = [TaskSpec(name="places", format="open_jsonl", path=str(test), dev=str(dev))]
    scoring = ScoringConfig(batch_size=2, max_new_tokens=12)
    config = _config(tasks, corpus, shots=[0, 1], scoring=scoring)
    run_evaluation(config, tmp_path / "run", (random_model, bpe_tokenizer), show_progress=False)
    cells: dict[tuple, list[str]] = {}
    for r in _records(tmp_path / "run"):
        cells.setdefault((r["arm"], r["shots"]), []).append(r["prediction"])
    assert len(cells) == 4

    task = open_task("places", test, dev)
    generator = GreedyGenerator(random_model, bpe_tokenizer, max_new_tokens=12)
    for (arm, shots), predictions in cells.items():
        prompts = [
            build_open_prompt(
                task, item, shots, texts[item.doc_ids[0]] if arm == "oracle" else None
            )
            for item in task.items
        ]
        again = generator.generate(prompts)  # in batches of 32 here, of 2 in the run
        assert_same_generations(random_model, bpe_tokenizer, prompts, predictions, again, 12)
    assert len({tuple(p) for p in cells.values()}) == 4  # context and shots change the answers
    assert len(set(cells[("oracle", 0)])) == 3  # each question's own document


def test_open_run_folder_metrics_table_and_retabulation(open_run):
    run, result = open_run
    metrics = json.loads((run / "metrics.json").read_text())["cells"]
    assert metrics == result.metrics
    records = _records(run)
    keys = {"acc", "acc_ci", "f1", "f1_ci", "contains", "contains_ci", "bleu4", "rouge1"}
    for cell in metrics:
        if cell["split"] == "closed":
            assert "open" not in cell and "acc_norm" in cell and "f1" not in cell
            continue
        assert cell["open"] is True and keys <= set(cell) and cell["n"] == 4
        assert cell["acc_ci"][0] <= cell["acc"] <= cell["acc_ci"][1] and "acc_norm" not in cell
        rows = [r for r in records if (r["arm"], r["split"]) == (cell["arm"], cell["split"])]
        predictions, answers = [r["prediction"] for r in rows], [r["answers"] for r in rows]
        assert cell["acc"] == sum(exact_match(p, a) for p, a in zip(predictions, answers)) / 4
        assert cell["f1"] == round(sum(token_f1(p, a) for p, a in zip(predictions, answers)) / 4, 4)
        assert cell["contains"] == sum(contains(p, a) for p, a in zip(predictions, answers)) / 4
        assert cell["bleu4"] == round(bleu4(predictions, answers), 4)
        assert {k: cell[k] for k in ("rouge1", "rouge2", "rougeL")} == {
            k: round(v, 4) for k, v in rouge(predictions, answers).items()
        }
    right = next(m for m in metrics if (m["arm"], m["split"]) == ("base", "right"))
    assert right["bleu4"] == 0.0  # one-word answers hold no 4-grams
    # three exact one-word answers, and Oslo | the oslo: P 1, R 1/2, F 2/3; no bigrams anywhere
    assert (right["rouge1"], right["rouge2"], right["rougeL"]) == (0.9167, 0.0, 0.9167)

    table = (run / "table.md").read_text()
    assert "| arm | task | shots | k | n | acc | acc_norm | recall |" in table  # closed cells
    assert "| base | closed | 0 | 0 | 2 |" in table
    open_part = table[table.index("Open questions") :]
    assert (
        "| base | right | 0 | 0 | 4 | 1.000 [1.000–1.000] | 1.000 [1.000–1.000] | "
        "1.000 [1.000–1.000] | 0.000 | 0.917 | 0.000 | 0.917 |" in open_part
    )
    assert "| oracle | wrong | 0 | 0 | 4 | 0.000 [.000–.000] |" in open_part
    assert "closed" not in open_part

    saved = {name: (run / name).read_bytes() for name in ("metrics.json", "table.md")}
    for name in saved:
        (run / name).unlink()
    assert retabulate(run).metrics == metrics
    assert {name: (run / name).read_bytes() for name in saved} == saved


def test_the_world_writes_open_questions_beside_its_choice_tasks(tmp_path):
    from kinject.config import WorldConfig
    from kinject.tasks.loaders import load_mc_jsonl
    from kinject.world.build import build_world, write_world

    config = WorldConfig(n_known=3, n_new=2, n_updated=2, n_reading=2, n_dev=2)
    world = write_world(build_world(config), tmp_path / "world")
    assert sorted(p.name for p in (world / "tasks").glob("*_open.jsonl")) == [
        f"{split}_open.jsonl" for split in ("dev", "known", "new", "updated")
    ]
    for split in ("known", "new", "updated", "dev"):
        mc = {i.id: i for i in load_mc_jsonl(world / "tasks" / f"{split}.jsonl")}
        items = load_open_jsonl(world / "tasks" / f"{split}_open.jsonl")
        assert len(items) == len(mc) > 0
        for item in items:
            twin = mc[item.id.replace(f"{split}-open-", f"{split}-", 1)]
            assert item.question == twin.question and item.doc_ids == twin.doc_ids
            assert item.answers == (twin.choices[twin.answer],)
