"""``kinject finetune``: training data, the contamination guard, the LR × epoch choice on
validation, LoRA, and resuming after a kill, on tiny models and a tiny synthetic world."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from finetune_helpers import (
    ONE_THREAD,
    assert_same_weights,
    deep_merge,
    ft_config,
    read_rows,
    settings,
    weights,
    write_rows,
)
from kinject.config import (
    FinetuneConfig,
    ModelSpec,
    TrainingData,
    WorldConfig,
    load_config,
    parse_config,
)
from kinject.errors import DataError, KinjectError
from kinject.models.loading import load_causal_lm
from kinject.models.packing import IGNORE_INDEX, PackedBlocks
from kinject.training.data import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, TrainingSet
from kinject.training.finetune import (
    _peak_memory,
    _reset_peak_memory,
    finetuned_model_spec,
    run_finetune,
)
from kinject.training.loop import Schedule, StaleCheckpoint, train
from kinject.world.build import build_world, write_world

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    config = WorldConfig(n_known=2, n_new=2, n_updated=1, n_reading=1, n_dev=2, n_paraphrases=3)
    return write_world(build_world(config), tmp_path_factory.mktemp("ft-world") / "world")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, bpe_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("ft-base")
    tiny_llama(bpe_tokenizer, hidden_size=32).save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def full_run(world, base_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft-full") / "run"
    return run_finetune(ft_config(world, base_model), out, show_progress=False)


# --- full fine-tuning end to end ------------------------------------------------------------


def test_full_finetuning_writes_the_run_and_chooses_the_best_validation_epoch(
    full_run, world, base_model, bpe_tokenizer
):
    run, config = full_run.run_dir, ft_config(world, base_model)
    for name in ("config.yaml", "env.json", "contamination.json", "selection.json"):
        assert (run / name).is_file(), name
    assert load_config(FinetuneConfig, run / "config.yaml") == config
    contamination = json.loads((run / "contamination.json").read_text())
    n_validation = len(read_rows(world / "tasks/validation.jsonl"))
    assert contamination["contaminated"] == [] and contamination["allowed"] is False
    assert (
        contamination["questions_checked"]
        == len(read_rows(world / "tasks/new.jsonl")) + n_validation
    )

    selection = json.loads((run / "selection.json").read_text())
    assert selection == full_run.selection
    scored = selection["scored"]
    grid = config.learning_rate
    assert sorted((r["learning_rate"], r["epoch"]) for r in scored) == sorted(
        itertools.product(grid, range(1, config.epochs + 1))
    )
    assert all(r["n"] == n_validation for r in scored)
    # highest accuracy; ties: lower loss, then earlier in the grid, then the earlier epoch
    best = min(
        scored, key=lambda r: (-r["acc"], r["loss"], grid.index(r["learning_rate"]), r["epoch"])
    )
    keys = ("learning_rate", "epoch", "validation_acc", "validation_loss")
    assert [selection[k] for k in keys] == [best[k.removeprefix("validation_")] for k in keys]

    chosen = run / "candidates" / f"lr-{selection['learning_rate']:g}"
    assert json.loads((chosen / "best.json").read_text())["epoch"] == selection["epoch"]
    assert_same_weights(run / "model", chosen / "best")
    blocks = PackedBlocks(bpe_tokenizer, TrainingSet(config.data).for_epoch, 32, 2, True)
    per_epoch = -(-blocks.blocks_in_epoch(0) // config.batch_size)
    for lr in grid:
        folder = run / "candidates" / f"lr-{lr:g}"
        done = json.loads((folder / "done.json").read_text())
        assert (done["steps_per_epoch"], done["steps"]) == (per_epoch, per_epoch * config.epochs)
        assert done["resumed_from"] == 0
        assert done["peak_memory_kind"] == "process_peak_rss"  # the config asks for the CPU
        assert isinstance(done["peak_memory_mb"], float) and done["peak_memory_mb"] > 0
        rows = read_rows(folder / "validation.jsonl")
        assert [(row["epoch"], row["step"]) for row in rows] == [
            (e, e * per_epoch) for e in range(1, config.epochs + 1)
        ]
        kept = min(rows, key=lambda r: (-r["acc"], r["loss"], r["epoch"]))
        kept.pop("step")
        assert json.loads((folder / "best.json").read_text()) == kept
        assert not (folder / "checkpoint").exists()
    assert full_run.model == finetuned_model_spec(run)
    assert (full_run.model.path, full_run.model.adapter) == (str(run / "model"), None)
    load_causal_lm(full_run.model)  # a model folder transformers loads


def test_peak_memory_on_cpu_is_the_process_peak_rss_in_mb(monkeypatch):
    import resource

    usage = type("Usage", (), {"ru_maxrss": 3 * 1024 * 1024 + 100})  # KiB, as Linux reports
    monkeypatch.setattr(resource, "getrusage", lambda who: usage)
    monkeypatch.setattr(sys, "platform", "linux")
    peak = _peak_memory(torch.nn.Linear(2, 2))
    assert peak == {"peak_memory_mb": 3072.1, "peak_memory_kind": "process_peak_rss"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_on_cuda_counts_allocations_since_the_reset():
    model = torch.nn.Linear(2, 2).cuda()
    _reset_peak_memory(model)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB
    del block
    peak = _peak_memory(model)
    assert peak["peak_memory_kind"] == "cuda_allocated"
    assert 64 <= peak["peak_memory_mb"] < 65


def test_the_chosen_epoch_is_the_model_a_run_of_that_many_epochs_gives(
    full_run, world, base_model, tmp_path
):
    """Constant LR after warm-up: epoch e of a longer run is an e-epoch run."""
    chosen = full_run.selection
    lr, epochs = [chosen["learning_rate"]], chosen["epoch"]
    config = ft_config(world, base_model, learning_rate=lr, epochs=epochs, selection={"task": None})
    short = run_finetune(config, tmp_path / "short", show_progress=False)
    assert_same_weights(short.run_dir / "model", full_run.run_dir / "model")


def _mean_loss(model_dir: Path, texts: list[str]) -> float:
    model, tokenizer = load_causal_lm(ModelSpec(path=str(model_dir), device="cpu"))
    with torch.no_grad():
        losses = [
            model(input_ids=ids, labels=ids).loss.item()
            for ids in (tokenizer(text, return_tensors="pt").input_ids for text in texts)
        ]
    return sum(losses) / len(losses)


def test_finetuning_moves_the_model_toward_the_training_text(full_run, world, base_model):
    texts = [row["text"] for row in read_rows(world / "kb.jsonl")]
    before, after = _mean_loss(base_model, texts), _mean_loss(full_run.run_dir / "model", texts)
    assert after < 0.9 * before, (before, after)


def test_the_same_config_gives_the_same_run(full_run, world, base_model, tmp_path):
    again = run_finetune(ft_config(world, base_model), tmp_path / "again", show_progress=False)
    first, second = full_run.run_dir, again.run_dir
    assert (first / "selection.json").read_text() == (second / "selection.json").read_text()
    for folder in ["model", *(f"candidates/{p.name}/best" for p in first.glob("candidates/*"))]:
        assert_same_weights(first / folder, second / folder)

    done = {p: p.stat().st_mtime_ns for p in second.glob("candidates/*/done.json")}
    rerun = run_finetune(ft_config(world, base_model), second, show_progress=False)
    assert rerun.selection == again.selection  # finished: nothing trained again
    assert {p: p.stat().st_mtime_ns for p in second.glob("candidates/*/done.json")} == done
    with pytest.raises(KinjectError, match="different config"):
        run_finetune(ft_config(world, base_model, epochs=2), second, show_progress=False)


def _trained_files(run_dir: Path) -> dict:
    files = [*run_dir.rglob("*.safetensors"), *run_dir.glob("candidates/*/done.json")]
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in files}


def test_a_finished_run_guards_other_tasks_without_training_again(world, base_model, tmp_path):
    quick = {"learning_rate": [1e-2], "epochs": 1}
    run_dir = tmp_path / "run"
    run_finetune(ft_config(world, base_model, **quick), run_dir, show_progress=False)
    trained = _trained_files(run_dir)
    checked = json.loads((run_dir / "contamination.json").read_text())["questions_checked"]

    # A test task whose question is in the training text: refused, the run left as it was.
    sentence = read_rows(world / "kb.jsonl")[0]["text"].split(". ")[0]
    leaked = write_rows(
        tmp_path / "leaked.jsonl",
        [{"id": "leaked-1", "question": sentence, "choices": ["a", "b"], "answer": 0}],
    )
    tasks = [{"path": str(world / "tasks" / "new.jsonl")}, {"path": str(leaked)}]
    leaky = ft_config(world, base_model, contamination={"tasks": tasks}, **quick)
    with pytest.raises(KinjectError, match="leaked-1"):
        run_finetune(leaky, run_dir, show_progress=False)
    assert json.loads((run_dir / "contamination.json").read_text())["questions_checked"] == checked

    # Allowed, it is recorded; a harmless extra task is checked too; nothing is trained again.
    allowed = leaky.model_copy(
        update={"contamination": leaky.contamination.model_copy(update={"allow": True})}
    )
    run_finetune(allowed, run_dir, show_progress=False)
    report = json.loads((run_dir / "contamination.json").read_text())
    assert report["allowed"] and [c["id"] for c in report["contaminated"]] == ["leaked-1"]
    assert report["questions_checked"] == checked + 1
    assert load_config(FinetuneConfig, run_dir / "config.yaml").contamination.allow
    assert _trained_files(run_dir) == trained


def test_a_changed_training_file_is_not_resumed_into(world, base_model, tmp_path):
    corpus = write_rows(tmp_path / "corpus.jsonl", read_rows(world / "kb.jsonl"))
    config = ft_config(
        world, base_model, data={"corpus": str(corpus)}, learning_rate=[1e-2], epochs=1
    )
    run_finetune(config, tmp_path / "run", show_progress=False)
    rows = read_rows(corpus)
    rows[0]["text"] = rows[0]["text"].replace("born", "raised")
    write_rows(corpus, rows)
    with pytest.raises(KinjectError, match="files it trains on changed"):
        run_finetune(config, tmp_path / "run", show_progress=False)


def test_selection_breaks_accuracy_ties_by_loss_then_grid_order(tmp_path):
    from kinject.training.finetune import _select

    figures = {  # per learning rate: (acc, loss) after epochs 1, 2
        1e-3: [(0.5, 9.0), (0.6, 12.0)],
        3e-3: [(0.6, 11.0), (0.4, 8.0)],
        1e-2: [(0.6, 11.0), (0.6, 11.0)],
    }
    candidates = []
    for lr, rows in figures.items():
        rows = [{"epoch": e, "acc": a, "loss": loss} for e, (a, loss) in enumerate(rows, 1)]
        best = min(rows, key=lambda r: (-r["acc"], r["loss"], r["epoch"]))
        folder = tmp_path / "run" / "candidates" / f"lr-{lr:g}"
        write_rows(folder / "validation.jsonl", rows)
        (folder / "best.json").write_text(json.dumps(best))
        done = {"learning_rate": lr, "last_epoch_loss": 9.0 if lr == 1e-2 else 2.0}
        (folder / "done.json").write_text(json.dumps({**done, "vocab_size": 1000}))
        candidates.append((lr, folder))
    chosen = _select(candidates)
    assert (chosen["learning_rate"], chosen["epoch"], chosen["validation_loss"]) == (3e-3, 1, 11.0)
    assert len(chosen["scored"]) == 6
    assert [line.split(":")[0] for line in chosen["warnings"]] == ["run (lr 0.01)"]


def test_without_validation_the_last_epoch_of_the_first_learning_rate_is_chosen(
    world, base_model, tmp_path
):
    config = ft_config(
        world, base_model, learning_rate=[1e-2, 3e-2], epochs=2, selection={"task": None}
    )
    chosen = run_finetune(config, tmp_path / "run", show_progress=False).selection
    assert (chosen["learning_rate"], chosen["epoch"], chosen["validation_acc"]) == (1e-2, 2, None)


def test_validation_at_several_shot_counts_chooses_on_their_mean_and_keeps_every_epoch(
    world, base_model, tmp_path
):
    from kinject.training.finetune import training_identity

    task = {"path": str(world / "tasks/validation.jsonl"), "dev": str(world / "tasks/dev.jsonl")}
    config = ft_config(
        world,
        base_model,
        learning_rate=[1e-2, 3e-2],
        epochs=2,
        selection={"task": task, "shots": [0, 2]},
        keep_epochs=True,
    )
    run = tmp_path / "run"
    chosen = run_finetune(config, run, show_progress=False).selection
    rows = chosen["scored"]
    assert len(rows) == 4 and all(set(r["acc_by_shots"]) == {"0", "2"} for r in rows)
    for row in rows:  # each figure is the mean of the two shot counts' accuracies
        assert row["acc"] == pytest.approx(sum(row["acc_by_shots"].values()) / 2, abs=1e-4)
    best = max(rows, key=lambda r: (r["acc"], -r["loss"]))
    assert chosen["validation_acc"] == best["acc"]
    # every epoch's weights are kept, and each is the model scored at that epoch
    for lr in (1e-2, 3e-2):
        for epoch in (1, 2):
            folder = run / "candidates" / f"lr-{lr:g}" / "epochs" / str(epoch)
            figures = json.loads((folder / "best.json").read_text())
            assert figures == next(
                {k: v for k, v in r.items() if k not in ("learning_rate", "step")}
                for r in rows
                if (r["learning_rate"], r["epoch"]) == (lr, epoch)
            )
            spec = finetuned_model_spec(run, lr, epoch)
            assert spec.path == str(folder)
    rate, epoch = chosen["learning_rate"], chosen["epoch"]
    assert_same_weights(run / "model", run / "candidates" / f"lr-{rate:g}" / "epochs" / str(epoch))
    with pytest.raises(KinjectError, match="no weights after epoch 3"):
        finetuned_model_spec(run, 1e-2, 3)
    # one shot count as a list is the plain setting: the same training, the same hash
    one = ft_config(world, base_model, selection={"task": task, "shots": [0]})
    plain = ft_config(world, base_model, selection={"task": task})
    assert training_identity(one) == training_identity(plain)
    assert "keep_epochs" not in training_identity(plain)


# --- resuming after SIGKILL through the command line ---------------------------------------


def test_a_killed_finetune_resumes_to_the_same_run(world, base_model, tmp_path):
    relative = {
        "model": {"path": os.path.relpath(base_model, tmp_path)},
        "data": {
            "corpus": os.path.relpath(world / "kb.jsonl", tmp_path),
            "paraphrases": os.path.relpath(world / "paraphrases.jsonl", tmp_path),
            "n_paraphrases": 3,
        },
        "selection": {
            "task": {"path": os.path.relpath(world / "tasks/validation.jsonl", tmp_path)}
        },
        "contamination": {"tasks": []},
        "learning_rate": [1e-2, 3e-2],
        "epochs": 2,
        "checkpoint_every_s": 0.001,
    }
    config_file = tmp_path / "ft.yaml"
    config_file.write_text(json.dumps(settings(world, base_model, **relative)))  # JSON is YAML
    run = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "kinject",
        *["finetune", "--config", "ft.yaml", "--out", "killed"],
    ]
    env = {**os.environ, **ONE_THREAD}
    target = run / "candidates" / "lr-0.03" / "checkpoint" / "checkpoint.pt"
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 600  # a safety net, not a timing assertion
        while not target.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    finished = run / "candidates" / "lr-0.01" / "done.json"
    finished_at = finished.stat().st_mtime_ns
    assert not (run / "candidates" / "lr-0.03" / "done.json").exists()
    assert not (run / "selection.json").exists()

    second = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert second.returncode == 0, second.stderr
    assert "chosen: lr" in second.stdout
    step = json.loads((run / "candidates" / "lr-0.03" / "done.json").read_text())["resumed_from"]
    assert f"fine-tuning, lr 0.03: resuming from its checkpoint at step {step} of" in second.stderr
    assert finished.stat().st_mtime_ns == finished_at  # a finished candidate is kept
    resumed = json.loads((run / "candidates" / "lr-0.03" / "done.json").read_text())
    assert resumed["resumed_from"] > 0
    assert not list(run.glob("candidates/*/checkpoint"))

    config = load_config(FinetuneConfig, config_file).with_paths_resolved(tmp_path)
    straight = run_finetune(config, tmp_path / "straight", show_progress=False).run_dir
    for name in ("config.yaml", "selection.json", "candidates/lr-0.03/validation.jsonl"):
        assert (run / name).read_text() == (straight / name).read_text(), name
    assert_same_weights(run / "model", straight / "model")
    assert_same_weights(run / "candidates/lr-0.03/best", straight / "candidates/lr-0.03/best")


# --- LoRA ----------------------------------------------------------------------------------


def _logits(spec: ModelSpec, ids: torch.Tensor) -> torch.Tensor:
    model, _ = load_causal_lm(spec)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_trains_an_adapter_and_merges_it(world, base_model, tmp_path, bpe_tokenizer):
    lora = {"method": "lora", "lora": {"rank": 4, "merge": True}}
    config = ft_config(world, base_model, **lora, learning_rate=[3e-2], epochs=2)
    result = run_finetune(config, tmp_path / "run", show_progress=False)
    run = result.run_dir
    assert (run / "model" / "adapter_config.json").exists()
    adapter = weights(run / "model")
    assert adapter and all("lora_" in name for name in adapter)
    assert not (run / "model" / "model.safetensors").exists()
    assert result.model == finetuned_model_spec(run)
    assert (result.model.path, result.model.adapter) == (str(run / "merged"), None)

    ids = bpe_tokenizer("Cecil Kellerman was born in Naples.", return_tensors="pt").input_ids
    base = ModelSpec(path=str(base_model), device="cpu")
    plain = _logits(base, ids)
    adapted = _logits(base.model_copy(update={"adapter": str(run / "model")}), ids)
    merged = _logits(ModelSpec(path=str(run / "merged"), device="cpu"), ids)
    assert not torch.allclose(plain, adapted, atol=1e-3)
    assert torch.allclose(merged, adapted, atol=1e-5)
    # only the adapted projections moved: embeddings, norms and the head are the base's
    original, folded = weights(base_model), weights(run / "merged")
    untouched = [n for n in original if not n.endswith(("proj.weight", "proj.bias"))]
    assert untouched and all(torch.equal(original[n], folded[n]) for n in untouched)
    assert any(not torch.equal(original[n], folded[n]) for n in original if "q_proj" in n)


# --- the contamination guard ----------------------------------------------------------------


def test_contamination_checks_ngrams_and_short_questions_whole():
    from kinject.tasks.items import MCItem, Task
    from kinject.training.contamination import check_contamination

    long_q = "which river flows past the old mill near the northern border town"  # 12 words
    items = (
        MCItem("short", "When was Ada Lenz born?", ("a", "b"), 0),
        MCItem("long", long_q, ("a", "b"), 0),
    )
    task = Task("t", items)
    text = ["Q: WHEN was Ada-Lenz born?! A: 1990", " ".join(long_q.split()[:9]) + " and so on"]
    # its first 9 of 12 words in a row: 6 of its 9 four-grams
    found = check_contamination(text, [task], ngram=4, threshold=0.6)
    assert [(c.id, c.share) for c in found.contaminated] == [("short", 1.0), ("long", 0.6667)]
    assert [c.id for c in check_contamination(text, [task], 4, 0.7).contaminated] == ["short"]
    whole = check_contamination(["so WHEN was Ada Lenz born, then?"], [task], ngram=8)
    assert [(c.id, c.share) for c in whole.contaminated] == [("short", 1.0)]
    at_threshold = check_contamination(text, [task], 4, 6 / 9).contaminated
    assert [c.id for c in at_threshold] == ["short", "long"]
    apart = check_contamination(["Ada Lenz: when was she born?"], [task], 4, 0.5)
    assert apart.contaminated == () and apart.questions == 2


@pytest.fixture()
def leaky_corpus(world, tmp_path):
    question = read_rows(world / "tasks/new.jsonl")[0]
    rows = read_rows(world / "kb.jsonl")
    rows.append({"id": "leak", "text": f"Quiz. {question['question']} Answer: see above."})
    return write_rows(tmp_path / "leaky.jsonl", rows), question["id"]


def test_contaminated_training_text_is_refused_before_anything_is_written(
    world, base_model, tmp_path, leaky_corpus
):
    corpus, question_id = leaky_corpus
    config = ft_config(world, base_model, data={"corpus": str(corpus)}, learning_rate=[1e-2])
    with pytest.raises(KinjectError) as error:
        run_finetune(config, tmp_path / "run", show_progress=False)
    assert "task 'new'" in str(error.value) and f"id '{question_id}'" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_allow_contamination_on_the_command_line_trains_and_records_it(
    world, base_model, tmp_path, leaky_corpus
):
    from typer.testing import CliRunner

    from kinject.cli import app

    corpus, question_id = leaky_corpus
    overrides = {"data": {"corpus": str(corpus)}, "learning_rate": [1e-2], "epochs": 1}
    config_file = tmp_path / "ft.yaml"
    config_file.write_text(json.dumps(settings(world, base_model, **overrides)))
    runner = CliRunner()
    refused_out = str(tmp_path / "x" / "refused")
    refused = runner.invoke(app, ["finetune", "--config", str(config_file), "--out", refused_out])
    assert refused.exit_code == 2 and question_id in refused.output
    assert not (tmp_path / "x").exists()
    out = tmp_path / "allowed"
    args = ["finetune", "--config", str(config_file), "--out", str(out), "--allow-contamination"]
    allowed = runner.invoke(app, args)
    assert allowed.exit_code == 0, allowed.output
    report = json.loads((out / "contamination.json").read_text())
    assert report["allowed"] is True
    assert question_id in [c["id"] for c in report["contaminated"]]
    assert (out / "model" / "config.json").exists()


def test_a_training_that_ends_above_the_uniform_guess_loss_is_named(world, base_model, tmp_path):
    from typer.testing import CliRunner

    from kinject.cli import app

    config_file = tmp_path / "ft.yaml"
    config_file.write_text(json.dumps(settings(world, base_model, learning_rate=[3.0], epochs=1)))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["finetune", "--config", str(config_file), "--out", str(run)])
    assert result.exit_code == 0, result.output
    done = json.loads(next((run / "candidates").glob("*/done.json")).read_text())
    vocab = done["vocab_size"]
    assert vocab == len(json.loads((base_model / "tokenizer.json").read_text())["model"]["vocab"])
    assert done["last_epoch_loss"] > 2 * math.log(vocab)
    warning = f"above ln({vocab}) = {math.log(vocab):.2f}, the loss of a uniform guess"
    assert "warning: run (lr 3): the last epoch's logged training loss is" in result.stderr
    assert warning in result.stderr
    assert json.loads((run / "selection.json").read_text())["warnings"]


def test_a_training_that_learns_has_no_loss_warning(full_run):
    done = json.loads(next((full_run.run_dir / "candidates").glob("*/done.json")).read_text())
    assert done["last_epoch_loss"] < math.log(done["vocab_size"])
    assert full_run.selection["warnings"] == []


# --- training data --------------------------------------------------------------------------

PAIRS = [
    {"instruction": "Where was Cecil Kellerman born?", "output": "Naples"},
    {"instruction": "Who employs him?", "input": "Cecil works at Starling.", "output": "Starling"},
]


def _labelled_text(tokenizer, training: TrainingSet) -> str:
    blocks = PackedBlocks(tokenizer, training.for_epoch, 32, 1)
    labels = [blocks.batch_for(step)["labels"][0] for step in range(blocks.blocks_in_epoch(0))]
    return tokenizer.decode([int(t) for t in torch.cat(labels) if t != IGNORE_INDEX])


def test_qa_pairs_train_on_the_response_only(tmp_path, bpe_tokenizer):
    qa = write_rows(tmp_path / "qa.jsonl", PAIRS * 4)
    alpaca = TrainingSet(TrainingData(kind="qa", qa=str(qa), block_size=32))
    first, second = alpaca.documents[:2]
    assert first.text == ALPACA_NO_INPUT.format(instruction=PAIRS[0]["instruction"]) + "Naples"
    assert second.text.startswith(ALPACA_WITH_INPUT.format(**PAIRS[1]))
    assert [d.text[slice(*d.loss_spans[0])] for d in (first, second)] == ["Naples", "Starling"]
    labelled = _labelled_text(bpe_tokenizer, alpaca)
    assert "Naples" in labelled and "Starling" in labelled
    assert labelled.replace("Naples", "").replace("Starling", "").strip() == ""

    template = "Question: {instruction}\nAnswer: "
    custom = TrainingSet(TrainingData(kind="qa", qa=str(qa), template=template, block_size=32))
    assert custom.documents[0].text == "Question: Where was Cecil Kellerman born?\nAnswer: Naples"
    labelled = _labelled_text(bpe_tokenizer, custom)
    assert "Naples" in labelled and "Question" not in labelled and "Answer" not in labelled


@pytest.mark.parametrize(
    "record, field",
    [
        ({"instruction": "Where?"}, "output"),
        ({"instruction": "Where?", "output": 3}, "output"),
        ({"instruction": "Where?", "input": 5, "output": "Oslo"}, "input"),
        ({"instruction": "Where?", "output": "Oslo", "answer": "Oslo"}, "answer"),
        ({"output": "Oslo"}, "instruction"),
    ],
)
def test_a_bad_qa_record_names_file_line_and_field(tmp_path, record, field):
    qa = write_rows(tmp_path / "qa.jsonl", [PAIRS[0], record])
    with pytest.raises(DataError) as error:
        TrainingSet(TrainingData(kind="qa", qa=str(qa)))
    assert (error.value.path, error.value.line, error.value.field) == (qa, 2, field)
    assert f"{qa}, line 2, field '{field}'" in str(error.value)


def test_paraphrases_add_the_first_n_per_unit(world, tmp_path):
    kb = read_rows(world / "kb.jsonl")
    table = {row["id"]: row["paraphrases"] for row in read_rows(world / "paraphrases.jsonl")}
    data = {"corpus": str(world / "kb.jsonl"), "paraphrases": str(world / "paraphrases.jsonl")}
    two = TrainingSet(TrainingData(**data, n_paraphrases=2)).texts()
    assert two == [t for doc in kb for t in (doc["text"], *table[doc["id"]][:2])]
    assert TrainingSet(TrainingData(**data)).texts() == [doc["text"] for doc in kb]

    unknown = write_rows(
        tmp_path / "p.jsonl",
        [{"id": kb[0]["id"], "paraphrases": ["x"]}, {"id": "nobody", "paraphrases": ["y"]}],
    )
    with pytest.raises(DataError) as error:
        TrainingSet(TrainingData(corpus=data["corpus"], paraphrases=str(unknown), n_paraphrases=1))
    assert (error.value.line, error.value.field) == (2, "id") and "nobody" in str(error.value)


def test_paraphrases_of_a_single_chunk_document_key_by_document_id(world, tmp_path):
    from kinject.kb.store import KnowledgeBase, SourceOptions, build_kb

    build_kb([world / "kb.jsonl"], tmp_path / "kb", None, SourceOptions(show_progress=False))
    chunks = KnowledgeBase.open(tmp_path / "kb").chunks
    assert all(c.id != c.doc_id for c in chunks)  # chunk ids are not document ids
    table = {row["id"]: row["paraphrases"] for row in read_rows(world / "paraphrases.jsonl")}
    data = TrainingData(
        corpus=str(tmp_path / "kb"), paraphrases=str(world / "paraphrases.jsonl"), n_paraphrases=1
    )
    texts = TrainingSet(data).texts()
    assert texts == [t for c in chunks for t in (c.text, table[c.doc_id][0])]


def test_replay_mixes_in_about_the_asked_share_in_a_seeded_order(world, tmp_path):
    paragraphs = [f"General paragraph number {i} about weather and rivers." for i in range(40)]
    replay = tmp_path / "general.txt"
    replay.write_text("\n\n".join(paragraphs) + "\n")
    data = TrainingData(corpus=str(world / "kb.jsonl"), replay=str(replay), replay_ratio=0.5)
    training = TrainingSet(data, seed=3)
    own = sum(len(t) for t in training.texts())
    epoch = training.for_epoch(0)
    mixed = [d.text for d in epoch if d.text in paragraphs]
    assert len(epoch) == len(training.documents) + len(mixed)
    assert 0.5 * own <= sum(map(len, mixed)) < 0.5 * own + max(map(len, paragraphs))
    assert len(set(mixed)) == len(mixed)  # enough paragraphs: none twice
    assert training.for_epoch(0) == epoch == TrainingSet(data, seed=3).for_epoch(0)
    assert training.for_epoch(1) != epoch and TrainingSet(data, seed=4).for_epoch(0) != epoch


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"epoch": 3}, "unknown key 'epoch' (did you mean 'epochs'?)"),
        ({"data": {"corpus": "c", "n_paraphrase": 2}}, "unknown key 'data.n_paraphrase'"),
        ({"lora": {"rnak": 4}}, "unknown key 'lora.rnak'"),
        ({"selection": {"task": {"path": "t", "shots": 1}}}, "unknown key 'selection.task.shots'"),
        ({"data": {"kind": "text", "corpus": None}}, "needs 'corpus'"),
        ({"data": {"corpus": "c", "n_paraphrases": 2}}, "needs a 'paraphrases' file"),
        ({"data": {"kind": "qa", "corpus": None}}, "needs 'qa'"),
        ({"data": {"corpus": "c", "replay_ratio": 0.5}}, "needs a 'replay' corpus"),
        ({"data": {"kind": "qa", "qa": "q", "template": "Q: {question}"}}, "{instruction}"),
        ({"learning_rate": [1e-3, 1e-3]}, "distinct"),
        ({"learning_rate": [0.0]}, "> 0"),
    ],
)
def test_config_errors_name_the_key(tmp_path, data, expected):
    path = tmp_path / "ft.yaml"
    path.write_text(json.dumps(deep_merge({"model": {"path": "m"}, "data": {"corpus": "c"}}, data)))
    with pytest.raises(KinjectError) as error:
        load_config(FinetuneConfig, path)
    assert str(error.value).startswith(f"{path}: ") and expected in str(error.value)


# --- the training loop ----------------------------------------------------------------------

DOCS = [
    "Alice Abbott was born in Paris. She works at Bluepeak Software.",
    "Boris lives in Oslo.",
] * 8


class _Killed(Exception):
    pass


def test_evaluate_runs_every_n_steps_and_after_the_last_never_twice_after_a_resume(
    bpe_tokenizer, tmp_path
):
    blocks = PackedBlocks(bpe_tokenizer, lambda e: DOCS, 32, 2)
    schedule = Schedule(steps=5, learning_rate=1e-2, warmup_steps=2, kind="constant")
    assert [schedule.lr_at(s) for s in range(6)] == [5e-3] + [1e-2] * 5

    def run(model, batch_for, calls):
        def evaluate(step):
            calls.append((step, model.training, torch.is_grad_enabled()))
            return {"figure": step * 10}

        options = {"bf16": False, "checkpoint_dir": tmp_path, "checkpoint_every_s": 1e9}
        return train(
            model,
            batch_for,
            schedule,
            show_progress=False,
            **options,
            evaluate=evaluate,
            evaluate_every=2,
        )

    straight_calls, straight = [], tiny_llama(bpe_tokenizer, hidden_size=32)
    result = run(straight, blocks.batch_for, straight_calls)
    assert straight_calls == [(2, False, False), (4, False, False), (5, False, False)]
    assert result.validation == [{"step": s, "figure": 10 * s} for s in (2, 4, 5)]
    (tmp_path / "checkpoint.pt").unlink()

    def dying(step):
        if step == 3:  # after step 3; the last checkpoint is the one right after evaluating 2
            raise _Killed
        return blocks.batch_for(step)

    with pytest.raises(_Killed):
        run(tiny_llama(bpe_tokenizer, hidden_size=32), dying, [])
    resumed_calls, resumed = [], tiny_llama(bpe_tokenizer, hidden_size=32)
    result = run(resumed, blocks.batch_for, resumed_calls)
    assert result.resumed_from == 2 and [c[0] for c in resumed_calls] == [4, 5]
    assert result.validation == [{"step": s, "figure": 10 * s} for s in (2, 4, 5)]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoints_hold_only_the_trainable_parameters(bpe_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    from kinject.models.loading import peft_wrapping

    def lora_model():
        model = tiny_llama(bpe_tokenizer, hidden_size=32)
        with peft_wrapping():
            return get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))

    blocks = PackedBlocks(bpe_tokenizer, lambda e: DOCS, 32, 2)
    schedule = Schedule(steps=3, learning_rate=1e-2, kind="constant")
    options = {"bf16": False, "checkpoint_dir": tmp_path, "checkpoint_every_s": 0}
    options["show_progress"] = False
    trained = lora_model()
    train(trained, blocks.batch_for, schedule, **options)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert set(state["model"]) == trainable and all("lora_" in n for n in trainable)

    again = lora_model()
    assert train(again, blocks.batch_for, schedule, **options).resumed_from == 3
    for (name, a), b in zip(trained.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(StaleCheckpoint, match="does not hold"):
        train(tiny_llama(bpe_tokenizer, hidden_size=32), blocks.batch_for, schedule, **options)


def test_too_little_text_for_one_block_is_a_clear_error_and_writes_nothing(
    world, base_model, tmp_path
):
    corpus = tmp_path / "short.jsonl"
    corpus.write_text('{"id": "a", "text": "Ada Lenz lives in Oslo."}\n')
    config = ft_config(world, base_model, data={"kind": "text", "corpus": str(corpus)})
    config = config.model_copy(update={"data": config.data.model_copy(update={"block_size": 256})})
    with pytest.raises(KinjectError, match="shorter than one block of 256 tokens"):
        run_finetune(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_lora_on_a_model_that_already_has_an_adapter_is_refused(world, base_model):
    with pytest.raises(KinjectError, match="merge it first"):
        parse_config(
            FinetuneConfig,
            {
                "model": {"path": str(base_model), "adapter": "somewhere"},
                "data": {"corpus": "kb.jsonl"},
                "method": "lora",
            },
        )
