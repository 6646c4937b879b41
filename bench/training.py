"""Training throughput: kinject's packed blocks against padded per-document batches.

    python bench/training.py                          # demo + llama-30m, demo-kb + shakespeare
    python bench/training.py --smoke                  # the quick demo's model and kb, 4 steps
    python bench/training.py --models demo --data squad --steps 20 --fp32
    python bench/training.py --models tiny=path/to/model --data notes=notes.jsonl
    python bench/training.py --models smollm2 --data squad --steps 4 --batch-size 8 --method lora

Both variants train the same model, from the same weights, through kinject's one training
loop (`kinject.training.loop.train`, bf16 autocast where the device does bf16 in hardware,
else fp32: --bf16 / --fp32 force it; constant learning rate),
on the same real tokens in the same order:

  packed   kinject's continued-pretraining path: the documents of each epoch (TrainingSet,
           shuffled per epoch) as `<s> text </s>` packed into blocks of --block-size tokens
           (PackedBlocks, documents isolated by a block-diagonal mask unless --no-isolate),
           --batch-size blocks per step, --steps steps;
  padded   the usual Hugging Face way: every document its own row, right-padded to the
           longest row of its batch (attention mask 0 and label -100 on padding),
           --batch-size rows per step.  It gets exactly the tokens the packed run trained on:
           the same documents in the same order, the tail of an epoch that fills no block
           dropped, a document longer than a block cut into rows of --block-size tokens, so
           the real-token counts match (checked by a hash of the token stream).

Data (--data): demo-kb, the demo world's knowledge-base chunks (43-61 tokens: little
padding); shakespeare, the speeches of tiny-shakespeare (1 to ~1,800 tokens: much padding);
squad, the 2,067 SQuAD v1.1 dev paragraphs; or NAME=PATH, a corpus JSONL, a knowledge-base
folder or a .txt file of blank-line-separated paragraphs.  Models (--models): demo, the
demo's tiny base model (pretrained and cached by `kinject demo`; built here if missing);
llama-30m, a ~30M-parameter Llama built from a config with the demo's tokenizer (random
weights: throughput does not need trained ones); smollm2, SmolLM2-135M-Instruct (the
smollm2-135m-instruct preset's converted folder); or NAME=DIR, any local causal LM folder.
--method full trains every weight; --method lora a fresh rank-16 adapter on q/k/v/o_proj
(kinject's prepare_model, as `kinject finetune` builds it).

FLOP/s / peak: the real tokens per second times the FLOPs a token takes (forward
2 x parameters, the activations' gradients 2 x parameters, the trained weights' gradients 2 x
trained parameters: 6N for full training, about 4N for LoRA; attention's own FLOPs left out),
over the matmul peak of the training's precision (bf16 with autocast, else fp32) measured
first with the same thread count.

Each variant runs in a fresh subprocess, so peak memories do not mix: on CPU the growth of
the process's resident set during training over its size just before (optimizer state,
gradients, activations; the kernel's high-water mark, or psutil sampled every 10 ms when
that mark was set before training), on CUDA torch.cuda.max_memory_allocated.  Before the
clock starts, one untimed forward and backward pass of the first batch (its gradients
dropped, the weights untouched) sets up kernels and the allocator.  Seconds are the training
loop's (batch building included): wall-clock, and the process's CPU time.  Tokens/s use
CPU time on a CPU with --threads 1 (the default), since one thread's CPU time is the time
it ran however busy the machine's other cores are; wall-clock otherwise.  Shared data is
read from $KINJECT_SHARED_DATA, else ../shared/data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_MODELS = ("demo", "llama-30m", "smollm2")
BUILTIN_DATA = ("demo-kb", "shakespeare", "squad")
DEFAULTS = {
    "batch_size": 16,
    "models": ["demo", "llama-30m"],
    "data": ["demo-kb", "shakespeare"],
}
SMOKE = {"steps": 4, "batch_size": 4, "models": ["demo"], "data": ["demo-kb"]}
# Packed optimizer steps by model when --steps is not given (the default run: ~10 min on 2 cores).
DEFAULT_STEPS = {"demo": 16, "llama-30m": 5}
OTHER_MODEL_STEPS = 8
LEARNING_RATE = 1e-4
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]  # --method lora: rank 16 on these


# ---------------------------------------------------------------------------------------
# The padded per-document baseline (a baseline, not a product feature: it lives here).


class PaddedDocuments:
    """The tokens a packed run of ``tokens`` tokens trains on, one document per row.

    ``documents_for_epoch`` and the tokenizer are the packed run's, and rows are taken the
    way :class:`~kinject.models.packing.PackedBlocks` fills its blocks, so the real tokens,
    row after row, are the packed blocks' tokens end to end::

        packed   | <s> a b </s> <s> c d | e </s> <s> f </s> ... |    blocks of block_size
        padded   | <s> a b </s> pad pad |                        rows of at most block_size
                 | <s> c d e </s>  pad  |
                 | <s> f </s> pad  pad  |

    Per epoch only the first ``block_size * (stream // block_size)`` tokens are used (packing
    drops the tail that fills no block); the last document is cut where ``tokens`` runs out;
    a document longer than ``block_size`` becomes several rows (truncating it, as a usual
    padded pipeline would, would train on fewer tokens).  ``batch_for(step)`` is a pure
    function of the step, as the training loop requires.
    """

    def __init__(
        self,
        tokenizer,
        documents_for_epoch: Callable[[int], Sequence],
        tokens: int,
        block_size: int,
        batch_size: int,
    ):
        from kinject.models.packing import TrainingDocument

        if tokens <= 0:
            raise ValueError(f"tokens must be positive, not {tokens}")
        self.block_size = block_size
        self.batch_size = batch_size
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.rows: list[list[int]] = []
        remaining, epoch = tokens, 0
        while remaining:
            documents = documents_for_epoch(epoch)
            texts = []
            for document in documents:
                if isinstance(document, TrainingDocument):
                    if document.loss_spans is not None:
                        raise ValueError("padded baseline: documents with loss spans")
                    document = document.text
                texts.append(document)
            encoded = tokenizer(texts, add_special_tokens=False).input_ids
            sequences = [[bos, *ids, eos] for ids in encoded]
            usable = sum(map(len, sequences)) // block_size * block_size
            if usable == 0:
                raise ValueError(f"epoch {epoch} has fewer than {block_size} tokens")
            budget = min(usable, remaining)
            remaining -= budget
            for sequence in sequences:
                if budget == 0:
                    break
                sequence = sequence[:budget]
                budget -= len(sequence)
                self.rows += [
                    sequence[i : i + block_size] for i in range(0, len(sequence), block_size)
                ]
            epoch += 1

    @property
    def steps(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def batch_for(self, step: int) -> dict:
        import torch

        from kinject.models.packing import IGNORE_INDEX

        rows = self.rows[step * self.batch_size : (step + 1) * self.batch_size]
        if not rows:
            raise IndexError(f"step {step}: the padded baseline has {self.steps} steps")
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[index, : len(row)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def real_tokens(batch: dict):
    """The non-padding input tokens of a batch, row after row (1-D)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:  # packed: no padding (a 4-D mask isolates documents)
        return batch["input_ids"].reshape(-1)
    return batch["input_ids"][mask.bool()]


