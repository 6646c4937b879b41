"""The LLM client against a loopback OpenAI-compatible server replaying recorded replies:
retries, timeouts, JSON validation, the reply cache, the API key kept secret; LocalChat on a
tiny model.  The server (FakeOpenAI) is shared with test_dataset_generation.py."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal, Self

import pytest
from pydantic import BaseModel, Field

from kinject.config import LLMConfig
from kinject.errors import KinjectError
from kinject.llm.client import OpenAIChat, ReplyCache, llm_config, make_chat

FIXTURES = Path(__file__).parent / "fixtures" / "llm"


def recorded(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def completion(content: str) -> dict:
    """A recorded chat.completion with its assistant text replaced."""
    reply = copy.deepcopy(recorded("hello.json"))
    reply["choices"][0]["message"]["content"] = content
    return reply


class Reply:
    """What the server answers one request with."""

    def __init__(self, status: int = 200, body: dict | None = None, headers=None, delay=0.0):
        self.status, self.body, self.headers, self.delay = status, body, headers or {}, delay


class FakeOpenAI:
    """``script``: replies in order; then ``responder(request body) -> Reply`` for the rest."""

    def __init__(self, responder: Callable[[dict], Reply] | None = None):
        self.script: list[Reply] = []
        self.responder = responder
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    reply = server.script.pop(0) if server.script else None
                if reply is None:
                    reply = server.responder(body)
                if reply.delay:
                    time.sleep(reply.delay)
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def prompts(self) -> list[str]:
        return [r["body"]["messages"][0]["content"] for r in self.requests]


# --------------------------------------------------------------------------------------------
# Tests


SECRET = "sk-proj-TESTKEY0123456789abcdefSECRET"
HELLO = [{"role": "user", "content": "Say hello."}]


class Greeting(BaseModel):
    greeting: str


def unused(body: dict) -> Reply:
    raise AssertionError(f"unexpected request: {body['messages'][-1]['content'][:80]}")


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return SECRET


def client(server: FakeOpenAI, tmp_path: Path, sleeps: list | None = None, **settings):
    config = LLMConfig(
        base_url=server.base_url,
        model="gpt-4o",
        cache_dir=str(tmp_path / "llm-cache"),
        backoff_s=0.5,
        **settings,
    )
    return make_chat(config, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def all_written_text(*folders: Path) -> str:
    return "".join(
        path.read_bytes().decode("utf-8", "replace")
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file()
    )


def test_a_reply_is_sent_with_the_bearer_key_and_the_key_is_written_nowhere(key, tmp_path):
    with FakeOpenAI(unused) as server:
        server.script = [Reply(body=completion('{"greeting": "hello"}'))]
        chat = client(server, tmp_path)
        reply = chat.chat(HELLO, seed=7, schema=Greeting)
    assert json.loads(reply) == {"greeting": "hello"}
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {key}"
    assert request["body"]["model"] == "gpt-4o"
    assert request["body"]["seed"] == 7
    assert request["body"]["messages"] == HELLO
    assert request["body"]["response_format"] == {"type": "json_object"}
    written = all_written_text(tmp_path)
    assert "hello" in written  # the cache file was written …
    assert key not in written  # … without the key


def test_the_second_identical_call_is_answered_from_the_cache(key, tmp_path):
    with FakeOpenAI(unused) as server:
        server.script = [Reply(body=recorded("hello.json"))]
        first = client(server, tmp_path).chat(HELLO, seed=1)
        again = client(server, tmp_path).chat(HELLO, seed=1)  # a new client, same folder
        assert len(server.requests) == 1
        server.script = [Reply(body=completion("Hi."))]
        other_seed = client(server, tmp_path).chat(HELLO, seed=2)
    assert first == again == "Hello! How can I help you today?"
    assert other_seed == "Hi."
    assert len(server.requests) == 2


def test_a_429_is_retried_after_retry_after(key, tmp_path):
    sleeps = []
    with FakeOpenAI(unused) as server:
        server.script = [
            Reply(429, recorded("error_429.json"), {"Retry-After": "3"}),
            Reply(429, recorded("error_429.json")),
            Reply(body=recorded("hello.json")),
        ]
        reply = client(server, tmp_path, sleeps).chat(HELLO)
    assert reply == "Hello! How can I help you today?"
    assert len(server.requests) == 3
    assert sleeps == [3.0, 1.0]  # Retry-After, then backoff_s · 2^1


def test_a_server_error_forever_ends_in_a_clear_error(key, tmp_path):
    sleeps = []
    failing = FakeOpenAI(lambda body: Reply(500, recorded("error_500.json")))
    with failing as server, pytest.raises(KinjectError) as error:
        client(server, tmp_path, sleeps, max_retries=3).chat(HELLO)
    assert len(server.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    message = str(error.value)
    assert "gave up after 4 attempts" in message
    assert "HTTP 500" in message and "The server had an error" in message


def test_a_timeout_is_retried_then_succeeds_or_errors(key, tmp_path):
    with FakeOpenAI(unused) as server:
        server.script = [Reply(body=recorded("hello.json"), delay=1.0)]
        server.responder = lambda body: Reply(body=completion("late but fine"))
        chat = client(server, tmp_path, timeout_s=0.2, max_retries=2, cache=False)
        assert chat.chat(HELLO) == "late but fine"
        assert len(server.requests) == 2
    with FakeOpenAI(lambda body: Reply(body=recorded("hello.json"), delay=1.0)) as server:
        chat = client(server, tmp_path, timeout_s=0.2, max_retries=1, cache=False)
        with pytest.raises(KinjectError, match="no reply within 0.2 s"):
            chat.chat(HELLO)
        assert len(server.requests) == 2


def test_an_invalid_json_reply_is_asked_again_with_the_error(key, tmp_path):
    with FakeOpenAI(unused) as server:
        server.script = [
            Reply(body=recorded("broken_json.json")),
            Reply(body=completion('```json\n{"greeting": "hi"}\n```')),
        ]
        chat = client(server, tmp_path)
        assert chat.chat_json(HELLO, Greeting) == Greeting(greeting="hi")
        second = server.requests[1]["body"]["messages"]
        assert second[:1] == HELLO
        assert second[1]["role"] == "assistant" and "Unfinished" in second[1]["content"]
        assert "not valid JSON" in second[2]["content"]
        # cached under the original request: no request the next time
        assert chat.chat_json(HELLO, Greeting) == Greeting(greeting="hi")
        assert len(server.requests) == 2


def test_a_reply_never_matching_the_schema_is_a_clear_error(key, tmp_path):
    wrong = FakeOpenAI(lambda body: Reply(body=completion('{"greet": 1}')))
    expected = pytest.raises(KinjectError, match="no valid JSON reply after 2 attempts")
    with wrong as server, expected as error:
        client(server, tmp_path, json_retries=1).chat(HELLO, schema=Greeting)
    assert "greeting: Field required" in str(error.value)
    assert len(server.requests) == 2
    assert not list((tmp_path / "llm-cache").rglob("*.json"))  # an invalid reply is not cached


def test_a_rejected_key_is_not_repeated_in_the_error(key, tmp_path):
    body = recorded("error_401.json")
    body["error"]["message"] = body["error"]["message"].replace("KEY", SECRET)
    with FakeOpenAI(lambda _: Reply(401, body)) as server, pytest.raises(KinjectError) as error:
        client(server, tmp_path).chat(HELLO)
    assert len(server.requests) == 1  # a 401 is not retried
    assert "HTTP 401" in str(error.value) and "Incorrect API key" in str(error.value)
    assert SECRET not in str(error.value)


def test_a_missing_key_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    with FakeOpenAI(unused) as server:
        with pytest.raises(KinjectError, match="set the environment variable MY_LLM_KEY"):
            client(server, tmp_path, api_key_env="MY_LLM_KEY").chat(HELLO)
        server.script = [Reply(body=recorded("hello.json"))]
        client(server, tmp_path, api_key_env=None).chat(HELLO)
        assert "Authorization" not in server.requests[0]["headers"]


def test_json_schema_response_format_sends_the_schema(key, tmp_path):
    with FakeOpenAI(unused) as server:
        server.script = [Reply(body=completion('{"greeting": "hey"}'))]
        client(server, tmp_path, response_format="json_schema").chat(HELLO, schema=Greeting)
    sent = server.requests[0]["body"]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Greeting"
    assert sent["json_schema"]["schema"]["required"] == ["greeting"]


def test_llm_config_from_yaml_with_overrides(tmp_path, key):
    path = tmp_path / "llm.yaml"
    path.write_text("model: gpt-4o-mini\ntemperature: 0.2\ncache_dir: replies\n")
    config = llm_config(path, base_url="http://127.0.0.1:9/v1")
    assert config.model == "gpt-4o-mini" and config.temperature == 0.2
    assert config.base_url == "http://127.0.0.1:9/v1"
    assert config.cache_dir == str((tmp_path / "replies").resolve())
    assert llm_config(path, model="other").model == "other"
    path.write_text("model: m\napi_key: sk-oops\n")
    with pytest.raises(KinjectError, match="api_key"):
        llm_config(path)
    with pytest.raises(KinjectError, match="model is required"):
        llm_config(None)
    assert isinstance(make_chat(llm_config(None, model="m")), OpenAIChat)


def test_a_damaged_cache_file_is_named(tmp_path):
    cache = ReplyCache(tmp_path)
    cache.put("ab" + "0" * 62, {"kind": "x"}, HELLO, None, "fine")
    assert cache.get("ab" + "0" * 62) == "fine"
    (tmp_path / "ab" / ("ab" + "0" * 62 + ".json")).write_text("{oops")
    with pytest.raises(KinjectError, match="damaged cached reply"):
        cache.get("ab" + "0" * 62)


def test_local_chat_answers_through_the_same_contract(tiny_gpt2_dir, tmp_path, one_torch_thread):
    from transformers import AutoTokenizer

    from kinject.llm.client import LocalChat

    config = LLMConfig(local_path=str(tiny_gpt2_dir), max_tokens=6, temperature=0, cache=False)
    chat = make_chat(config)
    assert isinstance(chat, LocalChat)
    assert chat.prompt(HELLO) == "user: Say hello.\n\nassistant:"
    greedy = chat.chat(HELLO)
    assert isinstance(greedy, str) and greedy == chat.chat(HELLO)
    prompt_ids = chat.tokenizer(chat.prompt(HELLO))["input_ids"]
    generated = chat.tokenizer(greedy)["input_ids"]
    assert 0 < len(generated) <= 6 + 2 and generated != prompt_ids  # only the new tokens

    sampled = make_chat(config.model_copy(update={"temperature": 1.0}))
    assert sampled.chat(HELLO, seed=3) == sampled.chat(HELLO, seed=3)

    with_template = tmp_path / "templated"
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer.save_pretrained(with_template)
    for name in ("config.json", "model.safetensors"):
        (with_template / name).write_bytes((tiny_gpt2_dir / name).read_bytes())
    templated = make_chat(config.model_copy(update={"local_path": str(with_template)}))
    assert templated.prompt(HELLO) == "<user>Say hello.<assistant>"
    assert isinstance(templated.chat(HELLO), str)
    # a random model writes no JSON by itself; written to the schema, its reply parses
    assert isinstance(templated.chat_json(HELLO, Greeting).greeting, str)


class Choice(BaseModel):
    label: Literal["yes", "no"]
    rank: int = Field(ge=1, le=3)


class Quiz(BaseModel):
    question: str
    options: list[str] = Field(json_schema_extra={"minItems": 3, "maxItems": 3})
    picks: list[int] = Field(
        json_schema_extra={
            "items": {"type": "integer", "minimum": 1, "maximum": 3},
            "maxItems": 3,
            "uniqueItems": True,
        }
    )
    choice: Choice


def test_a_local_reply_is_written_to_its_schema_whatever_the_model(tiny_gpt2_dir, one_torch_thread):
    from kinject.llm.guided import GuidedJSON, UnsupportedSchema

    chat = make_chat(LLMConfig(local_path=str(tiny_gpt2_dir), temperature=0, cache=False))
    reply = chat.chat(HELLO, schema=Quiz)
    quiz = Quiz.model_validate_json(reply)  # a random GPT-2: valid JSON of this shape
    assert len(quiz.options) == 3 and all("\n" not in option for option in quiz.options)
    assert sorted(quiz.picks) == [1, 2, 3]  # uniqueItems: each allowed value once
    assert quiz.choice.label in ("yes", "no") and 1 <= quiz.choice.rank <= 3
    assert reply == chat.chat(HELLO, schema=Quiz)  # greedy: the same reply again
    # a choice is the allowed value the model finds likeliest: the model's own log-likelihood
    writer = GuidedJSON(chat.model, chat.tokenizer, {"enum": ["alpha", "beta", "gamma"]})
    prompt = chat.prompt(HELLO)
    scores = {}
    for value in ("alpha", "beta", "gamma"):
        scores[value] = _continuation_logprob(chat, prompt, json.dumps(value))
    written = json.loads(writer.write(prompt))
    assert scores[written] >= max(scores.values()) - 1e-4  # the likeliest (up to float noise)
    with pytest.raises(UnsupportedSchema, match="minimum and maximum"):
        GuidedJSON(chat.model, chat.tokenizer, {"type": "integer"})
    # a schema it cannot write is generated freely, and validated as before
    free = make_chat(
        LLMConfig(local_path=str(tiny_gpt2_dir), max_tokens=4, temperature=0, cache=False)
    )
    free.json_retries = 0
    with pytest.raises(KinjectError, match="no valid JSON reply"):
        free.chat(HELLO, schema=Unbounded)


class Unbounded(BaseModel):
    count: int  # no bounds: not a choice kinject can list


def _continuation_logprob(chat, prompt: str, continuation: str) -> float:
    import torch

    prefix = chat.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = chat.tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    assert whole[: len(prefix)] == prefix  # the prompt tokenizes the same alone
    with torch.no_grad():
        logits = chat.model(input_ids=torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[i - 1, whole[i]] for i in range(len(prefix), len(whole))))


def test_a_key_with_a_line_break_is_refused_without_showing_it(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET + "\r\nX-Other: 1")
    with FakeOpenAI(unused) as server, pytest.raises(KinjectError) as error:
        client(server, tmp_path).chat(HELLO)
    assert "OPENAI_API_KEY holds a space or control character" in str(error.value)
    assert SECRET not in str(error.value) and server.requests == []
    monkeypatch.setenv("OPENAI_API_KEY", SECRET + "\r\n")  # a CRLF .env line: trimmed
    with FakeOpenAI(unused) as server:
        server.script = [Reply(body=recorded("hello.json"))]
        client(server, tmp_path).chat(HELLO)
        assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize(
    "generated, value",
    [
        ('Paris", "options', "Paris"),
        ("Caf\\u00e9 de Flore\n", "Café de Flore"),  # a JSON escape the model wrote, decoded
        ('He said \\"', "He said"),  # an escaped quote ends the value: no stray backslash
        ("a\\qb", "a\\qb"),  # not a valid escape: kept as written
    ],
)
def test_a_written_string_is_the_models_text_up_to_its_closing_quote(generated, value):
    from kinject.llm.guided import string_value

    assert string_value(generated) == value


def test_schemas_the_writer_cannot_finish_are_left_to_free_generation():
    from kinject.datasets.paraphrases import ParaphraseReply
    from kinject.llm.guided import UnsupportedSchema, check_supported

    paraphrases = ParaphraseReply.model_json_schema()  # a list of unsaid length
    with pytest.raises(UnsupportedSchema, match="maxItems"):
        check_supported(paraphrases, paraphrases)
    recursive = {
        "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }
    with pytest.raises(UnsupportedSchema, match="recursive"):
        check_supported(recursive, recursive)
    too_many = {"type": "array", "maxItems": 3, "uniqueItems": True, "items": {"enum": [1, 2]}}
    with pytest.raises(UnsupportedSchema, match="more unique items"):
        check_supported(too_many, too_many)
    optional = {"anyOf": [{"type": "null"}, {"type": "string"}]}  # its first writable branch
    check_supported(optional, optional)
