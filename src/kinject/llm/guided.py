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
property's own ``enum`` wins), ``$ref`` to ``$defs`` (not recursive), arrays with
``maxItems`` (that many items are written).  Anything else (an array of unsaid length, such
as the paraphrase reply's) raises :class:`UnsupportedSchema`, and the caller generates
freely.
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
            count = schema["maxItems"]
            items = schema.get("items", {})
            chosen: list[Any] = []
            self.text += "["
            for number in range(count):
                self.text += "" if number == 0 else ", "
                left = _choices(_resolved(items, self.root), self.root)
                if left is not None and schema.get("uniqueItems"):
                    chosen.append(self._choose([c for c in left if c not in chosen]))
                else:
                    self._value(items)
            self.text += "]"
        elif schema.get("type") == "string":
            self._string()
        else:
            self._value(_first_supported(schema, self.root))

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
        self.text += json.dumps(string_value(new), ensure_ascii=False)[1:]  # closing quote

    def _choose(self, choices: list[Any]) -> Any:
        """The choice whose JSON text is likeliest after the text so far; written."""
        import torch

        prefix = self._ids(self.text)
        wholes = [self._ids(self.text + json.dumps(c, ensure_ascii=False)) for c in choices]
        # every choice scored from the same token on: the first that any choice's text changes
        # (a choice can merge with the prompt's last token)
        shared = min(_common_prefix(prefix, whole) for whole in wholes)
        shared = max(1, min(shared, len(prefix)))
        best, best_score = choices[0], float("-inf")
        for choice, whole in zip(choices, wholes):
            ids = torch.tensor([whole], device=self._device())
            with torch.no_grad():
                logits = self.model(input_ids=ids).logits[0, shared - 1 : len(whole) - 1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            score = float(logprobs.gather(1, ids[0, shared:, None]).sum())
            if score > best_score:
                best, best_score = choice, score
        self.text += json.dumps(best, ensure_ascii=False)
        return best

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode(self, text: str) -> dict:
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return {key: value.to(self._device()) for key, value in encoded.items()}

    def _device(self):
        return next(self.model.parameters()).device


def string_value(generated: str) -> str:
    """A string's value from what the model wrote after its opening quote: up to the first
    quote or line break (a quote the model escaped ends it too: its backslash is dropped),
    with its JSON escapes decoded where they are valid."""
    raw = generated.split('"')[0].split("\n")[0].strip().removesuffix("\\")
    try:
        return json.loads(f'"{raw}"').strip()
    except json.JSONDecodeError:
        return raw


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _first_supported(schema: dict, root: dict, seen: tuple = ()) -> dict:
    """The first branch of an ``anyOf`` this module can write."""
    for branch in _branches(schema):
        try:
            check_supported(branch, root, seen)
        except UnsupportedSchema:
            continue
        return branch
    raise UnsupportedSchema(f"cannot write a value of schema {schema}")


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


def check_supported(schema: dict, root: dict, seen: tuple = ()) -> None:
    """Raise :class:`UnsupportedSchema` unless :class:`GuidedJSON` can write ``schema``
    (a recursive schema is not written: it has no end)."""
    if "$ref" in schema:
        if schema["$ref"] in seen:
            raise UnsupportedSchema(f"recursive schema at {schema['$ref']}")
        seen = (*seen, schema["$ref"])
    schema = _resolved(schema, root)
    if _choices(schema, root) is not None:
        return
    kind = schema.get("type")
    if kind == "object":
        for sub in schema.get("properties", {}).values():
            check_supported(sub, root, seen)
    elif kind == "array":
        if "maxItems" not in schema:  # how many to write is the schema's to say
            raise UnsupportedSchema("an array needs maxItems")
        items = schema.get("items", {})
        choices = _choices(_resolved(items, root), root)
        if schema.get("uniqueItems") and choices is not None and schema["maxItems"] > len(choices):
            raise UnsupportedSchema("more unique items asked for than there are values")
        check_supported(items, root, seen)
    elif kind != "string":
        _first_supported(schema, root, seen)
