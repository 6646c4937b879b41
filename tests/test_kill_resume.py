"""Kill and resume: real ``kinject`` commands are SIGKILLed at precise points, run again, and
must end exactly where an uninterrupted run ends.

Three commands, each killed several times in a row (every kill lands in the run the previous
kill left) and then run to the end:

* ``kinject kb build`` of 304 documents: while the documents are spooled, between two
  embedding batches;
* ``kinject eval`` with base and rag arms (K chosen on validation) on a tiny Llama: right
  after a cell is stored, between two forward passes, at a seeded random moment, inside the
  atomic write of ``metrics.json`` (temporary file written, not renamed);
* ``kinject run`` with a tiny fine-tuning (ft-reg, ft-reg+rag): right after an optimizer
  step, inside a checkpoint's atomic write, at a seeded random moment in training, inside
  the write of the experiment's ``metrics.json``.

After every kill and every resume the run folder is walked: every JSON/JSONL/YAML file
parses, every safetensors/npy/checkpoint file loads.  After the resume: no temporary file or
staging folder is left, the results are byte-identical to the uninterrupted run's, no cell
finished before a kill was scored again (each process traces the cells it stores) and a
killed training continued from its checkpoint's step (each process traces its optimizer
steps).  The points are named places in the library (:mod:`kinject.faults`), plus timed
kills from outside.  The figures are printed at the end of the session (``SUMMARY``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from kill_harness import (
    COUNTS,
    FileCheck,
    Outcome,
    Runner,
    cell_files,
    check_files,
    kinject_env,
    record_kill,
    summary_line,
)
from kinject.config import (
    EvalConfig,
    KBConfig,
    ModelSpec,
    RagConfig,
    TaskSpec,
    WorldConfig,
    load_config,
    to_yaml,
)
from kinject.world.build import build_world, write_world

SUMMARY: list[str] = []  # printed by conftest's pytest_terminal_summary
REPO = Path(__file__).resolve().parent.parent
WORLD_YAML = REPO / "examples" / "quick" / "world.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    if COUNTS["points"] or COUNTS["identical"]:
        SUMMARY.append(summary_line())


# ---------------------------------------------------------------------------------------------
# shared inputs: a world of 304 biographies, its knowledge base built once, uninterrupted


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    config = WorldConfig(n_known=2, n_new=240, n_updated=60, n_reading=2, n_dev=2)
    folder = write_world(build_world(config), tmp_path_factory.mktemp("kr-world") / "world")
    corpus = folder / "corpus"  # the knowledge base's documents in four files
    corpus.mkdir()
    lines = (folder / "kb.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    for part in range(4):
        (corpus / f"part-{part}.jsonl").write_text("".join(lines[part::4]), encoding="utf-8")
    for split in ("new", "validation"):  # 8 questions each: tiny cells
        head = (folder / "tasks" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        (folder / f"{split}-8.jsonl").write_text("\n".join(head[:8]) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def kb_reference(world, tmp_path_factory) -> Path:
    """The knowledge base of an uninterrupted build (what `kinject kb build` calls)."""
    from kinject.kb.store import SourceOptions, build_kb

    out = tmp_path_factory.mktemp("kr-kb") / "kb"
    build_kb([world / "corpus"], out, KBConfig(), SourceOptions(show_progress=False))
    return out


# ---------------------------------------------------------------------------------------------
# helpers


def assert_intact(check: FileCheck, after: str) -> None:
    assert check.checked > 0, after
    assert check.bad == [], f"{after}: files that do not parse: {check.bad}"


def assert_clean(check: FileCheck, after: str) -> None:
    assert_intact(check, after)
    assert check.temporaries == [], f"{after}: temporary files left: {check.temporaries}"
    assert check.hidden == [], f"{after}: staging folders left: {check.hidden}"


def assert_killed(outcome: Outcome) -> None:
    assert outcome.killed, (
        f"expected SIGKILL at {outcome.kill}, got rc {outcome.returncode}:\n{outcome.output[-3000:]}"
    )
    record_kill(outcome)


def assert_finished(outcome: Outcome) -> None:
    assert outcome.returncode == 0, outcome.output[-3000:]


class CellLedger:
    """Which cells each process stored, against the cells finished before it started."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.stored: list[str] = []

    def step(self, run) -> Outcome:
        before = cell_files(self.run_dir)
        outcome = run()
        traced = outcome.details("cell.stored")
        again = sorted(set(traced) & set(before))
        COUNTS["recomputed"] += len(again)
        assert again == [], f"finished cells scored again: {again}"
        after = cell_files(self.run_dir)
        assert {name: after[name] for name in before} == before  # never rewritten
        new = set(after) - set(before)  # a kill may land between a cell's write and its trace
        assert set(traced) <= new
        self.stored += sorted(new)
        return outcome


