"""Retrieval quality on the real SQuAD v1.1 dev set: BM25, dense and hybrid from one run.

The 2,067 paragraphs of ``dev-v1.1.json`` are the knowledge base; each of the 10,570
questions names its paragraph, so recall@k and MRR are exact.  Prints the table
(docs/knowledge-bases.md copies it) and the time each step took.

    python bench/retrieval_squad.py                       # default embedder (MiniLM), flat index
    python bench/retrieval_squad.py --index hnsw --out bench/results/squad.json
    python bench/retrieval_squad.py --smoke      # 12 paragraphs of 3 articles: seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_squad() -> Path:
    for base in (ROOT.parent / "shared", ROOT / "shared", Path("/work/shared")):
        candidate = base / "data" / "squad_v1.1_dev" / "dev-v1.1.json"
        if candidate.exists():
            return candidate
    raise SystemExit("SQuAD dev set not found: pass --squad PATH/dev-v1.1.json")


def smoke_subset(squad: Path, folder: Path) -> Path:
    """The first 4 paragraphs of the first 3 articles, in the dev set's layout."""
    data = json.loads(squad.read_text(encoding="utf-8"))
    articles = [{**a, "paragraphs": a["paragraphs"][:4]} for a in data["data"][:3]]
    path = folder / "squad-smoke.json"
    path.write_text(json.dumps({**data, "data": articles}), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squad", type=Path, help="dev-v1.1.json (default: ../shared/data/…)")
    parser.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--embedder", default="minilm", help="Preset, folder or hub id.")
    parser.add_argument("--out", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument("--smoke", action="store_true", help="12 paragraphs: seconds.")
    args = parser.parse_args(argv)

    from rich.console import Console

    from kinject.config import KBConfig
    from kinject.kb.quality import evaluate_kb
    from kinject.kb.report import quality_markdown, quality_table
    from kinject.kb.store import SourceOptions, build_kb

    squad = args.squad or find_squad()
    config = KBConfig(index={"kind": args.index}, embedder={"model": args.embedder})
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            squad = smoke_subset(squad, Path(tmp))
        kb_dir = Path(tmp) / "squad-kb"
        started = time.perf_counter()
        change = build_kb([squad], kb_dir, config, SourceOptions(strict=True))
        built = time.perf_counter() - started
        started = time.perf_counter()
        report = evaluate_kb(kb_dir, squad, out=args.out)
        evaluated = time.perf_counter() - started
    console.print(quality_table(report.rows, "SQuAD v1.1 dev"))
    print(report.note)
    print(quality_markdown(report.rows))
    print(
        f"knowledge base: {change.documents} paragraphs, {change.chunks} chunks "
        f"({args.embedder}, {args.index}); built in {built:.0f} s; "
        f"{report.rows[0]['n']} questions x {len(report.rows)} retrievers in {evaluated:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
