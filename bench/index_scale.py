"""FAISS indexes at scale: build time, memory and size, query throughput and recall, one table.

N random 384-d float32 vectors (seeded, normalised to unit length, as kinject's embedders
return them) are written to an ``embeddings.npy``; each index kind is then built from that
file by kinject's own code (``kinject.kb.indexes.build_dense_index_from_file``, what `kinject
kb build` runs) in a fresh process, so the peaks of one build do not hide those of another:

- flat: exact inner product (kinject's default; the reference for recall);
- hnsw: M=32, efConstruction 40 (FAISS's default, which kinject keeps), efSearch swept;
- ivf: nlist = 4 * sqrt(N) (kinject lowers it to N/39 for small N), nprobe swept; kinject
  trains it on every vector it is given, and FAISS samples at most 256 per cell of those;
- ivf-pq (``--pq``): IVF with 48-byte product-quantised codes, built with FAISS directly:
  not an index kind of kinject, shown for what it would save.

Per index: build seconds (reading the file included), index bytes (``faiss.serialize_index``),
the growth of the build process's peak RSS during the build (the kernel's high-water mark,
reset before it), and for each search setting 1,000 queries (random unit vectors, one batch,
k=10): queries per second and recall@10 against the flat index's exact top 10.  Random
vectors have no clusters, which is the worst case for HNSW and IVF recall: real embeddings
score higher at the same settings.  FAISS uses 2 threads unless ``--threads`` says otherwise.

    python bench/index_scale.py --pq             # N = 1,000,000: 24 minutes on 2 busy cores
    python bench/index_scale.py --smoke          # N = 2,000, 100 queries: seconds
    python bench/index_scale.py --n 200000 --pq --out bench/results/index_scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIM = 384
BLOCK = 65_536  # vectors generated per step
HNSW_EF = (16, 64, 256)
IVF_NPROBE = (1, 8, 32)
PQ_BYTES = 48
MB = 1_000_000


# --------------------------------------------------------------------------- data


def write_vectors(path: Path, n: int, seed: int) -> None:
    """``n`` random unit vectors as a float32 ``[n, 384]`` .npy file, made a block at a time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for first in range(0, n, BLOCK):
        block = rng.standard_normal((min(BLOCK, n - first), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[first : first + len(block)] = block
    out.flush()
    del out


# --------------------------------------------------------------------------- one build


def memory(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak since the last reset) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {field}: this benchmark needs Linux")


def reset_peak() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux 4.0 and later)."""
    Path("/proc/self/clear_refs").write_text("5")


def build(kind: str, vectors: Path, nlist: int):
    """The index of ``kind`` over the vectors in ``vectors``, and its IndexConfig."""
    from kinject.config import IndexConfig
    from kinject.kb.indexes import build_dense_index_from_file

    if kind == "ivf-pq":
        return build_ivf_pq(vectors, nlist), None
    config = IndexConfig(kind=kind, ivf_nlist=nlist)
    return build_dense_index_from_file(vectors, config), config


def build_ivf_pq(vectors: Path, nlist: int):
    """FAISS's IVF-PQ with kinject's IVF rules (cells, training on every vector)."""
    import faiss
    import numpy as np

    data = np.load(vectors)
    nlist = max(1, min(nlist, len(data) // 39))
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFPQ(quantizer, DIM, nlist, PQ_BYTES, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(data)
    index.add(data)
    index.referenced_objects = [quantizer]
    return index


def settings(kind: str, config) -> list[tuple[str, object]]:
    """(label, IndexConfig or nprobe) for each search setting of ``kind``."""
    if kind == "hnsw":
        return [
            (f"efSearch={ef}", config.model_copy(update={"hnsw_ef_search": ef})) for ef in HNSW_EF
        ]
    if kind == "ivf":
        return [(f"nprobe={p}", config.model_copy(update={"ivf_nprobe": p})) for p in IVF_NPROBE]
    if kind == "ivf-pq":
        return [(f"nprobe={p}", p) for p in IVF_NPROBE]
    return [("exact", config)]


def worker(args) -> None:
    """Build one index in this process and print its figures as one JSON line."""
    import faiss
    import numpy as np

    from kinject.kb.indexes import set_search_breadth

    faiss.omp_set_num_threads(args.threads)
    queries = np.load(args.queries)
    before = memory("VmRSS")
    reset_peak()
    started = time.perf_counter()
    index, config = build(args.worker, args.vectors, args.nlist)
    seconds = time.perf_counter() - started
    growth = memory("VmHWM") - before
    size = faiss.serialize_index(index).nbytes
    truth = np.load(args.truth) if args.worker != "flat" else None
    rows = []
    for label, setting in settings(args.worker, config):
        if args.worker == "ivf-pq":
            faiss.extract_index_ivf(index).nprobe = setting
        else:
            set_search_breadth(index, setting)
        started = time.perf_counter()
        _, found = index.search(queries, args.k)
        search_seconds = time.perf_counter() - started
        if truth is None:  # the flat index is exact: its answers are the reference
            truth = found
            np.save(args.truth, found)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth)])
        rows.append({"search": label, "qps": len(queries) / search_seconds, "recall": recall})
    print(
        json.dumps(
            {
                "kind": args.worker,
                "build_s": seconds,
                "bytes": size,
                "growth": growth,
                "params": describe(args.worker, index),
                "searches": rows,
            }
        )
    )


def describe(kind: str, index) -> str:
    import faiss

    if kind == "hnsw":
        hnsw = faiss.downcast_index(index).hnsw
        return f"M=32, efConstruction={hnsw.efConstruction}"
    if kind in ("ivf", "ivf-pq"):
        ivf = faiss.extract_index_ivf(index)
        extra = f", PQ {PQ_BYTES} bytes" if kind == "ivf-pq" else ""
        return f"nlist={ivf.nlist}{extra}"
    return "inner product"


# --------------------------------------------------------------------------- the run


def run_worker(kind: str, args, vectors: Path, queries: Path, truth: Path, nlist: int) -> dict:
    command = [
        sys.executable, __file__, "--worker", kind, "--vectors", str(vectors),
        "--queries", str(queries), "--truth", str(truth), "--nlist", str(nlist),
        "--threads", str(args.threads), "--k", str(args.k),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"building {kind} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    head = "| index | parameters | search | build s | index MB | build RSS growth MB | queries/s |"
    lines = [head + " recall@10 |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for number, search in enumerate(result["searches"]):
            first = number == 0
            build = (
                f"{result['build_s']:.1f} | {result['bytes'] / MB:.0f} | {result['growth'] / MB:.0f}"
                if first
                else " | | "
            )
            name = result["kind"] if first else ""
            params = result["params"] if first else ""
            lines.append(
                f"| {name} | {params} | {search['search']} | {build} | {search['qps']:,.0f} "
                f"| {search['recall']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python bench/index_scale.py --smoke",
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="Vectors (1,000,000).")
    parser.add_argument("--smoke", action="store_true", help="N = 2,000, 100 queries: seconds.")
    parser.add_argument("--queries-n", type=int, default=1_000, help="Queries (1,000).")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads (2).")
    parser.add_argument("--pq", action="store_true", help="Also IVF-PQ (FAISS, not kinject).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="Where the vectors go (default: a temp dir).")
    parser.add_argument("--out", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--truth", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nlist", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.smoke:
        args.queries_n = 100
    n = 2_000 if args.smoke else args.n
    nlist = round(4 * math.sqrt(n))
    kinds = ["flat", "hnsw", "ivf"] + (["ivf-pq"] if args.pq else [])
    with tempfile.TemporaryDirectory(prefix="index-scale-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        vectors, queries, truth = (folder / name for name in ("embeddings.npy", "q.npy", "t.npy"))
        started = time.perf_counter()
        write_vectors(vectors, n, args.seed)
        write_vectors(queries, args.queries_n, args.seed + 1)
        print(f"{n:,} vectors written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results = []
        for kind in kinds:
            results.append(run_worker(kind, args, vectors, queries, truth, nlist))
            print(f"{kind}: built in {results[-1]['build_s']:.0f} s", file=sys.stderr)
    print(table(results))
    print(
        f"N = {n:,} random unit vectors of {DIM} dimensions ({n * DIM * 4 / MB:,.0f} MB as "
        f"float32); {args.queries_n:,} random unit queries in one batch, k = {args.k}; FAISS "
        f"threads: {args.threads}.\nRecall@10: the share of the exact top 10 (flat index) "
        "found. Random vectors have no cluster structure: the worst case for HNSW and IVF "
        "recall; real embeddings do better at the same settings.\nBuild RSS growth: the build "
        "process's peak resident memory during the build minus its memory before it (the "
        "vectors are read from embeddings.npy by the build, as in `kinject kb build`)."
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"n": n, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
