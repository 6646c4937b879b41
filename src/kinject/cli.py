"""The ``kinject`` command line: each command is one library call.

Heavy libraries (torch, transformers) are imported inside the commands, so ``kinject --help``
stays fast.  A :class:`KinjectError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="kinject",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # a crash must not print locals (keys, texts)
    context_settings={"help_option_names": ["-h", "--help"]},  # every subcommand inherits it
)
world_app = typer.Typer(
    help="The synthetic knowledge world (the embedded default dataset).", no_args_is_help=True
)
app.add_typer(world_app, name="world")
kb_app = typer.Typer(
    help="Knowledge bases: ingest documents, chunk, embed, index, search, measure retrieval.",
    no_args_is_help=True,
)
app.add_typer(kb_app, name="kb")
questions_app = typer.Typer(
    help="Multiple-choice questions generated from a knowledge base by a chat model.",
    no_args_is_help=True,
)
app.add_typer(questions_app, name="questions")
export_app = typer.Typer(
    help="Export tasks and runs to other tools (lm-evaluation-harness).", no_args_is_help=True
)
app.add_typer(export_app, name="export")
probes_app = typer.Typer(
    help="Probes: renamed-entity corpora and the questions that test them.", no_args_is_help=True
)
app.add_typer(probes_app, name="probes")


def _print_version(value: bool) -> None:
    if value:
        from kinject import __version__

        typer.echo(f"kinject {__version__} (Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def kinject_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version; exit."
        ),
    ] = False,
) -> None:
    """Knowledge injection lab: measure RAG vs fine-tuning on your model, corpus and questions.

    Example:

        kinject demo --out runs/demo
    """


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
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: what had finished is kept (scored cells, trained models, "
                "caches); the same command again resumes from there",
                err=True,
            )
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def demo(
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/demo).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML overriding the demo's settings (DemoConfig).")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="A few-second smoke run: small world, short pretraining.")
    ] = False,
) -> None:
    """Build the synthetic world, pretrain (or reuse) the tiny base model, evaluate it, then
    SmolLM2-135M-Instruct on its own checked facts and the world's people; print the tables.

    The tiny model's run goes into OUT, the real model's into OUT/smollm2 (`pretrained:
    null` in a --config file leaves it out; --quick runs the tiny model alone unless
    that file sets `pretrained:`).

    Example:

        kinject demo --out runs/demo
    """
    from kinject.demo import run_demo

    run_demo(out=out, config_path=config, quick=quick)


@world_app.command("build")
@user_errors
def world_build(
    out: Annotated[Path, typer.Option(help="Folder to write the world into.")] = Path("world"),
    seed: Annotated[int | None, typer.Option(help="The world's seed (default 0).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with WorldConfig keys.")] = None,
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
        Path | None, typer.Option(help="Run folder (default: runs/<config name>).")
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

    On several devices (or CPU processes), each scoring its share of every cell:

        accelerate launch --num_processes 2 -m kinject eval --config eval.yaml
    """
    from kinject.config import EvalConfig, load_config
    from kinject.evaluation.evaluate import run_evaluation
    from kinject.evaluation.report import rich_tables
    from kinject.training.loop import is_main_process

    eval_config = load_config(EvalConfig, config).with_paths_resolved(config.parent)
    run_dir = out or Path("runs") / config.stem
    result = run_evaluation(eval_config, run_dir, warn=_warn)
    if not is_main_process():  # under `accelerate launch`, the first process reports
        return
    for table in rich_tables(result.metrics, result.select_k_on):
        _print(table)
    typer.echo(f"run folder: {run_dir}")