def token_stream(batch_for: Callable[[int], dict], steps: int) -> dict:
    """``{real, total, sha256}`` of the tokens ``steps`` batches feed the model."""
    digest = hashlib.sha256()
    real = total = 0
    for step in range(steps):
        batch = batch_for(step)
        tokens = real_tokens(batch)
        digest.update(tokens.numpy().astype("<i8").tobytes())
        real += int(tokens.numel())
        total += int(batch["input_ids"].numel())
    return {"real": real, "total": total, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------------------
# One variant, in its own process.


class _PeakRSS:
    """Peak resident set while the block runs, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01):
        import psutil  # installed with accelerate

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _max_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def _warm_up(model, batch: dict, bf16: bool) -> None:
    """One forward and backward pass, untimed, the weights untouched: kernels, allocator
    and autocast set up before the clock starts (the gradients are dropped)."""
    from kinject.training.loop import autocast_context

    device = next(model.parameters()).device
    model.train()
    with autocast_context(device.type, bf16):
        model(**{key: value.to(device) for key, value in batch.items()}).loss.backward()
    model.zero_grad(set_to_none=True)


def run_variant(spec: dict) -> dict:
    """Train one variant as ``spec`` says; return its figures."""
    import psutil
    import torch

    from kinject.config import FinetuneConfig, LoraConfig, ModelSpec, TrainingData
    from kinject.models.packing import PackedBlocks
    from kinject.training.data import TrainingSet
    from kinject.training.finetune import prepare_model
    from kinject.training.loop import Schedule, train

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model, tokenizer = prepare_model(
        FinetuneConfig(
            model=ModelSpec(path=spec["model"], device=spec["device"]),
            data=TrainingData(corpus=spec["corpus"]),
            method=spec["method"],
            lora=LoraConfig(rank=16, alpha=32.0, target_modules=LORA_MODULES),
        )
    )
    block, batch_size = spec["block_size"], spec["batch_size"]
    training = TrainingSet(TrainingData(corpus=spec["corpus"], block_size=block), spec["seed"])
    packed = PackedBlocks(tokenizer, training.for_epoch, block, batch_size, spec["isolate"])
    packed.blocks_in_epoch(0)  # as kinject finetune does before training: epoch 0 tokenized
    if spec["variant"] == "packed":
        batch_for, steps = packed.batch_for, spec["steps"]
    else:
        tokens = spec["steps"] * batch_size * block
        padded = PaddedDocuments(tokenizer, training.for_epoch, tokens, block, batch_size)
        batch_for, steps = padded.batch_for, padded.steps
    stream = token_stream(batch_for, steps)
    cuda = next(model.parameters()).device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before, max_rss_before = psutil.Process().memory_info().rss, _max_rss_bytes()
    with _PeakRSS() as sampled:
        _warm_up(model, batch_for(0), spec["bf16"])
        if cuda:
            torch.cuda.synchronize()
        cpu_started = time.process_time()
        result = train(
            model,
            batch_for,
            Schedule(steps=steps, learning_rate=LEARNING_RATE, kind="constant"),
            bf16=spec["bf16"],
            log_every=steps,
            description=f"{spec['variant']} training",
            show_progress=False,
        )
        if cuda:
            torch.cuda.synchronize()
        cpu_seconds = time.process_time() - cpu_started
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        max_rss = _max_rss_bytes()
        peak = max_rss if max_rss > max_rss_before else sampled.peak
        peak, kind = peak - rss_before, "growth of the process's resident set"
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "variant": spec["variant"],
        "method": spec["method"],
        "params": params,
        # forward 2N, gradients of the activations 2N, of the trained weights 2 × trained
        "flops_per_token": 4 * params + 2 * trainable,
        "documents": len(training.documents),
        "steps": steps,
        "real_tokens": stream["real"],
        "total_tokens": stream["total"],
        "sha256": stream["sha256"],
        "wall_seconds": result.seconds,
        "cpu_seconds": cpu_seconds,
        "final_loss": result.final_loss,
        "peak_mib": peak / 2**20,
        "peak_kind": kind,
    }


def _child(spec_json: str) -> None:
    from kinject.fileio import write_json

    spec = json.loads(spec_json)
    write_json(spec["out"], run_variant(spec))


def measure(spec: dict, scratch: Path) -> dict:
    """:func:`run_variant` in a fresh Python process (its own peak memory)."""
    out = scratch / f"result-{os.getpid()}-{time.monotonic_ns()}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps({**spec, "out": str(out)}),
    ]
    done = subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(
            f"the {spec['variant']} run of {spec['model']} on {spec['corpus']} failed "
            f"(exit {done.returncode}; its error is above)"
        )
    return json.loads(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# Models, data, the table.


def _scoring_helpers():
    """bench/scoring.py (demo_world, config_llama), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kinject_bench_scoring", Path(__file__).with_name("scoring.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data() -> Path:
    explicit = os.environ.get("KINJECT_SHARED_DATA")
    return Path(explicit) if explicit else ROOT.parent / "shared" / "data"


def _named(entry: str, builtin: Sequence[str], what: str) -> tuple[str, str | None]:
    """``name`` (a built-in) or ``NAME=PATH``."""
    if "=" in entry:
        name, path = entry.split("=", 1)
        if not name or not Path(path).exists():
            raise SystemExit(f"--{what} {entry}: expected NAME=PATH with an existing PATH")
        return name, path
    if entry not in builtin:
        raise SystemExit(f"--{what} {entry}: one of {', '.join(builtin)}, or NAME=PATH")
    return entry, None


def write_corpus(name: str, texts: Sequence[str], folder: Path) -> str:
    """A corpus JSONL of ``texts`` (one document each) in ``folder``."""
    from kinject.fileio import write_jsonl

    path = folder / f"{name}.jsonl"
    write_jsonl(path, ({"id": f"{name}-{i:05d}", "text": t} for i, t in enumerate(texts)))
    return str(path)


def corpus_path(name: str, path: str | None, world, scratch: Path) -> str:
    """What TrainingData.corpus takes (a corpus JSONL or a knowledge-base folder)."""
    from kinject.training.data import load_replay

    if path is not None:
        if path.endswith(".txt"):
            return write_corpus(name, load_replay(path), scratch)
        return path
    if name == "demo-kb":
        return world()["world_kb"]
    if name == "shakespeare":
        source = shared_data() / "tiny_shakespeare" / "input.txt"
        if not source.exists():
            raise SystemExit(f"{source} not found; set KINJECT_SHARED_DATA")
        return write_corpus(name, load_replay(source), scratch)
    source = shared_data() / "squad_v1.1_dev" / "dev-v1.1.json"
    if not source.exists():
        raise SystemExit(f"{source} not found; set KINJECT_SHARED_DATA")
    squad = json.loads(source.read_text(encoding="utf-8"))
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    return write_corpus(name, list(dict.fromkeys(contexts)), scratch)


def model_path(name: str, path: str | None, world, scratch: Path) -> str:
    if path is not None:
        return path
    if name == "demo":
        return world()["world_model"]
    if name == "smollm2":
        from kinject.config import ModelSpec
        from kinject.models.gguf import materialized

        return materialized(ModelSpec(path="smollm2-135m-instruct")).path
    return str(_scoring_helpers().config_llama(world()["world_model"], scratch / name, name))


def _size(params: int) -> str:
    return f"{params / 1e6:.1f}M" if params >= 1e5 else f"{params / 1e3:.0f}K"


def table(rows: list[tuple[str, str, dict, dict]], clock: str, peak: float) -> str:
    """One row per variant; real tokens per second of ``clock`` (``wall`` or ``cpu``); the
    FLOP/s those tokens take as a share of ``peak`` (the matmul peak); the packed /
    padded ratio of that rate on each packed row."""

    def rate(row: dict) -> float:
        return row["real_tokens"] / row[f"{clock}_seconds"]

    header = (
        "| model | params | method | data | documents | variant | steps | real tokens "
        f"| padding | wall s | CPU s | real tokens/s ({clock}) | FLOP/s / peak | peak MiB "
        "| packed / padded tokens/s |"
    )
    lines = [header, "|---" * 15 + "|"]
    for model, data, packed, padded in rows:
        ratio = rate(packed) / rate(padded)
        for row in (packed, padded):
            padding = 1 - row["real_tokens"] / row["total_tokens"]
            share = rate(row) * row["flops_per_token"] / peak
            lines.append(
                f"| {model} | {_size(row['params'])} | {row['method']} | {data} "
                f"| {row['documents']:,} | {row['variant']} | {row['steps']} "
                f"| {row['real_tokens']:,} | {padding:.1%} | {row['wall_seconds']:.1f} "
                f"| {row['cpu_seconds']:.1f} | {rate(row):,.0f} | {share:.1%} "
                f"| {row['peak_mib']:.0f} | {f'{ratio:.2f}x' if row is packed else ''} |"
            )
    return "\n".join(lines)


def matmul_peak(threads: int, device: str, bf16: bool) -> float:
    """The matmul peak (bench/scoring.py's) in the training's precision, with the variants'
    thread count."""
    import torch

    dtype = "bfloat16" if bf16 else "float32"
    if device != "cpu":
        return _scoring_helpers().matmul_peak(dtype, device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _scoring_helpers().matmul_peak(dtype)
    finally:
        torch.set_num_threads(before)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", help="demo, llama-30m or NAME=DIR (default: demo llama-30m)"
    )
    parser.add_argument(
        "--data",
        nargs="+",
        help="demo-kb, shakespeare, squad or NAME=PATH (default: demo-kb shakespeare)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="packed optimizer steps (default: demo 16, llama-30m 5, other models 8; smoke 4)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="blocks (packed) or rows (padded) per step (default 16)"
    )
    parser.add_argument("--block-size", type=int, default=256, help="tokens per packed block")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--bf16",
        dest="bf16",
        action="store_true",
        default=None,
        help="bf16 autocast (default where the device does bf16 in hardware, as kinject "
        "finetune's bf16: auto)",
    )
    precision.add_argument("--fp32", dest="bf16", action="store_false", help="no autocast")
    parser.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="packed documents attend to each other (kinject's default isolates them)",
    )
    parser.add_argument(
        "--method",
        choices=["full", "lora"],
        default="full",
        help="full: every weight; lora: rank-16 adapters on q/k/v/o_proj (default full)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per run (default 1: steady when other work shares the cores; "
        "0: torch's default, one per core)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the documents' order per epoch")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="4 steps of 4 blocks, the demo model on demo-kb, unless told otherwise (< 1 min)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = SMOKE if args.smoke else DEFAULTS
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if (
        (args.steps is not None and args.steps < 1)
        or args.batch_size < 1
        or args.block_size < 2
        or args.threads < 0
    ):
        parser.error(
            "--steps and --batch-size must be at least 1, --block-size at least 2, "
            "--threads at least 0"
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child is not None:
        _child(args.child)
        return
    models = [_named(entry, BUILTIN_MODELS, "models") for entry in args.models]
    data = [_named(entry, BUILTIN_DATA, "data") for entry in args.data]
    for what, named in (("models", models), ("data", data)):
        names = [name for name, _ in named]
        if len(set(names)) < len(names):
            raise SystemExit(f"--{what}: a name is given twice ({', '.join(names)})")
    cache: dict[str, dict] = {}

    def world() -> dict:
        if "world" not in cache:
            cache["world"] = _scoring_helpers().demo_world(quick=args.smoke)
        return cache["world"]

    from kinject.models.loading import resolve_device
    from kinject.training.loop import resolve_bf16

    device = resolve_device(args.device)
    if args.bf16 is None:
        args.bf16 = resolve_bf16("auto", device)
    peak = matmul_peak(args.threads, device, args.bf16)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kinject-bench-training-") as folder:
        scratch = Path(folder)
        corpora = {name: corpus_path(name, path, world, scratch) for name, path in data}
        for model_name, path in models:
            model = model_path(model_name, path, world, scratch)
            for data_name, corpus in corpora.items():
                spec = {
                    "model": model,
                    "corpus": corpus,
                    "steps": args.steps or DEFAULT_STEPS.get(model_name, OTHER_MODEL_STEPS),
                    "batch_size": args.batch_size,
                    "block_size": args.block_size,
                    "bf16": args.bf16,
                    "isolate": args.isolate,
                    "device": device,
                    "threads": args.threads,
                    "seed": args.seed,
                    "method": args.method,
                }
                packed = measure({**spec, "variant": "packed"}, scratch)
                padded = measure({**spec, "variant": "padded"}, scratch)
                if (packed["real_tokens"], packed["sha256"]) != (
                    padded["real_tokens"],
                    padded["sha256"],
                ):
                    raise RuntimeError(
                        f"{model_name} on {data_name}: the padded baseline did not train on the "
                        f"packed run's tokens ({padded['real_tokens']:,} real tokens, sha256 "
                        f"{padded['sha256'][:12]}, against {packed['real_tokens']:,}, "
                        f"{packed['sha256'][:12]})"
                    )
                rows.append((model_name, data_name, packed, padded))
                print(f"done: {model_name} {data_name}", file=sys.stderr)
    # One thread on a CPU: its CPU time is the time it ran, however busy the other cores are.
    clock = "cpu" if device == "cpu" and args.threads == 1 else "wall"
    print(
        f"device {device}, threads {args.threads or 'default'}, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, batch {args.batch_size}, "
        f"block {args.block_size}, documents {'isolated' if args.isolate else 'not isolated'} "
        f"in packed blocks, lr {LEARNING_RATE:g} constant; peak MiB: "
        f"{rows[0][2]['peak_kind']} during training; the same real tokens in both variants "
        "(same sha256)"
    )
    precision = "bf16" if args.bf16 else "fp32"
    threads = args.threads or "default"
    print(f"{precision} matmul peak ({threads} threads): {peak / 1e9:.1f} GFLOP/s")
    print(table(rows, clock, peak))


if __name__ == "__main__":
    main()
