"""Start real ``kinject`` commands, SIGKILL them at a precise point, check what they left.

A kill point is either a named place in the library (``KINJECT_KILL_AT``, see
:mod:`kinject.faults`: the process kills itself the n-th time it gets there) or a time (the
harness waits for the process to reach a traced point, sleeps a seeded random delay, then
kills it from outside, so that the named places are not the only ones tried).  Every process
traces its passage (``KINJECT_TRACE``) into its own file: forward passes, optimizer steps,
stored cells, atomic writes.

:func:`check_files` walks what a run left: every JSON, JSONL and YAML file parses, every
safetensors, ``.npy`` and checkpoint file loads; temporary files of atomic writes and
hidden staging folders are listed apart (a kill may leave them; the next run must remove
them).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# what the kill tests did, for the line printed at the end of the session
COUNTS: dict = {
    "points": [],  # one name per kill that landed (rc -9)
    "missed": 0,  # timed kills that came after the process had finished
    "identical": 0,  # resumed runs whose results equal the uninterrupted run's
    "recomputed": 0,  # finished cells scored again after a resume
    "restarted_steps": 0,  # optimizer steps of a resumed training before its checkpoint
    "truncated": 0,  # files that did not parse or load, after a kill or a resume
    "files_checked": 0,
    "processes": 0,  # kinject processes started
    "seconds": 0.0,  # their wall time
    "cpu_seconds": 0.0,  # and CPU time
}


@dataclass
class Outcome:
    """One ``kinject`` process: its exit status, its trace and its output."""

    returncode: int
    trace: list[tuple[str, str]]
    output: str
    kill: str | None  # the kill point asked for, if any
    seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # user + system time of the process

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def details(self, point: str) -> list[str]:
        return [detail for name, detail in self.trace if name == point]


def kinject_env(cache: Path | str, **extra: str) -> dict[str, str]:
    """A ``kinject`` subprocess's environment: its cache, one torch thread, a fixed hash seed,
    no kill and no trace inherited."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KINJECT_KILL_AT", "KINJECT_TRACE")
    }
    env.update(
        {
            "KINJECT_CACHE_DIR": str(cache),
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",
        }
    )
    env.update(extra)
    return env


class Runner:
    """Runs one ``kinject`` command again and again in ``cwd``, each time with its own trace
    file and log, optionally killed."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], name: str):
        self.args = args
        self.cwd = cwd
        self.env = env
        self.name = name
        self.runs = 0
        self.logs = cwd / f"{name}-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _paths(self) -> tuple[Path, Path]:
        self.runs += 1
        trace = self.logs / f"{self.runs}.trace"
        trace.unlink(missing_ok=True)
        return trace, self.logs / f"{self.runs}.log"

    def run(self, kill_at: str | None = None, timeout: float = 600) -> Outcome:
        """Run to the end, or until it kills itself at ``kill_at`` (``point[@glob]:n``)."""
        trace, log = self._paths()
        env = {**self.env, "KINJECT_TRACE": str(trace)}
        if kill_at is not None:
            env["KINJECT_KILL_AT"] = kill_at
        clock = _Clock()
        with open(log, "wb") as out:
            result = subprocess.run(
                [sys.executable, "-m", "kinject", *self.args],
                cwd=self.cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        return clock.stop(_outcome(result.returncode, trace, log, kill_at))

    def run_killed_after(
        self, point: str, seed: int, span_s: float, timeout: float = 600
    ) -> Outcome:
        """Start it, wait until it first reaches ``point`` (traced), sleep a random delay in
        ``[0, span_s)`` drawn from ``seed``, then SIGKILL it from outside (if it still runs)."""
        trace, log = self._paths()
        delay = random.Random(seed).uniform(0, span_s)
        env = {**self.env, "KINJECT_TRACE": str(trace)}
        clock = _Clock()
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "kinject", *self.args],
                cwd=self.cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + timeout  # a safety net, not a timing assertion
            try:
                while process.poll() is None and not _reached(trace, point):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{self.name}: never reached {point}")
                    time.sleep(0.01)
                if process.poll() is None:
                    time.sleep(delay)
                    if process.poll() is None:
                        os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        return clock.stop(_outcome(process.returncode, trace, log, f"{point}+{delay:.3f}s"))


class _Clock:
    """Wall and CPU time of the child processes waited for between start and stop."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.cpu = _children_cpu()

    def stop(self, outcome: Outcome) -> Outcome:
        outcome.seconds = time.perf_counter() - self.wall
        outcome.cpu_seconds = _children_cpu() - self.cpu
        COUNTS["processes"] += 1
        COUNTS["seconds"] += outcome.seconds
        COUNTS["cpu_seconds"] += outcome.cpu_seconds
        return outcome


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _reached(trace: Path, point: str) -> bool:
    try:
        text = trace.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return any(line.split(" ", 1)[0] == point for line in text.splitlines())