@app.command()
@user_errors
def finetune(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Fine-tuning YAML (FinetuneConfig).")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: runs/<config name>).")
    ] = None,
    allow_contamination: Annotated[
        bool,
        typer.Option(
            help="Train even if evaluation questions occur in the training text (recorded)."
        ),
    ] = False,
) -> None:
    """Fine-tune a model (full or LoRA) on text or QA pairs; choose LR and epochs on validation.

    Example config (paths relative to the file):

        model: {path: ./base-model}
        data: {kind: text, corpus: world/kb.jsonl, paraphrases: world/paraphrases.jsonl,
               n_paraphrases: 10}
        method: lora
        learning_rate: [1e-4, 3e-4]
        epochs: 5
        selection: {task: {path: world/tasks/validation.jsonl}}
        contamination: {tasks: [{path: world/tasks/new.jsonl}]}

    Example:

        kinject finetune --config ft-par.yaml --out runs/ft-par

    On several devices (or CPU processes), the same command under accelerate:

        accelerate launch --num_processes 2 -m kinject finetune --config ft-par.yaml

    Then evaluate the result (and FT+RAG) with `kinject eval`, model `{path: ./base-model,
    adapter: runs/ft-par/model}` for LoRA, or `{path: runs/ft-par/model}` for full.
    """
    from kinject.config import FinetuneConfig, load_config
    from kinject.training.finetune import run_finetune

    job = load_config(FinetuneConfig, config).with_paths_resolved(config.parent)
    if allow_contamination:
        job = job.model_copy(
            update={"contamination": job.contamination.model_copy(update={"allow": True})}
        )
    run_dir = out or Path("runs") / config.stem
    result = run_finetune(job, run_dir)
    if result is None:  # a secondary process of `accelerate launch`
        return
    chosen = result.selection
    figures = f"lr {chosen['learning_rate']:g}, epoch {chosen['epoch']}"
    if chosen["validation_acc"] is not None:
        figures += f", validation accuracy {chosen['validation_acc']:.3f}"
    typer.echo(f"chosen: {figures}")
    for line in chosen.get("warnings", []):
        typer.echo(f"warning: {line}", err=True)
    where = result.model.adapter or result.model.path
    typer.echo(f"fine-tuned model: {where}\nrun folder: {run_dir}")


@app.command()
@user_errors
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML (ExperimentConfig).")],
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: runs/<experiment name>).")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check every input file and size the grid (cells, forward passes, training "
            "tokens) without loading or downloading a model; exit 2 on a problem.",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Score this model instead of the file's models: a local folder or a hub id "
            "(the setup sections it no longer needs, e.g. text_model:, are skipped).",
        ),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="With --model: float32, bfloat16 or float16.")
    ] = None,
) -> None:
    """Run an experiment's grid (models × arms × tasks × shots × K × sweeps); rerun to resume.

    Finished cells are kept: after a kill the same command goes on where it stopped, and
    after a change to the file only the cells the change touches are scored again.
    `--dry-run` checks the inputs and sizes the grid first, without a model.

    Example experiment (paths relative to the file; `include:` merges a base file):

        include: base.yaml
        models: [{label: my-model, path: ./my-model}]
        tasks: [{path: data/new.jsonl, dev: data/dev.jsonl}]
        validation: {task: {path: data/validation.jsonl}}
        arms: [base, rag, ft-par, ft-par+rag, rag+note]   # +note: a prompt prefix
        instructions: {note: "The documents below are from 2024.\\n\\n"}
        rag: {kb: kb/docs, k: [1, 3, 5]}
        finetunes:
          ft-par: {data: {corpus: kb/docs, paraphrases: para.jsonl, n_paraphrases: 10},
                   method: lora, learning_rate: [1e-4, 3e-4]}
        seeds: [0, 1, 2]     # each fine-tuning once per seed: intervals hold training noise
        shots: [0, 5]

    Example:

        kinject run examples/paper/mmlu.yaml --dry-run
        kinject run examples/demo/experiment.yaml --out runs/demo-grid
        kinject run examples/rename/experiment.yaml --model mistralai/Mistral-7B-v0.1 \\
            --dtype bfloat16 --out runs/rename-mistral

    On several devices (or CPU processes), training and scoring data parallel:

        accelerate launch --num_processes 4 -m kinject run examples/paper/mmlu.yaml
    """
    from kinject.experiments.files import load_experiment

    config = load_experiment(experiment)
    if model is not None:
        from kinject.experiments.files import with_model

        config = with_model(config, model, dtype)
    elif dtype is not None:
        raise typer.BadParameter("--dtype goes with --model")
    if dry_run:
        from kinject.experiments.dryrun import dry_run as check
        from kinject.experiments.dryrun import dry_run_lines

        result = check(config)
        for line in dry_run_lines(result):
            typer.echo(line)
        raise typer.Exit(2 if result.problems else 0)
    from kinject.experiments.runner import run_experiment
    from kinject.experiments.tables import rich_tables
    from kinject.training.loop import is_main_process

    run_dir = out or Path("runs") / experiment.stem
    result = run_experiment(config, run_dir)
    if not is_main_process():  # under `accelerate launch`, the first process reports
        return
    costs = json.loads((run_dir / "costs.json").read_text(encoding="utf-8"))
    for rendered in rich_tables(result.metrics, costs):
        _print(rendered)
    typer.echo(f"run folder: {run_dir}  (kinject report {run_dir}: the HTML report)")


