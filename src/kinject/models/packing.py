"""Packed next-token training blocks from a stream of documents.

Every document is encoded as ``<s> tokens </s>``; documents are concatenated and cut into
blocks of ``block_size`` tokens.  A document may restrict its loss to character spans (the
answers of a reading-comprehension document, the response of an instruction); other tokens
get label -100.  ``batch_for(step)`` is a pure function of the step, so a resumed run sees
exactly the batches an uninterrupted one would have seen.

With ``isolate_documents`` each token attends only to earlier tokens of its own document and
positions restart at every document, as if each document were its own sequence::

    tokens     <s> a b </s> <s> c d e </s>
    positions   0  1 2  3    0  1 2 3  4
    mask        block-diagonal causal (a 4-D boolean attention mask)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainingDocument:
    text: str
    loss_spans: tuple[tuple[int, int], ...] | None = None  # None: loss on every token


def _labels(ids: Sequence[int], offsets, spans) -> list[int]:
    if spans is None:
        return list(ids)
    labels = []
    for token, (start, end) in zip(ids, offsets):
        inside = any(start < span_end and end > span_start for span_start, span_end in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return labels


class PackedBlocks:
    def __init__(
        self,
        tokenizer,
        documents_for_epoch: Callable[[int], Sequence[TrainingDocument | str]],
        block_size: int,
        batch_size: int,
        isolate_documents: bool = False,
    ):
        self.tokenizer = tokenizer
        self.isolate_documents = isolate_documents
        self.documents_for_epoch = documents_for_epoch
        self.block_size = block_size
        self.batch_size = batch_size
        self._epoch_sizes: list[int] = []  # blocks in each epoch generated so far
        self._cached_epoch = -1
        self._cached = None

    def _blocks(self, epoch: int):
        import torch

        if epoch != self._cached_epoch:
            documents = [
                d if isinstance(d, TrainingDocument) else TrainingDocument(d)
                for d in self.documents_for_epoch(epoch)
            ]
            encoded = self.tokenizer(
                [d.text for d in documents], add_special_tokens=False, return_offsets_mapping=True
            )
            bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
            ids_stream: list[int] = []
            label_stream: list[int] = []
            position_stream: list[int] = []
            for document, ids, offsets in zip(documents, encoded.input_ids, encoded.offset_mapping):
                whole = document.loss_spans is None
                ids_stream += [bos, *ids, eos]
                position_stream += range(len(ids) + 2)
                label_stream += [bos if whole else IGNORE_INDEX]
                label_stream += _labels(ids, offsets, document.loss_spans)
                label_stream += [eos if whole else IGNORE_INDEX]
            n_blocks = len(ids_stream) // self.block_size
            if n_blocks == 0:
                raise ValueError(f"epoch {epoch} has fewer than {self.block_size} tokens")
            size = n_blocks * self.block_size
            self._cached = tuple(
                torch.tensor(stream[:size], dtype=torch.long).view(n_blocks, self.block_size)
                for stream in (ids_stream, label_stream, position_stream)
            )
            self._cached_epoch = epoch
            if epoch == len(self._epoch_sizes):
                self._epoch_sizes.append(n_blocks)
        return self._cached

    def blocks_in_epoch(self, epoch: int) -> int:
        while epoch >= len(self._epoch_sizes):
            self._blocks(len(self._epoch_sizes))
        return self._epoch_sizes[epoch]

    def _locate(self, index: int) -> tuple[int, int]:
        epoch, offset = 0, index
        while True:
            if epoch == len(self._epoch_sizes):
                self._blocks(epoch)
            if offset < self._epoch_sizes[epoch]:
                return epoch, offset
            offset -= self._epoch_sizes[epoch]
            epoch += 1

    def batch_for(self, step: int) -> dict:
        import torch

        rows = []
        for index in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = self._locate(index)
            rows.append([part[offset] for part in self._blocks(epoch)])
        input_ids, labels, positions = (torch.stack(column) for column in zip(*rows))
        batch = {"input_ids": input_ids, "labels": labels}
        if self.isolate_documents:
            # A block may begin mid-document: its first tokens form a segment of their own.
            starts = positions == 0
            starts[:, 0] = True
            segment = starts.cumsum(dim=1)  # [batch, block]
            same = segment[:, :, None] == segment[:, None, :]  # [batch, block, block]
            causal = torch.ones(same.shape[1:], dtype=torch.bool).tril()
            batch["attention_mask"] = (same & causal)[:, None]  # [batch, 1, block, block]
            batch["position_ids"] = positions - (positions[:, :1] * (segment == 1))
        return batch
