"""Chat models for building datasets: an OpenAI-compatible endpoint, or a local HF model.

The contract is :class:`ChatModel`: ``complete`` sends one request and returns the reply's
text; ``identity`` says what answers (never a secret).  ``chat`` on top of them is shared:
it caches replies by a hash of the request and, when a JSON reply is wanted, validates it
against a pydantic model and re-asks with the error a bounded number of times::

    chat(messages, seed, schema)
      ├─ cache hit?  ─────────────────────────────► reply
      └─ complete(messages) ─► valid JSON + schema? ─ yes ─► cache, reply
                                   │ no (≤ json_retries times)
                                   └─ messages + [bad reply, "not valid: <error>"] ─► complete …

The API key is read from the environment when a request is sent.  It is not part of the
config, the cache key, the cache files or any error message: whatever an endpoint sends back
(an error text, a reply that is not a chat completion, the reply's own text) is scrubbed of
the key before it is cut to an excerpt, shown, cached or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kinject.cache import cache_dir
from kinject.config import LLMConfig
from kinject.errors import KinjectError
from kinject.fileio import write_json

M = TypeVar("M", bound=BaseModel)
Message = dict[str, str]


class ChatModel(ABC):
    """Anything that answers chat messages with text."""

    json_retries: int = 2
    response_cache: ReplyCache | None = None

    @abstractmethod
    def complete(
        self, messages: list[Message], *, seed: int | None, json_schema: dict | None
    ) -> str:
        """One request: the assistant's reply text (``json_schema``: a JSON reply is wanted)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What decides the replies (endpoint, model, sampling); part of the cache key."""

    def chat(
        self,
        messages: list[Message],
        *,
        seed: int | None = None,
        schema: type[BaseModel] | None = None,
    ) -> str:
        """The reply to ``messages``; with ``schema``, a reply that validates against it."""
        json_schema = schema.model_json_schema() if schema is not None else None
        key = request_key(self.identity(), messages, seed, json_schema)
        if self.response_cache is not None:
            cached = self.response_cache.get(key)
            if cached is not None:
                return cached
        asked = list(messages)
        for attempt in range(self.json_retries + 1):
            reply = self.complete(asked, seed=seed, json_schema=json_schema)
            error = None if schema is None else schema_error(reply, schema)
            if error is None:
                if self.response_cache is not None:
                    self.response_cache.put(key, self.identity(), messages, seed, reply)
                return reply
            if attempt < self.json_retries:
                asked = [
                    *messages,
                    {"role": "assistant", "content": reply},
                    {
                        "role": "user",
                        "content": f"That reply is not valid: {error}. Reply again with only "
                        "the JSON object, following the instructions exactly.",
                    },
                ]
        raise KinjectError(
            f"{self.describe()}: no valid JSON reply after {self.json_retries + 1} attempts "
            f"(last error: {error}); last reply began: {reply[:200]!r}"
        )

    def chat_json(self, messages: list[Message], schema: type[M], *, seed: int | None = None) -> M:
        """``chat`` parsed into ``schema``."""
        return schema.model_validate_json(_json_text(self.chat(messages, seed=seed, schema=schema)))

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.identity().items() if k != "kind")


def schema_error(reply: str, schema: type[BaseModel]) -> str | None:
    """Why ``reply`` is not a JSON object valid under ``schema`` (None when it is)."""
    try:
        data = json.loads(_json_text(reply))
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error.msg} at character {error.pos})"
    try:
        schema.model_validate(data)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg']}"
            for e in error.errors()[:5]
        ]
        return "does not match the schema (" + "; ".join(problems) + ")"
    return None


def _json_text(reply: str) -> str:
    """The reply without a Markdown code fence around it (models often add one)."""
    text = reply.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        text = text[3:-3]
        first_line, _, rest = text.partition("\n")
        if first_line.strip().lower() in ("json", ""):
            text = rest
    return text.strip()


