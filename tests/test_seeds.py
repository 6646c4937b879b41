"""Training seeds: every fine-tuning trained once per seed, LR and epoch chosen on the seeds'
mean, intervals over seeds and questions, comparisons that hold the training noise, and an
interval that covers a training on another machine's floats.

Real runs on the synthetic world of examples/quick (tests/test_experiments.py's small grid)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from kinject.evaluation.stats import (
    bootstrap_ci,
    hierarchical_bootstrap_ci,
    mcnemar_exact,
    paired_difference,
    paired_outcomes,
)
from kinject.experiments.seeds import select_over_seeds
from test_experiments import read_json, read_records, run_in_process, write_small_experiment

# ---------------------------------------------------------------------------------------------
# choosing on the seeds' mean


def rows(rate: float, accs: list[float], loss: float = 1.0) -> list[dict]:
    return [
        {"learning_rate": rate, "epoch": e, "acc": acc, "loss": loss, "n": 10}
        for e, acc in enumerate(accs, start=1)
    ]


def test_the_choice_is_the_best_mean_not_any_one_seeds_best():
    # seed 0 alone would take (1e-3, epoch 2), seed 1 alone (3e-3, epoch 1); on the mean
    # (3e-3, epoch 2) wins: 0.65 against 0.6 and 0.55
    seed0 = rows(1e-3, [0.4, 0.9]) + rows(3e-3, [0.5, 0.7])
    seed1 = rows(1e-3, [0.4, 0.3]) + rows(3e-3, [0.6, 0.6])
    choice = select_over_seeds([seed0, seed1], [1e-3, 3e-3])
    assert (choice["learning_rate"], choice["epoch"]) == (3e-3, 2)
    assert choice["validation_acc"] == 0.65
    assert choice["validation_acc_seeds"] == [0.7, 0.6]
    assert choice["runner_up"] == {"learning_rate": 1e-3, "epoch": 2, "validation_acc": 0.6}
    assert choice["margin"] == 0.05


def test_ties_go_to_lower_loss_then_the_grid_order_and_partial_choices_do_not_compete():
    a = rows(1e-3, [0.5, 0.5], loss=2.0) + rows(3e-3, [0.5], loss=1.0)
    choice = select_over_seeds([a], [1e-3, 3e-3])
    assert (choice["learning_rate"], choice["epoch"], choice["margin"]) == (3e-3, 1, 0.0)
    same = rows(1e-3, [0.5, 0.5]) + rows(3e-3, [0.5])
    assert (select_over_seeds([same], [1e-3, 3e-3])["epoch"]) == 1  # the grid's first
    # epoch 3 was scored under one seed only (say a shorter run): it cannot be chosen
    longer = rows(1e-3, [0.1, 0.2, 1.0])
    shorter = rows(1e-3, [0.1, 0.2])
    assert select_over_seeds([longer, shorter], [1e-3])["epoch"] == 2


# ---------------------------------------------------------------------------------------------
# intervals and paired differences


def test_one_seed_is_the_question_interval_and_disagreeing_seeds_widen_it():
    rng = np.random.default_rng(0)
    one = (rng.random(200) < 0.6).astype(float)
    assert hierarchical_bootstrap_ci([one], 5, 500) == bootstrap_ci(one, 5, 500)
    agreeing = [one, one, one]
    low, high = hierarchical_bootstrap_ci(agreeing, 5, 500)
    assert (low, high) == pytest.approx(bootstrap_ci(one, 5, 500), abs=0.02)
    # three trainings at 0.3, 0.6 and 0.9 on the same questions: the training noise dominates
    spread = [(rng.random(200) < p).astype(float) for p in (0.3, 0.6, 0.9)]
    low, high = hierarchical_bootstrap_ci(spread, 5, 2000)
    per_question = np.mean(spread, axis=0)
    q_low, q_high = bootstrap_ci(per_question, 5, 2000)
    assert high - low > 3 * (q_high - q_low)
    assert low < 0.45 and high > 0.75


def test_paired_difference_holds_zero_for_equal_arms_and_excludes_it_for_a_real_gap():
    rng = np.random.default_rng(1)
    arm = [(rng.random(300) < 0.5).astype(float) for _ in range(3)]
    same = paired_difference(arm, arm, 0, 500, same_trainings=True)
    assert same.difference == 0 and same.ci == (0.0, 0.0) and same.p_value == 1.0
    better = [np.maximum(row, (rng.random(300) < 0.5)) for row in arm]  # right where arm is
    gap = paired_difference(better, arm, 0, 500)
    assert gap.difference == pytest.approx(np.mean(better) - np.mean(arm), abs=1e-4)
    assert gap.excludes_zero and gap.ci[0] > 0.1 and gap.p_value < 0.01
    # the other way round: the same interval, negated
    back = paired_difference(arm, better, 0, 500)
    assert back.difference == -gap.difference and back.excludes_zero


# ---------------------------------------------------------------------------------------------
# an experiment with seeds


SEEDS = [0, 1, 2]


def seeded_experiment(path: Path, seeds=SEEDS, model: str | None = None) -> Path:
    write_small_experiment(path, arms=("base", "rag", "ft-reg", "ft-reg+rag"), tasks=("new",))
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec["seeds"] = list(seeds)
    spec["finetunes"]["ft-reg"].update({"learning_rate": [1.0e-3, 3.0e-3], "epochs": 2})
    if model is not None:
        spec["models"][0]["path"] = model
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory) -> Path:
    import torch

    folder = tmp_path_factory.mktemp("seeded")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # module fixtures run before _isolated_cache: the session's cache, as quick_experiment_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KINJECT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kinject-cache"))
        try:
            run_in_process(seeded_experiment(folder / "experiment.yaml"), folder / "run")
        finally:
            torch.set_num_threads(threads)
    return folder / "run"


def validation_rows(folder: Path) -> list[dict]:
    result = []
    for candidate in sorted((folder / "candidates").iterdir()):
        rate = read_json(candidate / "done.json")["learning_rate"]
        for line in (candidate / "validation.jsonl").read_text(encoding="utf-8").splitlines():
            result.append({"learning_rate": rate, **json.loads(line)})
    return result


def test_each_seed_is_its_own_training_chosen_on_the_seeds_mean(seeded_run):
    plan = read_json(seeded_run / "plan.json")["runs"]
    seeded = [row for row in plan if row.get("group") == "ft-reg"]
    assert [(row["label"], row["seed"]) for row in seeded] == [
        (f"ft-reg.seed-{s}", s) for s in SEEDS
    ]
    folders = [seeded_run / row["training"]["folder"] for row in seeded]
    assert len(set(folders)) == 3
    # the choice, recomputed by hand from the three trainings' validation logs
    mean: dict[tuple, list[float]] = {}
    for folder in folders:
        for row in validation_rows(folder):
            mean.setdefault((row["learning_rate"], row["epoch"]), []).append(row["acc"])
    ranked = sorted(mean, key=lambda c: -sum(mean[c]) / 3)
    best = sum(mean[ranked[0]]) / 3
    chosen = {c for c in mean if sum(mean[c]) / 3 == best}
    training = read_json(seeded_run / "metrics.json")["finetuning"]["ft-reg"]
    assert (training["learning_rate"], training["epoch"]) in chosen
    assert training["validation_acc"] == pytest.approx(best, abs=1e-4)
    runner = max(sum(v) / 3 for c, v in mean.items() if c != ranked[0])
    assert training["validation_margin"] == pytest.approx(best - runner, abs=1e-4)
    assert [s["seed"] for s in training["seeds"]] == SEEDS
    # every seed is scored at that choice: its weights after that epoch
    rate, epoch = training["learning_rate"], training["epoch"]
    for row, folder in zip(seeded, folders):
        config = yaml.safe_load((seeded_run / row["folder"] / "config.yaml").read_text())
        assert config["model"]["path"] == str(
            folder / "candidates" / f"lr-{rate:g}" / "epochs" / str(epoch)
        )
        assert (row["training"]["learning_rate"], row["training"]["epoch"]) == (rate, epoch)
    # the seeds are different trainings
    from finetune_helpers import weights

    a, b = (weights(folders[i] / "model") for i in (0, 1))
    assert any(not (a[name] == b[name]).all() for name in a)


def test_a_fine_tuned_cell_is_the_seeds_mean_with_an_interval_over_seeds_and_questions(
    seeded_run,
):
    metrics = read_json(seeded_run / "metrics.json")
    records = read_records(seeded_run)
    config = yaml.safe_load((seeded_run / "experiment.yaml").read_text(encoding="utf-8"))
    per_seed = {(c["seed"], c["arm"]): c for c in metrics["seed_cells"] if c["split"] == "new"}
    assert {key[0] for key in per_seed} == set(SEEDS)
    cells = [c for c in metrics["cells"] if c["model"] == "ft-reg" and c["split"] == "new"]
    assert sorted(c["arm"] for c in cells) == ["base", "rag"]
    assert not [c for c in metrics["cells"] if "seed" in c]  # per-seed cells are kept apart
    for cell in cells:
        mine = [per_seed[(s, cell["arm"])] for s in SEEDS]
        assert [s["acc"] for s in cell["seeds"]] == [c["acc"] for c in mine]
        assert cell["acc"] == pytest.approx(np.mean([c["acc"] for c in mine]), abs=1e-4)
        assert cell["acc_sd"] == pytest.approx(np.std([c["acc"] for c in mine], ddof=1), abs=1e-4)
        # [seed][question], the questions in the order the first seed's records hold them
        by_seed = [
            {
                r["question_id"]: float(r["correct"])
                for r in records
                if r["model"] == f"ft-reg.seed-{seed}"
                and (r["arm"], r["split"], r["shots"], r["k"])
                == (cell["arm"], "new", 0, seed_cell["k"])
            }
            for seed, seed_cell in zip(SEEDS, mine)
        ]
        order = list(by_seed[0])
        assert len(order) == cell["n"] and all(set(row) == set(order) for row in by_seed)
        ordered = [[row[q] for q in order] for row in by_seed]
        resamples = config["bootstrap_resamples"]
        assert cell["acc_ci"] == list(hierarchical_bootstrap_ci(ordered, config["seed"], resamples))
        q_only = bootstrap_ci(np.mean(ordered, axis=0), config["seed"], resamples)
        assert cell["acc_ci_questions"] == list(q_only)
        assert cell["acc_ci"][0] <= cell["acc"] <= cell["acc_ci"][1]


def test_comparisons_with_seeds_give_mcnemar_per_seed_and_a_bootstrap_over_both(seeded_run):
    metrics = read_json(seeded_run / "metrics.json")
    records = read_records(seeded_run)
    test = next(
        c
        for c in metrics["comparisons"]
        if {c["a"], c["b"]} == {"base", "ft-reg"} and c["split"] == "new"
    )
    assert test["test"] == "bootstrap over seeds and questions"
    base = [
        r for r in records if r["model"] == "base" and r["arm"] == "base" and r["split"] == "new"
    ]
    for seed, entry in zip(SEEDS, test["per_seed"]):
        mine = [
            r
            for r in records
            if r["model"] == f"ft-reg.seed-{seed}" and r["arm"] == "base" and r["split"] == "new"
        ]
        first, second = (base, mine) if test["a"] == "base" else (mine, base)
        exact = mcnemar_exact(*paired_outcomes(first, second))
        assert (entry["a_only"], entry["b_only"], entry["p_value"]) == (
            exact.a_only,
            exact.b_only,
            exact.p_value,
        )
    low, high = test["difference_ci"]
    assert low <= test["difference"] <= high
    assert test["difference"] == pytest.approx(test["acc_a"] - test["acc_b"], abs=2e-4)
    text = (seeded_run / "table.md").read_text(encoding="utf-8")
    assert "## Training seeds" in text and "## Learning rate and epoch" in text
    section = text.split("## Training seeds", 1)[1].split("\n## ", 1)[0]
    assert "| tiny | ft-reg | new | 0 |" in section and "| tiny | ft-reg+RAG | new | 0 |" in section


def test_a_seeded_run_is_rebuilt_from_its_records_and_resumes_without_training(
    seeded_run, tmp_path
):
    from kinject.experiments.tabulate import tabulate_experiment

    run_dir = tmp_path / "run"
    shutil.copytree(seeded_run, run_dir)
    before = {p: p.read_bytes() for p in [run_dir / "metrics.json", run_dir / "table.md"]}
    tabulate_experiment(run_dir)
    assert {p: p.read_bytes() for p in before} == before
    done = sorted(seeded_run.glob("finetuned/*/candidates/*/done.json"))
    assert len(done) == 6  # three seeds × two learning rates
    stamps = [p.stat().st_mtime_ns for p in done]
    metrics = (seeded_run / "metrics.json").read_bytes()
    experiment = seeded_run.parent / "experiment.yaml"
    run_in_process(experiment, seeded_run)
    assert sorted(seeded_run.glob("finetuned/*/candidates/*/done.json")) == done
    assert [p.stat().st_mtime_ns for p in done] == stamps  # nothing trained again
    assert (seeded_run / "metrics.json").read_bytes() == metrics


# ---------------------------------------------------------------------------------------------
# another machine's floats


def perturbed_copy(model: Path, out: Path, scale: float = 1e-6) -> Path:
    """The model with every weight moved by a relative ``scale`` of noise: what pretraining
    on a CPU that sums in another order would leave (kinject's runs differ in such bits)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    generator = torch.Generator().manual_seed(0)
    for path in out.glob("*.safetensors"):
        tensors = load_file(path)
        moved = {
            name: t + scale * t.abs().mean() * torch.randn(t.shape, generator=generator)
            if t.is_floating_point()
            else t
            for name, t in tensors.items()
        }
        save_file({n: t.contiguous() for n, t in moved.items()}, path, metadata={"format": "pt"})
    return out


def test_the_seed_interval_covers_a_training_on_perturbed_floats(seeded_run, tmp_path):
    import torch

    from finetune_helpers import weights

    experiment = yaml.safe_load((seeded_run / "experiment.yaml").read_text(encoding="utf-8"))
    base = Path(experiment["models"][0]["path"])
    other = perturbed_copy(base, tmp_path / "other-machine")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # and another thread count: another summation order
    try:
        run_in_process(
            seeded_experiment(tmp_path / "experiment.yaml", seeds=[0], model=str(other)),
            tmp_path / "run",
        )
    finally:
        torch.set_num_threads(threads)
    mine = read_json(tmp_path / "run" / "metrics.json")
    seeded = read_json(seeded_run / "metrics.json")
    plan = read_json(tmp_path / "run" / "plan.json")["runs"]
    folder = (
        tmp_path / "run" / next(r for r in plan if r["label"] == "ft-reg")["training"]["folder"]
    )
    original = (
        seeded_run
        / next(
            r for r in read_json(seeded_run / "plan.json")["runs"] if r["label"] == "ft-reg.seed-0"
        )["training"]["folder"]
    )
    a, b = (
        weights(folder / "candidates" / "lr-0.003" / "best"),
        weights(original / "candidates" / "lr-0.003" / "best"),
    )
    assert any(not torch.equal(a[n], b[n]) for n in a)  # the noise reached the trained model
    for arm in ("base", "rag"):
        cell = next(
            c
            for c in seeded["cells"]
            if c["model"] == "ft-reg" and c["arm"] == arm and c["split"] == "new"
        )
        again = next(
            c
            for c in mine["cells"]
            if c["model"] == "ft-reg" and c["arm"] == arm and c["split"] == "new"
        )
        low, high = cell["acc_ci"]
        assert low <= again["acc"] <= high
        assert low <= cell["seeds"][0]["acc"] <= high


def test_the_dry_run_counts_every_seeds_training_and_cells(seeded_run, tmp_path):
    from kinject.experiments.dryrun import dry_run
    from kinject.experiments.files import load_experiment

    seeded = load_experiment(seeded_experiment(tmp_path / "three.yaml"))
    single = load_experiment(seeded_experiment(tmp_path / "one.yaml", seeds=[0]))
    three, one = dry_run(seeded), dry_run(single)
    assert not three.problems and not three.unknown
    assert three.training_tokens == 3 * one.training_tokens > 0
    assert three.finetuning_requests == 3 * one.finetuning_requests > 0
    # base and rag scored once; ft-reg and ft-reg+rag once per seed
    plan = read_json(seeded_run / "plan.json")["runs"]
    cells = sum(len(list((seeded_run / row["folder"] / "cells").glob("*.jsonl"))) for row in plan)
    assert three.cells == cells