def kb_files(kb: Path) -> dict[str, bytes]:
    """Every file of a knowledge base, by relative path; build.json without its timings."""
    files = {}
    for path in sorted(kb.rglob("*")):
        if path.is_file() and path.name != ".lock":
            data = path.read_bytes()
            if path.name == "build.json":
                build = json.loads(data)
                for key in ("embed_seconds", "index_seconds"):
                    build.pop(key)
                data = json.dumps(build, sort_keys=True).encode()
            files[path.relative_to(kb).as_posix()] = data
    return files


def without_digest(cells) -> list[str]:
    """Cell file names without the digest: ``{cell key}-{digest}.jsonl`` -> the key."""
    return [name.rsplit("-", 1)[0] for name in cells]


def first_step(outcome: Outcome) -> int:
    steps = outcome.details("train.step")
    assert steps, f"no optimizer step in this run:\n{outcome.output[-2000:]}"
    return int(steps[0])


def checkpoint_step(run_dir: Path) -> int:
    """The step of the (one) training checkpoint under ``run_dir``."""
    import torch

    (path,) = run_dir.glob("finetuned/*/candidates/*/checkpoint/checkpoint.pt")
    return torch.load(path, weights_only=True)["progress"]["step"]


def assert_resumed_at_checkpoint(outcome: Outcome, checkpoint: int) -> None:
    """The run's first optimizer step is the one after its checkpoint's, not step 1."""
    first = first_step(outcome)
    COUNTS["restarted_steps"] += max(0, checkpoint + 1 - first)
    assert checkpoint > 0 and first == checkpoint + 1, (checkpoint, first)


# ---------------------------------------------------------------------------------------------
# 1. kinject kb build


def test_a_killed_kb_build_leaves_no_kb_and_the_rerun_builds_the_same_one(
    world, kb_reference, tmp_path
):
    out = tmp_path / "kbs" / "kb"
    out.parent.mkdir()
    cache = tmp_path / "cache"
    command = ["kb", "build", str(world / "corpus"), "--out", str(out)]
    runner = Runner(command, tmp_path, kinject_env(cache), "kb-build")

    spooling = runner.run(kill_at="kb.spooled:150")  # half the documents read
    assert_killed(spooling)
    assert len(spooling.details("kb.spooled")) == 150
    assert not out.exists() and not list(out.parent.iterdir())  # the spool is anonymous

    embedding = runner.run(kill_at="embed.batch:3")  # between two embedding batches
    assert_killed(embedding)
    assert len(embedding.details("kb.spooled")) == 304
    assert not out.exists()
    left = check_files(out.parent)
    assert [p.name.rsplit("-", 2)[0] for p in left.hidden] == [".kb.building"]  # its staging
    assert_intact(left, "after the kill while embedding")

    rebuilt = runner.run()
    assert_finished(rebuilt)
    assert_clean(check_files(out.parent), "after the rebuild")  # the stale staging removed
    assert kb_files(out) == kb_files(kb_reference)
    COUNTS["identical"] += 1


# ---------------------------------------------------------------------------------------------
# 2. kinject eval, base and rag arms


def eval_config(world: Path, kb: Path, model: Path) -> EvalConfig:
    dev = str(world / "tasks" / "dev.jsonl")
    return EvalConfig(
        model=ModelSpec(path=str(model), device="cpu"),
        tasks=[
            TaskSpec(name="validation", path=str(world / "validation-8.jsonl"), dev=dev),
            TaskSpec(name="new", path=str(world / "new-8.jsonl"), dev=dev),
        ],
        arms=["base", "rag"],
        # BM25: no embedding model to load in every killed process (the build embedded)
        rag=RagConfig(kb=str(kb), k=[0, 1, 2], select_k_on="validation", retriever="bm25"),
        shots=[0, 1],
        scoring={"batch_size": 2},  # several forward passes per cell
        bootstrap_resamples=100,
    )