def request_key(
    identity: dict[str, Any], messages: list[Message], seed: int | None, json_schema: dict | None
) -> str:
    """The cache key: a SHA-256 of everything that decides a reply (the key is not in it)."""
    blob = json.dumps(
        {"model": identity, "messages": messages, "seed": seed, "schema": json_schema},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    """One JSON file per request, ``<folder>/<key[:2]>/<key>.json``, written atomically."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise KinjectError(f"{path}: a damaged cached reply; delete the file") from None
        if not isinstance(reply, str):
            raise KinjectError(f"{path}: a damaged cached reply; delete the file")
        return reply

    def put(
        self,
        key: str,
        identity: dict[str, Any],
        messages: list[Message],
        seed: int | None,
        reply: str,
    ) -> None:
        record = {"model": identity, "seed": seed, "messages": messages, "reply": reply}
        write_json(self._path(key), record)


# ---------------------------------------------------------------------------------------------
# An OpenAI-compatible endpoint


class OpenAIChat(ChatModel):
    """``POST {base_url}/chat/completions`` with retries, backoff and a timeout.

    Retried: HTTP 429 and 5xx (waiting ``Retry-After`` when the server sends it, else
    ``backoff_s · 2^attempt``, at most ``max_backoff_s``), timeouts and lost connections.
    Other HTTP errors (401, 400 …) stop at once with the endpoint's message.
    """

    def __init__(self, config: LLMConfig, sleep: Callable[[float], None] = time.sleep):
        if config.model is None:
            raise KinjectError("an endpoint needs a model name (--model or model: in the config)")
        self.config = config
        self.json_retries = config.json_retries
        self._sleep = sleep
        self.requests_sent = 0  # HTTP requests, retries included

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {
            "kind": "openai",
            "base_url": c.base_url.rstrip("/"),
            "model": c.model,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "response_format": c.response_format,
        }

    def _api_key(self) -> str | None:
        name = self.config.api_key_env
        if name is None:
            return None
        key = os.environ.get(name, "").strip()
        if not key:
            raise KinjectError(
                f"no API key: set the environment variable {name} (or api_key_env: null for an "
                "endpoint without keys)"
            )
        if any(ord(c) < 33 or ord(c) == 127 for c in key):  # would fail in the header, key shown
            raise KinjectError(f"the API key in {name} holds a space or control character")
        return key

    def _body(self, messages: list[Message], seed: int | None, json_schema: dict | None) -> dict:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if json_schema is not None and self.config.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif json_schema is not None and self.config.response_format == "json_schema":
            name = str(json_schema.get("title", "reply"))
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(name), "schema": json_schema},
            }
        return body

    def complete(
        self, messages: list[Message], *, seed: int | None, json_schema: dict | None
    ) -> str:
        key = self._api_key()
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        data = json.dumps(self._body(messages, seed, json_schema)).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.config.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            wait = None
            self.requests_sent += 1
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    payload = response.read()
                return _reply_text(payload, url, key)
            except urllib.error.HTTPError as error:
                message = _error_message(error, key)
                if error.code != 429 and error.code < 500:
                    raise KinjectError(f"{url}: HTTP {error.code}: {message}") from None
                last = f"HTTP {error.code}: {message}"
                wait = _retry_after(error.headers.get("Retry-After"))
            except TimeoutError:
                last = f"no reply within {self.config.timeout_s:g} s"
            except urllib.error.URLError as error:
                if isinstance(error.reason, TimeoutError):
                    last = f"no reply within {self.config.timeout_s:g} s"
                else:
                    last = f"connection failed ({_scrub(str(error.reason), key)})"
            except (ConnectionError, OSError) as error:
                last = f"connection failed ({_scrub(str(error), key)})"
            if attempt < self.config.max_retries:
                if wait is None:
                    wait = self.config.backoff_s * 2**attempt
                self._sleep(min(wait, self.config.max_backoff_s))
        raise KinjectError(
            f"{url}: gave up after {self.config.max_retries + 1} attempts (last: {last})"
        )


def _schema_name(title: str) -> str:
    name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in title)
    return name[:64] or "reply"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form); None when absent or a date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_message(error: urllib.error.HTTPError, key: str | None) -> str:
    """The endpoint's error text without the key (scrubbed before the body is cut short, so
    no cut leaves part of the key)."""
    try:
        body = _scrub(error.read().decode("utf-8", "replace"), key)
    except OSError:
        return _scrub(str(error.reason or ""), key)
    try:
        detail = json.loads(body)["error"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return body[:300] or _scrub(str(error.reason), key)
    message = str(detail.get("message") or detail) if isinstance(detail, dict) else str(detail)
    return _scrub(message, key)  # again: JSON may have escaped a character of the key


MIN_SECRET_CHARS = 16  # a shorter "key" (a local server's "EMPTY") is kept in reply text


def _scrub(text: str, key: str | None) -> str:
    """``text`` with the API key (if it occurs) blanked out."""
    if key:
        text = text.replace(key, "<API key>")
    return text


def _reply_text(payload: bytes, url: str, key: str | None) -> str:
    """The assistant's text from a ``chat.completion`` object."""
    try:
        data = json.loads(payload)
        choice = data["choices"][0]
        content = choice["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        head = _scrub(payload.decode("utf-8", "replace"), key)[:200]
        raise KinjectError(f"{url}: not a chat.completion reply: {head!r}") from None
    if not isinstance(content, str):
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        raise KinjectError(f"{url}: the reply has no text (finish_reason: {reason})")
    if key and len(key) >= MIN_SECRET_CHARS:  # an endpoint echoing the request's key
        content = _scrub(content, key)
    return content


# ---------------------------------------------------------------------------------------------
# A local Hugging Face model


class LocalChat(ChatModel):
    """A local causal LM through transformers: its chat template if the tokenizer has one, else
    ``role: content`` blocks ending in ``assistant:``.  Greedy at temperature 0, else sampled
    with ``torch.manual_seed(seed)``.  A JSON reply is written to its schema
    (:mod:`kinject.llm.guided`: kinject writes the structure, the model the values, greedily),
    so even a small model's reply parses; it is then validated (and re-asked) as an
    endpoint's.  A schema that module cannot write is generated freely."""

    def __init__(self, config: LLMConfig):
        if config.local_path is None:
            raise KinjectError("LocalChat needs local_path")
        from kinject.config import ModelSpec
        from kinject.models.loading import load_causal_lm

        self.config = config
        self.json_retries = config.json_retries
        self.model, self.tokenizer = load_causal_lm(
            ModelSpec(path=config.local_path, device=config.device)
        )

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {
            "kind": "local",
            "path": str(Path(c.local_path).resolve()) if c.local_path else None,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "json": "guided-1",  # how JSON replies are written (kinject.llm.guided)
        }

    def prompt(self, messages: list[Message]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        blocks = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n\n".join([*blocks, "assistant:"])

    def complete(
        self, messages: list[Message], *, seed: int | None, json_schema: dict | None
    ) -> str:
        import torch

        from kinject.llm.guided import GuidedJSON, UnsupportedSchema

        text = self.prompt(messages)
        if json_schema is not None:
            try:
                budget = min(self.config.max_tokens, 96)  # tokens per string value
                guided = GuidedJSON(self.model, self.tokenizer, json_schema, budget)
            except UnsupportedSchema:
                pass
            else:
                return guided.write(text)
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in encoded.items()}
        options: dict[str, Any] = {"max_new_tokens": self.config.max_tokens}
        if self.config.temperature > 0:
            torch.manual_seed(0 if seed is None else seed)
            options.update(do_sample=True, temperature=self.config.temperature, top_k=0)
        else:
            options.update(do_sample=False)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        with torch.no_grad():
            output = self.model.generate(**inputs, pad_token_id=pad, **options)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------


def make_chat(config: LLMConfig, sleep: Callable[[float], None] = time.sleep) -> ChatModel:
    """The chat model a config describes, with its reply cache (unless ``cache: false``)."""
    chat: ChatModel = LocalChat(config) if config.local_path else OpenAIChat(config, sleep)
    if config.cache:
        folder = Path(config.cache_dir) if config.cache_dir else cache_dir() / "llm"
        chat.response_cache = ReplyCache(folder.expanduser())
    return chat


def llm_config(
    path: str | Path | None = None,
    *,
    base_url: str | None = None,
    model: str | None = None,
    local_path: str | None = None,
) -> LLMConfig:
    """An LLMConfig from an optional YAML file, with command-line overrides on top."""
    import yaml

    from kinject.config import parse_config

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KinjectError(f"{path}: config file not found") from None
        except yaml.YAMLError as error:
            raise KinjectError(f"{path}: not valid YAML ({error})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise KinjectError(f"{path}: expected a mapping at the top level")
        data = dict(loaded or {})
        for name in ("local_path", "cache_dir"):
            value = data.get(name)
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                data[name] = str((path.parent / value).resolve())
    for name, value in (("base_url", base_url), ("model", model), ("local_path", local_path)):
        if value is not None:
            data[name] = value
    where = Path(path) if path is not None else None
    return parse_config(LLMConfig, data, where)
