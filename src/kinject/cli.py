"""The ``kinject`` command line: each command is one library call.

Heavy libraries (torch, transformers) are imported inside the commands, so ``kinject --help``
stays fast.  A :class:`KinjectError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="kinject",
    help="Knowledge injection lab: measure RAG vs fine-tuning on your model, corpus and questions.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
world_app = typer.Typer(
    help="The synthetic knowledge world (the embedded default dataset).", no_args_is_help=True
)
app.add_typer(world_app, name="world")


def user_errors(function):
    """Print user errors (bad input, missing files) as one line instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from kinject.errors import KinjectError

        try:
            return function(*args, **kwargs)
        except KinjectError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def demo(
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/demo).")] = None,
    config: Annotated[
        Optional[Path], typer.Option(help="YAML overriding the demo's settings (DemoConfig).")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="A few-second smoke run: small world, short pretraining.")
    ] = False,
) -> None:
    """Build the synthetic world, pretrain (or reuse) the tiny base model, evaluate it, print the table.

    Example:

        kinject demo --out runs/demo
    """
    from kinject.demo import run_demo

    run_demo(out=out, config_path=config, quick=quick)


@world_app.command("build")
@user_errors
def world_build(
    out: Annotated[Path, typer.Option(help="Folder to write the world into.")] = Path("world"),
    seed: Annotated[Optional[int], typer.Option(help="The world's seed (default 0).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML with WorldConfig keys.")] = None,
) -> None:
    """Write the synthetic world (corpus, paraphrases, task files) as ordinary kinject inputs.

    Example:

        kinject world build --out world --seed 0
    """
    from kinject.config import WorldConfig, load_config
    from kinject.world.build import build_world, write_world

    world_config = load_config(WorldConfig, config) if config else WorldConfig()
    if seed is not None:
        world_config = world_config.model_copy(update={"seed": seed})
    write_world(build_world(world_config), out)
    typer.echo(f"wrote {out}/ (kb.jsonl, paraphrases.jsonl, tasks/*.jsonl)")


@app.command("eval")
@user_errors
def eval_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Evaluation YAML (EvalConfig).")],
    out: Annotated[
        Optional[Path], typer.Option(help="Run folder (default: runs/<config name>).")
    ] = None,
) -> None:
    """Score a model on multiple-choice tasks, arm by arm, and write a run folder.

    Example config (paths relative to the file):

        model: {path: ./my-model}
        tasks:
          - {format: mmlu_csv, path: data/mmlu/test/anatomy_test.csv}
          - {path: world/tasks/new.jsonl, dev: world/tasks/dev.jsonl}
        arms: [base, oracle]
        corpus: world/kb.jsonl
        shots: [0, 5]

    Example:

        kinject eval --config eval.yaml --out runs/my-eval
    """
    from kinject.config import EvalConfig, load_config
    from kinject.evaluation.evaluate import run_evaluation
    from kinject.evaluation.report import rich_table

    eval_config = load_config(EvalConfig, config).with_paths_resolved(config.parent)
    run_dir = out or Path("runs") / config.stem
    result = run_evaluation(eval_config, run_dir)
    _print(rich_table(result.metrics))
    typer.echo(f"run folder: {run_dir}")


@app.command()
@user_errors
def table(run_dir: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """Rebuild metrics.json and table.md from a run folder's records.jsonl, without a model.

    Example:

        kinject table runs/demo
    """
    from kinject.evaluation.evaluate import retabulate
    from kinject.evaluation.report import rich_table

    _print(rich_table(retabulate(run_dir)))


def _print(renderable) -> None:
    from rich.console import Console

    Console().print(renderable)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