def _outcome(returncode: int, trace: Path, log: Path, kill: str | None) -> Outcome:
    lines = trace.read_text(encoding="utf-8").splitlines() if trace.exists() else []
    parsed = [(line.partition(" ")[0], line.partition(" ")[2]) for line in lines]
    return Outcome(returncode, parsed, log.read_text(encoding="utf-8", errors="replace"), kill)


def record_kill(outcome: Outcome) -> None:
    """Count a kill that landed (an asked-for point must land; a timed one may come late)."""
    if outcome.killed:
        COUNTS["points"].append(outcome.kill)
    else:
        COUNTS["missed"] += 1


# ---------------------------------------------------------------------------------------------
# what a killed (or resumed) run left on disk


@dataclass
class FileCheck:
    checked: int = 0
    bad: list[str] = field(default_factory=list)  # "path: why" for files that do not parse
    temporaries: list[Path] = field(default_factory=list)  # .{name}.{pid}-{random}.tmp
    hidden: list[Path] = field(default_factory=list)  # other hidden entries: staging, .old


def check_files(*roots: Path) -> FileCheck:
    """Parse or load every result file under ``roots``; list temporaries and hidden leftovers
    (lock files are expected and not listed)."""
    check = FileCheck()
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.name.startswith("."):
                if path.name.endswith(".tmp"):
                    check.temporaries.append(path)
                elif not path.name.endswith(".lock"):
                    check.hidden.append(path)
                continue
            if not path.is_file():
                continue  # (files inside a staging folder are checked too: finished ones)
            why = _unreadable(path)
            check.checked += 1
            if why is not None:
                check.bad.append(f"{path}: {why}")
    COUNTS["files_checked"] += check.checked
    COUNTS["truncated"] += len(check.bad)
    return check


def _unreadable(path: Path) -> str | None:
    """Why ``path`` does not parse or load, or None."""
    suffix = path.suffix
    try:
        if suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".jsonl":
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                return "the last line has no newline"
            for line in data.decode("utf-8").splitlines():
                if line.strip():
                    json.loads(line)
        elif suffix in (".yaml", ".yml"):
            import yaml

            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            load_file(path)
        elif suffix == ".npy":
            import numpy as np

            np.load(path)
        elif suffix == ".pt":
            import torch

            torch.load(path, weights_only=True)
        elif suffix == ".faiss":
            import faiss

            faiss.read_index(str(path))
    except Exception as error:  # noqa: BLE001 - any failure is the finding, reported whole
        return f"{type(error).__name__}: {error}"
    return None


def cell_files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """The finished cells under ``run_dir`` (any depth): file name -> (mtime_ns, inode)."""
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_ino)
        for p in run_dir.rglob("cells/*.jsonl")
        if not p.name.startswith(".")
    }


def _label(kill: str) -> str:
    """A kill point as the summary names it: ``write(metrics.json)``, ``timed``."""
    if "+" in kill:  # "{point}+{delay}s": killed from outside
        return "timed"
    target, _, _ = kill.rpartition(":")
    point, _, pattern = target.partition("@")
    return f"{point}({pattern.rsplit('/', 1)[-1]})" if pattern else point


def summary_line() -> str:
    points = COUNTS["points"]
    names = sorted({_label(point) for point in points})
    missed = f" ({COUNTS['missed']} timed kill(s) came after the end)" if COUNTS["missed"] else ""
    return (
        f"kill and resume: {len(points)} kill points exercised ({', '.join(names)}){missed}; "
        f"{COUNTS['identical']} resumed runs identical to uninterrupted; "
        f"{COUNTS['recomputed']} finished cells recomputed, "
        f"{COUNTS['restarted_steps']} optimizer steps redone before a checkpoint; "
        f"{COUNTS['truncated']} truncated files of {COUNTS['files_checked']} checked "
        f"({COUNTS['processes']} kinject processes, {COUNTS['seconds']:.0f} s wall, "
        f"{COUNTS['cpu_seconds']:.0f} s CPU)"
    )
