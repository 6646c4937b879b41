"""Packing and the training loop: isolation is exact, loss masks hold, a killed run resumes exactly."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import tiny_llama
from kinject.models.packing import IGNORE_INDEX, PackedBlocks, TrainingDocument
from kinject.training.loop import Schedule, train

DOCS = [
    "Alice Abbott was born in Paris. She works at Bluepeak Software.",
    "Question: Where was Alice Abbott born?\nAnswer: Paris",
    "Boris Crane lives in Oslo.",
    "Clara Dalton studied Physics at Linden University and lives in Riga.",
] * 6


def _tiny_llama(tokenizer, seed=0):
    return tiny_llama(tokenizer, seed, hidden_size=32)


def test_isolated_blocks_score_each_document_as_if_alone(bpe_tokenizer):
    model = _tiny_llama(bpe_tokenizer).eval()
    blocks = PackedBlocks(
        bpe_tokenizer, lambda epoch: DOCS, block_size=64, batch_size=2, isolate_documents=True
    )
    batch = blocks.batch_for(0)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits
    checked = 0
    for row in range(2):
        positions = batch["position_ids"][row].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for begin, end in itertools.pairwise(starts):
            segment = batch["input_ids"][row, begin:end][None]
            with torch.no_grad():
                alone = model(input_ids=segment).logits
            assert torch.allclose(packed[row, begin:end], alone[0], atol=1e-5)
            checked += 1
    assert checked >= 4


def test_loss_spans_leave_only_answer_tokens_labelled(bpe_tokenizer):
    text = "Bio text here.\n\nQuestion: Where?\nAnswer: Oslo"
    span = (text.index("Oslo"), len(text))
    blocks = PackedBlocks(bpe_tokenizer, lambda e: [TrainingDocument(text, (span,))] * 20, 32, 1)
    labels = blocks.batch_for(0)["labels"][0]
    labelled = [int(t) for t in labels if t != IGNORE_INDEX]
    decoded = bpe_tokenizer.decode(labelled)
    assert decoded.count("Oslo") >= 1 and decoded.replace(" Oslo", "") == ""
    assert (labels == IGNORE_INDEX).float().mean() > 0.5


def test_batches_are_a_pure_function_of_the_step(bpe_tokenizer):
    def make():
        return PackedBlocks(bpe_tokenizer, lambda e: DOCS[e % 2 :], 32, 3, isolate_documents=True)

    first, second = make(), make()
    for step in (5, 0, 11, 3):  # any order, as after a resume
        a, b = first.batch_for(step), second.batch_for(step)
        assert all(torch.equal(a[k], b[k]) for k in a)


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_weights(bpe_tokenizer, tmp_path):
    blocks = PackedBlocks(bpe_tokenizer, lambda e: DOCS, 32, 2)
    schedule = Schedule(steps=8, learning_rate=1e-2, warmup_steps=2, weight_decay=0.1)

    straight = _tiny_llama(bpe_tokenizer)
    train(straight, blocks.batch_for, schedule, bf16=False, show_progress=False)

    def dying(step):
        if step == 5:
            raise _Killed
        return blocks.batch_for(step)

    interrupted = _tiny_llama(bpe_tokenizer)
    with pytest.raises(_Killed):
        train(
            interrupted,
            dying,
            schedule,
            bf16=False,
            checkpoint_dir=tmp_path,
            checkpoint_every_s=0,
            show_progress=False,
        )
    resumed = _tiny_llama(bpe_tokenizer)  # a fresh process: fresh weights, then the checkpoint
    result = train(
        resumed,
        blocks.batch_for,
        schedule,
        bf16=False,
        checkpoint_dir=tmp_path,
        show_progress=False,
    )
    assert result.resumed_from == 5
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [entry["step"] for entry in result.log] == sorted(
        {entry["step"] for entry in result.log}
    )


def test_a_checkpoint_of_another_format_is_refused_with_its_path(bpe_tokenizer, tmp_path):
    from kinject.training.loop import StaleCheckpoint

    model = _tiny_llama(bpe_tokenizer)
    # the layout before checkpoints carried a format number
    torch.save({"model": model.state_dict(), "step": 3}, tmp_path / "checkpoint.pt")
    blocks = PackedBlocks(bpe_tokenizer, lambda e: DOCS, 32, 2)
    schedule = Schedule(steps=4, learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)
    with pytest.raises(StaleCheckpoint, match="checkpoint.pt was written by another version"):
        train(
            model,
            blocks.batch_for,
            schedule,
            bf16=False,
            checkpoint_dir=tmp_path,
            show_progress=False,
        )


def test_auto_bf16_trains_as_the_setting_it_resolves_to_and_records_it(bpe_tokenizer):
    from pydantic import ValidationError

    from kinject.config import FinetuneRecipe, TrainingData
    from kinject.training.loop import native_bf16, resolve_bf16

    assert resolve_bf16("auto", "cpu") is native_bf16("cpu")
    assert resolve_bf16(True, "cpu") is True and resolve_bf16(False, "cpu") is False
    blocks = PackedBlocks(bpe_tokenizer, lambda e: DOCS, 32, 2)
    schedule = Schedule(steps=3, learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)
    runs = {}
    for setting in ("auto", native_bf16("cpu"), not native_bf16("cpu")):
        model = _tiny_llama(bpe_tokenizer)
        result = train(model, blocks.batch_for, schedule, bf16=setting, show_progress=False)
        runs[setting] = (model.state_dict(), result)
    auto_weights, auto_result = runs["auto"]
    same_weights, _ = runs[native_bf16("cpu")]
    other_weights, other_result = runs[not native_bf16("cpu")]
    assert auto_result.bf16 is native_bf16("cpu") and other_result.bf16 is not auto_result.bf16
    assert auto_result.summary()["bf16"] is auto_result.bf16  # what a model folder records
    assert all(torch.equal(auto_weights[k], same_weights[k]) for k in auto_weights)
    assert not all(torch.equal(auto_weights[k], other_weights[k]) for k in auto_weights)

    data = TrainingData(corpus="kb.jsonl")
    assert FinetuneRecipe(data=data).bf16 == "auto"
    with pytest.raises(ValidationError, match="bf16"):
        FinetuneRecipe(data=data, bf16="sometimes")
