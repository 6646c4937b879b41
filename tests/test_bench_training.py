"""bench/training.py: the padded baseline gets exactly the packed run's tokens; smoke run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kinject.models.packing import IGNORE_INDEX, PackedBlocks

BENCH = Path(__file__).resolve().parents[1] / "bench" / "training.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("kinject_bench_training", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documents() -> list[str]:
    """Biography sentences in documents of 1 to 9 sentences: lengths vary, some exceed a block."""
    from kinject.config import WorldConfig
    from kinject.world.build import build_world, kb_documents

    world = build_world(WorldConfig(n_known=10, n_new=10, n_updated=4, n_reading=4, n_dev=4))
    sentences = [s for d in kb_documents(world) for s in d["text"].split(". ")]
    documents, start = [], 0
    while start < len(sentences):
        size = 1 + len(documents) % 9
        documents.append(". ".join(sentences[start : start + size]))
        start += size
    return documents


def test_padded_rows_hold_the_packed_tokens_in_order(bench, bpe_tokenizer):
    documents = _documents()
    lengths = [len(ids) + 2 for ids in bpe_tokenizer(documents, add_special_tokens=False).input_ids]
    block, batch = 64, 3
    assert min(lengths) < block < max(lengths)

    def for_epoch(epoch: int) -> list[str]:  # another order every epoch, as TrainingSet does
        return documents[epoch % len(documents) :] + documents[: epoch % len(documents)]

    packed = PackedBlocks(bpe_tokenizer, for_epoch, block, batch, isolate_documents=True)
    steps = packed.blocks_in_epoch(0) // batch + 2  # the run crosses into a second epoch
    padded = bench.PaddedDocuments(bpe_tokenizer, for_epoch, steps * batch * block, block, batch)

    packed_tokens = [t for s in range(steps) for t in bench.real_tokens(packed.batch_for(s))]
    padded_tokens = [t for s in range(padded.steps) for t in bench.real_tokens(padded.batch_for(s))]
    assert len(packed_tokens) == steps * batch * block
    assert [int(t) for t in padded_tokens] == [int(t) for t in packed_tokens]
    packed_stream = bench.token_stream(packed.batch_for, steps)
    padded_stream = bench.token_stream(padded.batch_for, padded.steps)
    assert packed_stream["sha256"] == padded_stream["sha256"]
    assert packed_stream["real"] == padded_stream["real"] < padded_stream["total"]

    padding = 0
    for step in range(padded.steps):
        rows = padded.batch_for(step)
        mask = rows["attention_mask"].bool()
        assert rows["input_ids"].shape[1] <= block
        assert rows["input_ids"].shape[1] == int(mask.sum(dim=1).max())  # padded to the longest
        assert bool((rows["labels"][~mask] == IGNORE_INDEX).all())
        assert bool((rows["labels"][mask] == rows["input_ids"][mask]).all())
        assert bool((rows["input_ids"][~mask] == bpe_tokenizer.pad_token_id).all())
        padding += int((~mask).sum())
    assert padding > 0
    whole = [row for row in padded.rows if row[0] == bpe_tokenizer.bos_token_id]
    assert any(row[-1] == bpe_tokenizer.eos_token_id for row in whole)
    with pytest.raises(IndexError):
        padded.batch_for(padded.steps)


def _table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]
    ]


def test_smoke_run_prints_both_variants_on_the_same_tokens(
    bench, tiny_llama_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    corpus = tmp_path / "toy.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(_documents()))
    )
    bench.main(
        ["--smoke", "--models", f"tiny={tiny_llama_dir}", "--data", f"toy={corpus}"]
        + ["--block-size", "64", "--steps", "12"]
    )
    rows = _table(capsys.readouterr().out)
    assert [row["variant"] for row in rows] == ["packed", "padded"]
    packed, padded = rows
    assert packed["model"] == padded["model"] == "tiny" and packed["data"] == "toy"
    assert packed["real tokens"] == padded["real tokens"] == f"{12 * 4 * 64:,}"
    assert packed["padding"] == "0.0%" and float(padded["padding"].rstrip("%")) > 0
    assert int(padded["steps"]) > int(packed["steps"]) == 12
    speeds = [float(row["real tokens/s (cpu)"].replace(",", "")) for row in rows]
    assert all(speed > 0 for speed in speeds)
    ratio = float(packed["packed / padded tokens/s"].rstrip("x"))
    assert ratio == pytest.approx(speeds[0] / speeds[1], rel=0.01)