@app.command()
@user_errors
def table(run_dir: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """Rebuild a run folder's metrics and tables from its records, without a model.

    Works on `kinject eval`, `kinject run` and `kinject demo` folders.

    Example:

        kinject table runs/demo
    """
    from kinject.evaluation.evaluate import retabulate
    from kinject.evaluation.report import rich_tables

    if (run_dir / "plan.json").exists():  # an experiment (or the demo)
        from kinject.experiments.tables import rich_tables as experiment_tables
        from kinject.experiments.tabulate import tabulate_experiment

        metrics = tabulate_experiment(run_dir)
        costs = json.loads((run_dir / "costs.json").read_text(encoding="utf-8"))
        for rendered in experiment_tables(metrics, costs):
            _print(rendered)
        return
    result = retabulate(run_dir)
    for rendered in rich_tables(result.metrics, result.select_k_on):
        _print(rendered)


@app.command()
@user_errors
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A `kinject run`, `kinject demo` or `kinject eval` folder.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="The folder to write into (default: RUN_DIR).")
    ] = None,
) -> None:
    """Write report.html (one self-contained file, plots inside) and report.md.

    Made from the run folder's files alone (metrics.json, costs.json, records.jsonl): no
    model, no task files.  An eval folder's report holds its table and its accuracy plot.

    Example:

        kinject report runs/demo
        kinject report runs/my-eval --out reports/my-eval
    """
    from kinject.experiments.report import write_report

    html, markdown = write_report(run_dir, out)
    typer.echo(f"wrote {html} and {markdown}")


@export_app.command("lm-eval")
@user_errors
def export_lm_eval_command(
    source: Annotated[
        Path, typer.Argument(help="A task file (JSONL or MMLU CSV), or a run folder.")
    ],
    out: Annotated[Path, typer.Option(help="The folder to create (new, or empty).")],
    dev: Annotated[Path | None, typer.Option(help="Task file: its k-shot examples.")] = None,
    format: Annotated[
        str | None, typer.Option(help="Task file: jsonl, mmlu_csv or mmlu_hf (default: by suffix).")
    ] = None,
    style: Annotated[str | None, typer.Option(help="Task file: letter, option or cloze.")] = None,
    name: Annotated[str | None, typer.Option(help="Task file: the task's name.")] = None,
    description: Annotated[
        str | None, typer.Option(help="Task file: text before the k-shot examples.")
    ] = None,
    shots: Annotated[
        list[int] | None, typer.Option(help="Task file: list commands for these shots.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Task file: the model the commands name.")
    ] = None,
) -> None:
    """Write lm-eval task YAMLs and data so `lm_eval` scores the same prompts as kinject.

    A task file becomes one task (`--num_fewshot` on lm_eval's command line picks the first
    k dev examples, as kinject does).  A `kinject eval` or `kinject run` folder becomes one
    task per cell, with the exact retrieved context of each RAG question inside its prompt.
    DIR/manifest.json and DIR/README.md list every task, its model and its lm_eval command.

    Example:

        kinject export lm-eval runs/my-eval --out exports/my-eval
        kinject export lm-eval world/tasks/new.jsonl --dev world/tasks/dev.jsonl \\
            --shots 0 --shots 5 --model ./my-model --out exports/new
    """
    from kinject.export.lm_eval import export_lm_eval

    result = export_lm_eval(
        source,
        out,
        dev=dev,
        format=format,
        style=style,
        name=name,
        description=description,
        shots=tuple(shots) if shots else None,
        model=model,
    )
    for task in result.tasks:
        typer.echo(f"{task['name']}: {task['questions']} questions")
        for command in task["commands"].values():
            typer.echo(f"  {command}")
    for cell in result.skipped:
        typer.echo(f"not exported: {cell['model']} {cell['arm']} {cell['split']}: {cell['reason']}")
    typer.echo(f"wrote {result.out} (manifest.json, README.md)")


