"""Write two SQuAD v1.1 dev articles as Markdown files: the README's "your own documents"
example, with the ten questions of questions.jsonl written about them.

    python examples/quickstart/squad_articles.py --out my-docs
    python examples/quickstart/squad_articles.py --squad path/to/dev-v1.1.json --out my-docs

Each file is ``<article>.md``: the article's title as a heading, then its first
``--paragraphs`` paragraphs (default 6), so ``kinject kb build my-docs`` names the documents
``Apollo_program.md`` and ``1973_oil_crisis.md``, as the questions' ``doc_ids`` do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad_v1.1_dev" / "dev-v1.1.json"
ARTICLES = ("Apollo_program", "1973_oil_crisis")


def write_articles(squad: Path, out: Path, paragraphs: int = 6) -> list[Path]:
    data = json.loads(squad.read_text(encoding="utf-8"))["data"]
    found = {article["title"]: article for article in data if article["title"] in ARTICLES}
    missing = [title for title in ARTICLES if title not in found]
    if missing:
        raise SystemExit(f"error: {squad} has no article {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for title in ARTICLES:
        body = "\n\n".join(p["context"] for p in found[title]["paragraphs"][:paragraphs])
        path = out / f"{title}.md"
        path.write_text(f"# {title.replace('_', ' ')}\n\n{body}\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="The folder to write into.")
    parser.add_argument("--squad", type=Path, default=SQUAD, help="A SQuAD v1.1 JSON file.")
    parser.add_argument("--paragraphs", type=int, default=6, help="Paragraphs per article.")
    args = parser.parse_args(argv)
    if not args.squad.is_file():
        sys.exit(f"error: {args.squad} not found (give --squad)")
    for path in write_articles(args.squad, args.out, args.paragraphs):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
