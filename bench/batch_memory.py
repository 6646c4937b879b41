"""The memory a scoring forward pass takes, measured, against the estimate that sizes batches
under a memory budget (`scoring.batch_size: auto`, `scoring.memory_budget_gb`).

    python bench/batch_memory.py                 # a ~30M-parameter Llama, a few widths
    python bench/batch_memory.py --rows 1 8 32   # other batch sizes
    python bench/batch_memory.py --smoke         # seconds: a 2-layer Llama, two passes

Each measurement runs in a fresh process: the model is loaded and run once on one short row
(warm-up), then one forward pass of ROWS × WIDTH tokens (after CACHED tokens in a key/value
cache, as prefix sharing runs them); the pass's memory is the growth of the process's peak
resident set (CPU), or of torch.cuda.max_memory_allocated on a GPU. The estimate
(kinject.scoring.batching.activation_bytes) should be at least the measurement: a budget
then holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, torch
from transformers import AutoModelForCausalLM, DynamicCache
from kinject.scoring.batching import activation_bytes

folder, rows, width, cached, device = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
vocab = model.config.vocab_size
with torch.inference_mode():
    model(torch.randint(0, vocab, (1, 8), device=device), use_cache=False)
    prefix = None
    if cached:
        out = model(torch.randint(0, vocab, (1, cached), device=device), use_cache=True)
        prefix = [(l.keys, l.values) for l in out.cache.layers]
    ids = torch.randint(0, vocab, (rows, width), device=device)
    def peak():
        if device == "cuda":
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak()
    kwargs = {"use_cache": False}
    if prefix:
        data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix]
        kwargs = {"use_cache": True, "cache": DynamicCache(data)}
    logits = model(input_ids=ids, **kwargs).logits
    torch.log_softmax(logits.float(), dim=-1)
    if device == "cuda":
        torch.cuda.synchronize()
    measured = peak() - before
print(json.dumps({"measured": measured,
                  "estimated": rows * activation_bytes(model.config, width, cached)}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--cached", type=int, nargs="+", default=[0, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--smoke", action="store_true", help="the quick demo's tokenizer, a 2-layer Llama, 2 passes"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.widths, args.cached = [2], [32], [0, 32]
    sys.path.insert(0, str(ROOT))
    from scoring import config_llama, demo_world

    world = demo_world(quick=args.smoke)
    print("| rows | width | cached | measured MB | estimated MB | estimate / measured |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="kinject-bench-") as scratch:
        name = "llama-smoke" if args.smoke else "llama-30m"
        folder = config_llama(world["world_model"], Path(scratch) / name, name)
        for cached in args.cached:
            for width in args.widths:
                for rows in args.rows:
                    command = [sys.executable, "-c", CHILD, str(folder), str(rows), str(width)]
                    command += [str(cached), args.device]
                    result = subprocess.run(command, capture_output=True, text=True, check=True)
                    row = json.loads(result.stdout.strip().splitlines()[-1])
                    measured, estimated = row["measured"] / 2**20, row["estimated"] / 2**20
                    print(
                        f"| {rows} | {width} | {cached} | {measured:.0f} | {estimated:.0f} "
                        f"| {estimated / max(measured, 1e-9):.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