@probes_app.command("rename")
@user_errors
def probes_rename(
    corpus: Annotated[
        Path, typer.Argument(help="Plain text (split at blank lines) or a corpus JSONL.")
    ],
    rename: Annotated[
        list[str],
        typer.Option("--map", help="Old=New or 'Old -> New'; repeat for several entities."),
    ],
    templates: Annotated[Path, typer.Option(help="Probe template YAML.")],
    out: Annotated[Path, typer.Option(help="The folder to write (new, empty, or a rebuild).")],
    seed: Annotated[int, typer.Option(help="Shuffles each probe's choices.")] = 0,
    doc_chars: Annotated[
        int | None, typer.Option(help="Plain text: characters per document at most [2000].")
    ] = None,
    documents: Annotated[
        str,
        typer.Option(help="Keep 'all' documents, or only the 'mentions' of a renamed name."),
    ] = "all",
) -> None:
    """Rename entities in a corpus (Romeo -> Bob, ROMEO -> BOB, romeo -> bob) and write cloze
    and multiple-choice probes about them, once with each name, plus the unrenamed corpus.

    Writes `renamed.jsonl`, `original.jsonl`, `cloze_new/old.jsonl` (score with style cloze),
    `mc_new/old.jsonl` (style option), `cloze_dev/mc_dev.jsonl` when the templates have dev
    probes, `entities/<entity>/` and `probes.json` (replacements per form, counts, files).

    Example:

        kinject probes rename shared/data/tiny_shakespeare/input.txt --map Romeo=Bob \\
            --map Petruchio=Carl --templates examples/rename/probes.yaml --out probes/bob
    """
    from kinject.config import RenameConfig, parse_config
    from kinject.probes.rename import build_from_config

    fields = {
        "corpus": str(corpus),
        "map": rename,
        "templates": str(templates),
        "seed": seed,
        "documents": documents,
    }
    if doc_chars is not None:
        fields["doc_chars"] = doc_chars
    result = build_from_config(parse_config(RenameConfig, fields), out)
    manifest = result.manifest
    for old, done in manifest["replacements"].items():
        forms = ", ".join(f"{form}: {n}" for form, n in done["forms"].items())
        left = ", ".join(f"{word} ({n})" for word, n in list(done["untouched"].items())[:5])
        typer.echo(f"{old} -> {done['new']}: {done['total']} replaced ({forms})")
        if left:
            typer.echo(f"  left as they are: {left}")
    for name, about in manifest["files"].items():
        style = f", style {about['style']}" if "style" in about else ""
        typer.echo(f"  {name}: {about['records']} {about['kind']} records{style}")
    typer.echo(f"wrote {result.out} (probes.json, fingerprint {manifest['fingerprint']})")


@probes_app.command("facts")
@user_errors
def probes_facts(
    model: Annotated[
        str, typer.Option(help="The model whose knowledge is checked: folder, .gguf or preset.")
    ],
    out: Annotated[Path, typer.Option(help="The folder to write (new, or a rebuild).")],
    world: Annotated[
        Path | None,
        typer.Option(help="A 'kinject world build' folder: its first new people join in."),
    ] = None,
    n_new: Annotated[
        int, typer.Option(min=0, help="New (fictional) people taken from --world.")
    ] = 12,
    seed: Annotated[int, typer.Option(help="Options' order and the known/updated split.")] = 0,
) -> None:
    """A real model's own known and updated populations: built-in public facts (capitals,
    authors, languages, painters, elements, continents) asked closed book in two wordings;
    the ones it answers right in both are split into `known` (asked as they are) and
    `updated` (the knowledge base states a changed value), beside the world's new people.

    Writes `tasks/{known,updated,new,validation}.jsonl`, `corpus.jsonl` (the knowledge
    base), `paraphrases.jsonl`, `candidates.jsonl` (every fact, its log-likelihoods and
    whether it is known) and `facts.json` (counts per relation).

    Example:

        kinject world build --out world
        kinject probes facts --model smollm2-135m-instruct --world world --out facts
    """
    from kinject.probes.facts import build_facts

    manifest = build_facts(model, out, world, n_new, seed)
    for relation, counts in manifest["relations"].items():
        typer.echo(f"{relation}: {counts['known']} of {counts['asked']} known")
    counts = ", ".join(f"{name} {n}" for name, n in manifest["counts"].items())
    typer.echo(f"wrote {out} ({counts})")


