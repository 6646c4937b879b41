"""JSON replies from a local model, built to the reply's schema: a grammar, no library.

A small model asked for free-form JSON rambles (issue 22: SmolLM2-135M-Instruct wrote no valid
question in 6 minutes).  Here kinject writes the JSON's structure itself (braces, keys, quotes,
commas, the number of array items) and the model writes only the values, each continuing the
text so far:

* a string: generated until the model writes its closing quote or a line break (at most
  ``max_string_tokens``), then JSON-escaped;
* a choice (``enum``, ``const``, an integer between ``minimum`` and ``maximum``): the allowed
  value with the highest log-likelihood after the text so far (``uniqueItems``: each value of
  an array once).

So every reply parses and has the schema's shape, whatever the model; whether its content is
any good is left to the caller's validation.  Supported: objects (every property, in the
schema's order), strings, the choices above, ``anyOf`` (its first supported branch; a
property's own ``enum`` wins), ``$ref`` to ``$defs``, arrays of ``maxItems`` items (else
``minItems``, else one).  Anything else raises :class:`UnsupportedSchema`, and the caller
generates freely.
"""

from __future__ import annotations

import json
from typing import Any

MAX_CHOICES = 50  # an integer range wider than this is not a choice


class UnsupportedSchema(ValueError):
    """A schema this module cannot write (the caller falls back to free generation)."""


class GuidedJSON:
    """Writes one JSON value of ``schema`` after ``prompt`` with ``model`` and ``tokenizer``."""

    def __init__(self, model, tokenizer, schema: dict, max_string_tokens: int = 96):
        self.model = model
        self.tokenizer = tokenizer
        self.root = schema
        self.max_string_tokens = max_string_tokens
        check_supported(schema, schema)

    def write(self, prompt: str) -> str:
        self.text = prompt
        start = len(prompt)
        self._value(self.root)
        return self.text[start:]

    # -- the grammar ------------------------------------------------------------------------

    def _value(self, schema: dict) -> None:
        schema = _resolved(schema, self.root)
        choices = _choices(schema, self.root)
        if choices is not None:
            self._choose(choices)
        elif schema.get("type") == "object":
            self.text += "{"
            for number, (key, sub) in enumerate(schema.get("properties", {}).items()):
                self.text += ("" if number == 0 else ", ") + json.dumps(key) + ": "
                self._value(sub)
            self.text += "}"
        elif schema.get("type") == "array":
            count = schema.get("maxItems", schema.get("minItems", 1))
            items = schema.get("items", {})
            chosen: list[Any] = []
            self.text += "["
            for number in range(count):
                self.text += "" if number == 0 else ", "
                left = _choices(_resolved(items, self.root), self.root)
                if left is not None and schema.get("uniqueItems"):
                    chosen.append(self._choose([c for c in left if c not in chosen] or left))
                else:
                    self._value(items)
            self.text += "]"
        elif schema.get("type") == "string":
            self._string()
        else:
            first = next(iter(_branches(schema)), None)
            if first is None:
                raise UnsupportedSchema(f"cannot write {schema}")
            self._value(first)

    def _string(self) -> None:
        import torch

        self.text += '"'
        inputs = self._encode(self.text)
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_string_tokens,
                do_sample=False,
                stop_strings=['"', "\n"],
                tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.eos_token_id if pad is None else pad,
            )
        new = self.tokenizer.decode(
            output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        value = new.split('"')[0].split("\n")[0].strip()
        self.text += json.dumps(value, ensure_ascii=False)[1:]  # escaped, closing quote

    def _choose(self, choices: list[Any]) -> Any:
        """The choice whose JSON text is likeliest after the text so far; written."""
        import torch

        prefix = self._encode(self.text)["input_ids"][0]
        best, best_score = choices[0], float("-inf")
        for choice in choices:
            whole = self._encode(self.text + json.dumps(choice))["input_ids"][0]
            shared = 0
            while shared < min(len(prefix), len(whole)) and prefix[shared] == whole[shared]:
                shared += 1
            shared = max(1, min(shared, len(prefix)))
            with torch.no_grad():
                logits = self.model(input_ids=whole[None].to(self._device())).logits[0]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            targets = whole[shared:]
            score = (
                logprobs[shared - 1 : len(whole) - 1]
                .gather(1, targets[:, None].to(logprobs.device))
                .sum()
            )
            if float(score) > best_score:
                best, best_score = choice, float(score)
        self.text += json.dumps(best)
        return best

    def _encode(self, text: str) -> dict:
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return {key: value.to(self._device()) for key, value in encoded.items()}

    def _device(self):
        return next(self.model.parameters()).device


def _resolved(schema: dict, root: dict) -> dict:
    """``schema`` with a ``$ref`` to ``#/$defs/...`` followed."""
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        if name not in root.get("$defs", {}):
            raise UnsupportedSchema(f"unresolvable $ref {schema['$ref']}")
        schema = root["$defs"][name]
    return schema


def _branches(schema: dict) -> list[dict]:
    return list(schema.get("anyOf") or schema.get("oneOf") or [])


def _choices(schema: dict, root: dict) -> list[Any] | None:
    """The values a choice may take (``enum``, ``const``, a small integer range), or None."""
    if "enum" in schema:
        return list(schema["enum"])
    if "const" in schema:
        return [schema["const"]]
    if schema.get("type") == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is None or high is None or high - low + 1 > MAX_CHOICES:
            raise UnsupportedSchema("an integer needs minimum and maximum (at most 50 values)")
        return list(range(int(low), int(high) + 1))
    return None


def check_supported(schema: dict, root: dict) -> None:
    """Raise :class:`UnsupportedSchema` unless :class:`GuidedJSON` can write ``schema``."""
    schema = _resolved(schema, root)
    if _choices(schema, root) is not None:
        return
    kind = schema.get("type")
    if kind == "object":
        for sub in schema.get("properties", {}).values():
            check_supported(sub, root)
    elif kind == "array":
        check_supported(schema.get("items", {}), root)
    elif kind != "string":
        branches = _branches(schema)
        if not branches:
            raise UnsupportedSchema(f"cannot write a value of schema {schema}")
        check_supported(branches[0], root)
