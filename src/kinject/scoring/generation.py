"""Greedy generation for open questions: batched, left-padded, cut at a stop string.

Prompts are sorted by token length (longest first) so a batch pads little; results come back in
the caller's order.  Decoding is greedy (deterministic); the answer is the generated text up
to the first stop string, stripped of surrounding whitespace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kinject.errors import KinjectError


class GreedyGenerator:
    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int | None = 32,
        max_new_tokens: int = 32,
        stop: Sequence[str] = ("\n",),
        bf16: bool = False,
        memory_budget: int | None = None,
        end_of_turn: bool = False,
    ):
        """``end_of_turn``: prompts are chat-rendered, so an answer is the assistant's whole
        turn: generation ends at any of the model's end tokens (the tokenizer's and those of
        its generation config, e.g. ``<|im_end|>``, ``<|eot_id|>``), not at ``stop``."""
        from kinject.scoring.batching import BatchPlan

        self.model = model
        self.tokenizer = tokenizer
        self.plan = BatchPlan(model.config, batch_size, memory_budget)
        self.max_new_tokens = max_new_tokens
        self.stop = () if end_of_turn else tuple(stop)
        self.bf16 = bf16
        self.eos = end_tokens(model, tokenizer) if end_of_turn else tokenizer.eos_token_id

    def generate(
        self, prompts: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> list[str]:
        encoded = [self._encode(prompt) for prompt in prompts]
        # a row's keys and values grow to its prompt and every new token; logits: the last
        widths = [len(ids) + self.max_new_tokens for ids in encoded]
        answers: list[str] = [""] * len(prompts)
        for batch in self.plan.batches(widths, kept=[1]):
            for index, text in zip(batch, self._batch([encoded[i] for i in batch])):
                answers[index] = text
            if on_batch is not None:
                on_batch(len(batch))
        return answers

    def _batch(self, encoded: list[list[int]]) -> list[str]:
        import torch

        from kinject.training.loop import autocast_context

        self.model.eval()
        tokenizer = self.tokenizer
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        width = max(len(ids) for ids in encoded)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor(
            [[pad] * (width - len(ids)) + ids for ids in encoded], device=device
        )
        mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device
        )
        stopping = {"stop_strings": list(self.stop), "tokenizer": tokenizer} if self.stop else {}
        with torch.no_grad(), autocast_context(device.type, self.bf16):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=self.eos,
                **stopping,  # a batch ends early once every answer has reached a stop string
            )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        return [self._cut(text) for text in texts]

    def _encode(self, prompt: str) -> list[int]:
        if prompt.startswith(self.tokenizer.bos_token or "\0"):  # a chat template's own BOS
            return self._limited(self.tokenizer.encode(prompt, add_special_tokens=False))
        return self._limited(self.tokenizer.encode(prompt))

    def _limited(self, ids: list[int]) -> list[int]:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit:
            if self.max_new_tokens >= limit:
                raise KinjectError(
                    f"scoring.max_new_tokens ({self.max_new_tokens}) leaves no room for the "
                    f"prompt in the model's {limit} positions"
                )
            ids = ids[-(limit - self.max_new_tokens) :]
        return ids

    def _cut(self, text: str) -> str:
        end = len(text)
        for stop in self.stop:
            position = text.find(stop)
            if position != -1:
                end = min(end, position)
        return text[:end].strip()


def end_tokens(model, tokenizer) -> list[int]:
    """Every token that ends a reply: the tokenizer's EOS and the generation config's."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids if i is not None})