@app.command()
@user_errors
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="`kinject run` folders.")],
    out: Annotated[
        Path | None, typer.Option(help="Also write the table here (.md or .csv).")
    ] = None,
) -> None:
    """One table across runs (e.g. the same grid on two base models), without any model.

    Example:

        kinject compare runs/mistral runs/llama --out comparison.md
    """
    from kinject.evaluation.report import _markdown, _rich
    from kinject.experiments.compare import comparison_rows
    from kinject.experiments.tables import _csv
    from kinject.fileio import write_text

    header, body = comparison_rows(run_dirs)
    _print(_rich("accuracy [95% CI] by run", header, body))
    if out is not None:
        if out.suffix == ".csv":
            write_text(out, _csv([dict(zip(header, row)) for row in body]))
        else:
            write_text(out, "\n".join(_markdown(header, body)) + "\n")
        typer.echo(f"wrote {out}")


# ---------------------------------------------------------------------------------------------
# kinject questions generate, kinject paraphrase: datasets built with a chat model

LLMFile = Annotated[
    Path | None,
    typer.Option("--llm", help="YAML with LLMConfig keys (endpoint, model, retries, cache …)."),
]
BaseUrl = Annotated[str | None, typer.Option(help="OpenAI-compatible API root (overrides --llm).")]
ModelName = Annotated[str | None, typer.Option("--model", help="Model name (overrides --llm).")]
LocalModel = Annotated[
    str | None, typer.Option(help="A local Hugging Face model folder instead of an endpoint.")
]
PromptsDir = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        help="Folder of edited prompt files (questions.txt, select.txt, "
        "paraphrase.txt); missing files keep the packaged ones.",
    ),
]


def _chat(llm: Path | None, base_url: str | None, model: str | None, local_path: str | None):
    from kinject.llm.client import llm_config, make_chat

    return make_chat(llm_config(llm, base_url=base_url, model=model, local_path=local_path))


@questions_app.command("generate")
@user_errors
def questions_generate(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base folder.")],
    out: Annotated[Path, typer.Option(help="The task JSONL to write.")],
    llm: LLMFile = None,
    base_url: BaseUrl = None,
    model: ModelName = None,
    local_path: LocalModel = None,
    prompts: PromptsDir = None,
    min_chars: Annotated[int, typer.Option(help="Only chunks at least this long.")] = 500,
    per_chunk: Annotated[int, typer.Option(help="Questions asked for per chunk.")] = 4,
    keep: Annotated[int, typer.Option(help="The most specific ones kept per chunk.")] = 2,
    min_support: Annotated[
        float, typer.Option(help="Share of the answer's content words that must be in the chunk.")
    ] = 0.5,
    max_chunks: Annotated[
        int | None, typer.Option(help="At most this many chunks (a seeded sample).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds requests, sampling and answer positions.")] = 0,
    answer_first: Annotated[
        bool,
        typer.Option(
            help="kinject picks each answer (a name, year or number of a sentence) and three "
            "distractors from the knowledge base; the model only phrases the question, and "
            "without a model the sentence with its answer blanked is the question. For small "
            "local models. --keep questions per chunk."
        ),
    ] = False,
) -> None:
    """Ask a chat model for 4 questions per chunk, keep the 2 most specific, validate, balance.

    The API key comes from $OPENAI_API_KEY (or the variable named by api_key_env in --llm).
    Rerun the same command after a kill: finished chunks are not asked again.

    Example (a small local model: kinject picks answers and distractors, the model phrases):

        kinject questions generate kb --out q.jsonl --answer-first \
            --local-path ~/.cache/kinject/models/gguf-b179c9523d0e6a0f98a3

    Example:

        kinject questions generate kb/docs --out tasks/generated.jsonl --model gpt-4o

    Example (any OpenAI-compatible server, settings in a file):

        kinject questions generate kb/docs --out tasks/generated.jsonl --llm llm.yaml \\
            --base-url http://localhost:8000/v1
    """
    from kinject.datasets.questions import QuestionOptions, generate_questions
    from kinject.llm.prompts import load_prompts

    options = QuestionOptions(min_chars, per_chunk, keep, min_support, seed)
    no_model = llm is None and base_url is None and model is None and local_path is None
    report = generate_questions(
        kb_dir,
        out,
        None if answer_first and no_model else _chat(llm, base_url, model, local_path),
        options,
        load_prompts(prompts),
        max_chunks=max_chunks,
        answer_first=answer_first,
    )
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"wrote {out}")