def test_a_killed_eval_resumes_to_the_uninterrupted_results_scoring_no_cell_twice(
    world, kb_reference, tiny_llama_dir, tmp_path
):
    from kinject.evaluation.evaluate import run_evaluation

    config_file = tmp_path / "eval.yaml"
    config_file.write_text(to_yaml(eval_config(world, kb_reference, tiny_llama_dir)))
    reference = tmp_path / "reference"
    config = load_config(EvalConfig, config_file).with_paths_resolved(tmp_path)
    run_evaluation(config, reference, show_progress=False)
    cells = set(cell_files(reference))
    assert len(cells) == 10  # K 0-2 x 2 shots on validation; base and rag x 2 shots on new

    run_dir = tmp_path / "run"
    command = ["eval", "--config", str(config_file), "--out", str(run_dir)]
    runner = Runner(command, tmp_path, kinject_env(tmp_path / "cache"), "eval")
    ledger = CellLedger(run_dir)

    between = ledger.step(lambda: runner.run(kill_at="cell.stored:3"))  # 3 cells stored
    assert_killed(between)
    assert len(cell_files(run_dir)) == 3
    assert_intact(check_files(run_dir), "after the kill between cells")

    mid_cell = ledger.step(lambda: runner.run(kill_at="score.batch:3"))  # 3rd forward pass
    assert_killed(mid_cell)
    assert mid_cell.trace[-1][0] == "score.batch"  # it died right after a forward pass
    assert_intact(check_files(run_dir), "after the kill between forward passes")

    timed = ledger.step(lambda: runner.run_killed_after("score.batch", seed=8, span_s=0.5))
    record_kill(timed)  # it may come after the end: then it is counted as missed
    assert_intact(check_files(run_dir), "after the timed kill")

    metrics = run_dir / "metrics.json"
    writing = ledger.step(lambda: runner.run(kill_at=f"write@{glob.escape(str(metrics))}:1"))
    assert_killed(writing)
    assert not metrics.exists()
    left = check_files(run_dir)
    assert [p.name.split(".")[1] for p in left.temporaries] == ["metrics"]
    assert_intact(left, "after the kill inside the metrics write")

    final = ledger.step(runner.run)
    assert_finished(final)
    assert final.details("score.batch") == [] and final.details("cell.stored") == []
    assert_clean(check_files(run_dir), "after the resume")
    assert sorted(ledger.stored) == sorted(cells)  # every cell scored once in all
    for name in ("metrics.json", "records.jsonl", "table.md"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    COUNTS["identical"] += 1


# ---------------------------------------------------------------------------------------------
# 3. kinject run with a fine-tuning


def write_experiment(path: Path) -> Path:
    """The quick example's world; base, rag, ft-reg and ft-reg+rag on 'new', 0 and 1 shot; a
    fine-tuning of 78 optimizer steps that checkpoints after every step."""
    world = "${world}"
    task = {"name": "new", "path": f"{world}/tasks/new.jsonl", "dev": f"{world}/tasks/dev.jsonl"}
    validation = {**task, "name": "validation", "path": f"{world}/tasks/validation.jsonl"}
    spec = {
        "include": os.path.relpath(WORLD_YAML, path.parent),
        "name": "kill and resume",
        "models": [{"label": "tiny", "path": "${world_model}"}],
        "tasks": [task],
        "validation": {"task": validation, "rag_sample": 10, "finetune_sample": 10},
        "arms": ["base", "rag", "ft-reg", "ft-reg+rag"],
        "rag": {"kb": "${world_kb}", "k": [0, 1], "retriever": "bm25"},
        "finetunes": {
            "ft-reg": {
                "data": {"corpus": f"{world}/kb.jsonl", "block_size": 32},
                "learning_rate": [3.0e-3],
                "epochs": 2,
                "batch_size": 2,
                "checkpoint_every_s": 1.0e-6,  # after every step
            }
        },
        "shots": [0, 1],
        "bootstrap_resamples": 100,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_a_killed_experiment_resumes_training_from_its_checkpoint_to_the_same_results(tmp_path):
    from kinject.experiments.files import load_experiment
    from kinject.experiments.runner import run_experiment

    experiment = write_experiment(tmp_path / "exp" / "experiment.yaml")
    reference = tmp_path / "reference"
    run_experiment(load_experiment(experiment), reference, show_progress=False)
    cells = set(cell_files(reference))
    assert len(cells) == 16  # per model: K 0-1 x 2 shots on validation, base and rag x 2 on new

    run_dir = tmp_path / "run"
    command = ["run", str(experiment), "--out", str(run_dir)]
    cache = os.environ["KINJECT_CACHE_DIR"]  # the world, its model and KB: built above
    runner = Runner(command, tmp_path, kinject_env(cache), "run")
    ledger = CellLedger(run_dir)

    stepped = ledger.step(lambda: runner.run(kill_at="train.step:4"))  # after step 4's update
    assert_killed(stepped)
    assert checkpoint_step(run_dir) == 3  # step 4 died before its checkpoint
    assert_intact(check_files(run_dir), "after the kill after an optimizer step")

    saving = ledger.step(lambda: runner.run(kill_at="write@*/checkpoint.pt:3"))
    assert_killed(saving)
    assert_resumed_at_checkpoint(saving, 3)
    assert checkpoint_step(run_dir) == 5  # steps 4 and 5 saved; step 6's write killed
    left = check_files(run_dir)
    assert [p.name.split(".")[1] for p in left.temporaries] == ["checkpoint"]
    assert_intact(left, "after the kill inside a checkpoint write")

    timed = ledger.step(lambda: runner.run_killed_after("train.step", seed=5, span_s=1.5))
    assert_resumed_at_checkpoint(timed, 5)
    record_kill(timed)  # it may come after the end: then it is counted as missed
    assert_intact(check_files(run_dir), "after the timed kill")
    training = list(run_dir.glob("finetuned/*/candidates/*/checkpoint/checkpoint.pt"))
    resume_at = checkpoint_step(run_dir) if training else None

    metrics = run_dir / "metrics.json"
    writing = ledger.step(lambda: runner.run(kill_at=f"write@{glob.escape(str(metrics))}:1"))
    assert_killed(writing)
    if resume_at is not None:  # the timed kill came mid-training
        assert_resumed_at_checkpoint(writing, resume_at)
    assert not metrics.exists()
    assert_intact(check_files(run_dir), "after the kill inside the metrics write")

    final = ledger.step(runner.run)
    assert_finished(final)
    assert final.details("train.step") == [] and final.details("score.batch") == []
    assert_clean(check_files(run_dir), "after the resume")
    assert not list(run_dir.glob("finetuned/*/candidates/*/checkpoint"))
    # every cell scored once; the fine-tuned model's cells have another digest (its folder)
    assert sorted(without_digest(ledger.stored)) == sorted(without_digest(cells))
    for name in ("metrics.json", "records.jsonl"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    (trained,) = run_dir.glob("finetuned/*/model/model.safetensors")
    (straight,) = reference.glob("finetuned/*/model/model.safetensors")
    assert trained.read_bytes() == straight.read_bytes()  # the resumed training, bit for bit
    COUNTS["identical"] += 1


# ---------------------------------------------------------------------------------------------
# the pieces: kill specs, stale temporary files and staging folders


def test_a_bad_kill_spec_is_an_error_naming_it():
    from kinject.errors import KinjectError
    from kinject.faults import parse_kill_spec

    kills = parse_kill_spec("write@*/metrics.json:2, train.step:1")
    assert [(k.point, k.pattern, k.n) for k in kills] == [
        ("write", "*/metrics.json", 2),
        ("train.step", None, 1),
    ]
    for bad in ("write", "write:0", "nowhere:1", "train.step:x"):
        with pytest.raises(KinjectError, match="KINJECT_KILL_AT: '"):
            parse_kill_spec(bad)


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: its pid names no process now
    return process.pid


def test_a_write_removes_temporaries_of_its_target_left_by_dead_writers_only(tmp_path):
    from kinject.fileio import write_json

    target = tmp_path / "metrics.json"
    dead = tmp_path / f".metrics.json.{_dead_pid()}-abcd1234.tmp"
    live = tmp_path / f".metrics.json.{os.getppid()}-abcd1234.tmp"  # pytest's parent runs
    other = tmp_path / f".metrics.jsonl.{_dead_pid()}-abcd1234.tmp"  # another target's
    foreign = tmp_path / ".metrics.json.notapid.tmp"  # not written by atomic_open
    for path in (dead, live, other, foreign):
        path.write_text("{trunc")
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not dead.exists()
    assert live.exists() and other.exists() and foreign.exists()


def test_staging_folders_of_dead_builders_and_stale_old_folders_are_removed(tmp_path):
    from kinject.fileio import replace_dir, staging_dir

    dead = tmp_path / f".kb.building-{_dead_pid()}-abcd1234"
    live = tmp_path / f".kb.building-{os.getppid()}-abcd1234"
    for folder in (dead, live):
        (folder / "snapshots").mkdir(parents=True)
    fresh = staging_dir(tmp_path, ".kb.building-")
    assert fresh.name.startswith(f".kb.building-{os.getpid()}-")
    assert not dead.exists() and live.exists()

    target = tmp_path / "model"
    old = tmp_path / ".model.old"  # a replacement killed between its two renames
    old.mkdir()
    (old / "weights").write_text("previous")
    (fresh / "weights").write_text("new")
    replace_dir(fresh, target)
    assert (target / "weights").read_text() == "new" and not old.exists()
    shutil.rmtree(live)