@app.command()
@user_errors
def paraphrase(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base folder.")],
    n: Annotated[int, typer.Option("--n", help="Paraphrases per chunk.")] = 10,
    out: Annotated[
        Path | None, typer.Option(help="Paraphrase JSONL (default: KB_DIR/paraphrases.jsonl).")
    ] = None,
    per_call: Annotated[int, typer.Option(help="Paraphrases asked for per call.")] = 5,
    max_calls: Annotated[
        int | None, typer.Option(help="Calls per chunk at most (default: 3 × those needed).")
    ] = None,
    min_chars: Annotated[int, typer.Option(help="Only chunks at least this long.")] = 0,
    validation_chunks: Annotated[
        int, typer.Option(help="Also build a validation task from this many chunks (0: none).")
    ] = 0,
    validation_paraphrases: Annotated[
        int, typer.Option(help="Fresh paraphrases per validation chunk.")
    ] = 2,
    validation_out: Annotated[
        Path | None,
        typer.Option(help="Validation task JSONL (default: KB_DIR/validation.jsonl)."),
    ] = None,
    validation_min_chars: Annotated[
        int, typer.Option(help="Validation chunks are at least this long.")
    ] = 500,
    llm: LLMFile = None,
    base_url: BaseUrl = None,
    model: ModelName = None,
    local_path: LocalModel = None,
    prompts: PromptsDir = None,
    seed: Annotated[
        int, typer.Option(help="Seeds each call's seed and the validation sample.")
    ] = 0,
) -> None:
    """Paraphrase every chunk n times (a new seed per call) for FT-par; optionally a validation task.

    The file is what `finetunes: {ft-par: {data: {corpus: KB_DIR, paraphrases:
    KB_DIR/paraphrases.jsonl, n_paraphrases: 10}}}` reads.  Rerun after a kill to resume.

    Example:

        kinject paraphrase kb/docs --n 10 --model gpt-4o

    Example (with the paper's validation set, 240 chunks × 2 paraphrases):

        kinject paraphrase kb/docs --n 10 --llm llm.yaml --validation-chunks 240 \\
            --validation-paraphrases 2
    """
    from kinject.datasets.paraphrases import (
        ParaphraseOptions,
        generate_paraphrases,
        generate_validation,
    )
    from kinject.datasets.questions import QuestionOptions
    from kinject.llm.prompts import load_prompts

    chat = _chat(llm, base_url, model, local_path)
    templates = load_prompts(prompts)
    out = out or kb_dir / "paraphrases.jsonl"
    options = ParaphraseOptions(n, per_call, min_chars, seed, max_calls)
    report = generate_paraphrases(kb_dir, out, chat, options, templates)
    if validation_chunks > 0:
        validation_out = validation_out or kb_dir / "validation.jsonl"
        report.validation_chunks = validation_chunks
        report.validation = generate_validation(
            kb_dir,
            validation_out,
            chat,
            validation_chunks,
            validation_paraphrases,
            QuestionOptions(min_chars=validation_min_chars, seed=seed),
            templates,
        )
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"wrote {out}")
    if validation_chunks > 0:
        typer.echo(f"wrote {validation_out}")


# ---------------------------------------------------------------------------------------------
# kinject kb …

Strict = Annotated[
    bool, typer.Option(help="Stop at the first bad file or record instead of skipping it.")
]
Include = Annotated[
    list[str] | None, typer.Option(help="Only files matching this glob (repeatable).")
]
Exclude = Annotated[
    list[str] | None, typer.Option(help="Skip files matching this glob (repeatable).")
]


def _source_options(strict: bool, include, exclude):
    from kinject.kb.store import SourceOptions

    return SourceOptions(strict, tuple(include or ()), tuple(exclude or ()))


def _print_change(change, verb: str) -> None:
    from kinject.kb.report import change_lines

    for line in change_lines(change, verb):
        typer.echo(line, err=line.startswith("warning:"))


@kb_app.command("build")
@user_errors
def kb_build(
    sources: Annotated[list[Path], typer.Argument(help="Folders (searched recursively) or files.")],
    out: Annotated[Path, typer.Option(help="The knowledge-base folder to create.")],
    config: Annotated[Path | None, typer.Option(help="YAML with KBConfig keys.")] = None,
    strict: Strict = False,
    include: Include = None,
    exclude: Exclude = None,
) -> None:
    """Ingest .txt .md .html .jsonl (corpus) .json (SQuAD) .pdf files, Wikipedia dumps
    (.xml, .xml.bz2) and WikiExtractor output (wiki_NN) into a new knowledge base.

    Example:

        kinject kb build docs/ notes.jsonl --out kb/docs --exclude 'drafts/*'
    """
    from kinject.config import KBConfig, load_config
    from kinject.kb.store import build_kb

    kb_config = load_config(KBConfig, config) if config else KBConfig()
    change = build_kb(sources, out, kb_config, _source_options(strict, include, exclude))
    _print_change(change, "built")
    typer.echo(f"knowledge base: {out}")


@kb_app.command("wikipedia")
@user_errors
def kb_wikipedia(
    out: Annotated[Path, typer.Option(help="The knowledge-base folder to create.")],
    page: Annotated[
        list[str] | None, typer.Option(help="A page title (repeatable); redirects are followed.")
    ] = None,
    category: Annotated[
        str | None, typer.Option(help="A category's name, with or without 'Category:'.")
    ] = None,
    depth: Annotated[
        int, typer.Option(help="Subcategory levels to include (0: the category's own pages).")
    ] = 0,
    config: Annotated[Path | None, typer.Option(help="YAML with KBConfig keys.")] = None,
    api_url: Annotated[
        str, typer.Option(help="The MediaWiki API endpoint (another language, another wiki).")
    ] = "https://en.wikipedia.org/w/api.php",
    user_agent: Annotated[
        str | None,
        typer.Option(help="User-Agent header; Wikimedia asks for a contact (URL or e-mail)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where API responses are cached; default: the kinject cache."),
    ] = None,
    skip_missing: Annotated[
        bool, typer.Option(help="Build without pages that do not exist (a warning each).")
    ] = False,
    refresh: Annotated[
        bool, typer.Option(help="Fetch again what is cached (pages change).")
    ] = False,
) -> None:
    """Fetch Wikipedia pages (plain-text extracts, by title or category) into a new knowledge base.

    Requests go one per second at most, are retried on rate limits and server errors, and are
    cached, so a second build fetches nothing.  For a local dump (pages-articles .xml.bz2) or
    WikiExtractor output (wiki_00 …), use `kinject kb build`.

    Example:

        kinject kb wikipedia --out kb/events --depth 1 \\
            --category "Category:2023 events in the United States by month"

        kinject kb wikipedia --page "Hurricane Idalia" --page "2023 Maui wildfires" --out kb/us
    """
    from kinject.config import KBConfig, load_config
    from kinject.sources.wikipedia import MediaWikiClient, WikipediaSource, build_wikipedia_kb

    build = build_wikipedia_kb(
        WikipediaSource(tuple(page or ()), category, depth),
        out,
        load_config(KBConfig, config) if config else KBConfig(),
        MediaWikiClient(api_url, user_agent, cache_dir=cache_dir, refresh=refresh),
        skip_missing=skip_missing,
    )
    for line in build.fetched.notes:
        typer.echo(line, err=True)
    _print_change(build.change, "built")
    typer.echo(f"knowledge base: {out} ({len(build.fetched.pages)} Wikipedia pages)")


@kb_app.command("add")
@user_errors
def kb_add(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base folder.")],
    sources: Annotated[list[Path], typer.Argument(help="Folders or files with new documents.")],
    strict: Strict = False,
    include: Include = None,
    exclude: Exclude = None,
) -> None:
    """Add new documents; only their chunks are embedded.

    Example:

        kinject kb add kb/docs new-notes/
    """
    from kinject.kb.store import add_documents

    _print_change(
        add_documents(kb_dir, sources, _source_options(strict, include, exclude)), "added"
    )


@kb_app.command("update")
@user_errors
def kb_update(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base folder.")],
    sources: Annotated[list[Path], typer.Argument(help="Folders or files, as they are now.")],
    strict: Strict = False,
    include: Include = None,
    exclude: Exclude = None,
) -> None:
    """Sync with SOURCES as they are now: new and changed documents in, vanished ones out.

    Only changed text is re-embedded.  Documents from other sources are kept.

    Example:

        kinject kb update kb/docs docs/
    """
    from kinject.kb.store import update_documents

    options = _source_options(strict, include, exclude)
    _print_change(update_documents(kb_dir, sources, options), "updated")


@kb_app.command("remove")
@user_errors
def kb_remove(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base folder.")],
    doc_ids: Annotated[list[str], typer.Argument(help="Document ids (as `kb search` shows).")],
    strict: Strict = False,
) -> None:
    """Remove documents by id.

    Example:

        kinject kb remove kb/docs guides/old-setup.md
    """
    from kinject.kb.store import remove_documents

    _print_change(remove_documents(kb_dir, doc_ids, _source_options(strict, None, None)), "removed")


@kb_app.command("search")
@user_errors
def kb_search(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base folder.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many chunks.")] = 5,
    retriever: Annotated[
        str, typer.Option(help="dense, bm25 or hybrid (the two fused).")
    ] = "dense",
    fusion: Annotated[
        str, typer.Option(help="Hybrid: rrf (weighted reciprocal-rank fusion) or convex.")
    ] = "convex",
    dense_weight: Annotated[float, typer.Option(help="Hybrid: the dense list's share.")] = 0.4,
    rerank: Annotated[str | None, _RERANK_OPTION] = None,
    rerank_depth: Annotated[int, _RERANK_DEPTH_OPTION] = 20,
) -> None:
    """Print the top-k chunks for a query, with scores.

    Example:

        kinject kb search kb/docs "how do I reset my password" -k 5 --retriever hybrid
        kinject kb search kb/docs "reset password" --rerank cross-encoder/ms-marco-MiniLM-L-6-v2
    """
    from kinject.kb.report import search_table
    from kinject.kb.retrievers import Fusion
    from kinject.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(kb_dir)
    reranker = _reranker(rerank, rerank_depth)
    hits = kb.retriever(retriever, Fusion(fusion, dense_weight), reranker).search([query], k)[0]
    _print(search_table(kb, query, hits))


@kb_app.command("eval")
@user_errors
def kb_eval(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base folder.")],
    questions: Annotated[
        Path,
        typer.Option(
            help="Questions with gold doc_ids: kinject JSONL (MC or open QA) or SQuAD JSON."
        ),
    ],
    retriever: Annotated[
        list[str] | None, typer.Option(help="Retrievers to compare (default: all three).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the figures to this JSON.")] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            help="Other questions (same formats) to choose hybrid's fusion on: RRF or convex, "
            "dense weight 0.1 … 0.9, by MRR@20."
        ),
    ] = None,
    fusion: Annotated[
        str, typer.Option(help="Hybrid without --validation: rrf or convex.")
    ] = "convex",
    dense_weight: Annotated[
        float, typer.Option(help="Hybrid without --validation: the dense list's share.")
    ] = 0.4,
    rerank: Annotated[str | None, _RERANK_OPTION] = None,
    rerank_depth: Annotated[int, _RERANK_DEPTH_OPTION] = 20,
) -> None:
    """Retrieval quality: recall@1/5/20 and MRR@20 per retriever, with 95% CIs.

    Example:

        kinject kb eval kb/squad --questions data/squad/dev-v1.1.json
        kinject kb eval kb/docs --questions test.jsonl --validation validation.jsonl
    """
    from kinject.kb.quality import evaluate_kb
    from kinject.kb.report import fusion_grid_table, quality_table
    from kinject.kb.retrievers import Fusion

    given = None if validation is not None else Fusion(fusion, dense_weight)
    results = evaluate_kb(
        kb_dir,
        questions,
        retriever or ["dense", "bm25", "hybrid"],
        out,
        fusion=given,
        validation=validation,
        rerank=_reranker(rerank, rerank_depth),
    )
    if validation is not None:
        _print(fusion_grid_table(results.fusion_grid, f"hybrid's fusion on {validation.name}"))
    _print(quality_table(results.rows, f"retrieval on {questions.name}"))
    typer.echo(results.note)
    if validation is not None and results.fusion is not None:
        chosen = results.fusion
        typer.echo(
            f"hybrid fuses by {chosen.describe()} (chosen on {validation.name}); in an "
            f"experiment: rag: {{retriever: hybrid, fusion: {chosen.kind}, dense_weight: "
            f"{chosen.dense_weight:g}}}"
        )


_RERANK_OPTION = typer.Option(
    help="A sentence-transformers CrossEncoder (folder or hub id) that reorders the top chunks."
)
_RERANK_DEPTH_OPTION = typer.Option(help="With --rerank: first-stage chunks it reads.")


def _reranker(model: str | None, depth: int):
    from kinject.kb.rerank import RerankConfig

    return None if model is None else RerankConfig(model=model, depth=depth)


def _warn(line: str) -> None:
    typer.echo(f"warning: {line}", err=True)


def _print(renderable) -> None:
    from kinject.progress import output_console

    output_console().print(renderable)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
