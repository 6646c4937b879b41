"""Safety (issue 8, part 4), each rule checked against the real thing:

* models load without running a repository's code (``trust_remote_code``) and from safetensors
  only (``allow_pickle`` opts in to pickle files); training checkpoints are read with
  ``weights_only=True``;
* kinject's source calls no ``pickle``/``eval``/``exec``/unsafe ``torch.load``/``yaml.load``/
  ``shell=True`` (an ``ast`` scan that names file:line);
* API keys and tokens planted in the environment appear in no file, output or error message
  of the LLM commands (failing requests included) or of a ``kinject run`` and its report;
* corpus ingestion follows no symbolic link out of the source folder;
* corpus and question text is escaped in every HTML file kinject writes.

What was checked is counted in ``SUMMARY``, printed at the end of the session by
``pytest_terminal_summary`` in conftest.py.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_llama
from kinject.config import EmbedderConfig, ModelSpec
from kinject.errors import KinjectError
from kinject.models.loading import load_causal_lm
from test_dataset_generation import kb_dir, responder  # noqa: F401  (kb_dir: a fixture)
from test_llm import FakeOpenAI, Reply, completion, recorded

SUMMARY: list[str] = []  # one line per check, printed by conftest's pytest_terminal_summary
SRC = Path(__file__).resolve().parent.parent / "src" / "kinject"


def _cli(*args: str, env: dict[str, str] | None = None):
    from kinject.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- model loading


@pytest.fixture(scope="module")
def pickle_only_model(tmp_path_factory, bpe_tokenizer) -> tuple[Path, dict]:
    """A tiny Llama whose weights are only ``pytorch_model.bin`` (a pickle), with its tokenizer,
    and the state dict it holds."""
    model = tiny_llama(bpe_tokenizer, seed=3)
    folder = tmp_path_factory.mktemp("pickle-model")
    model.config.save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    assert not list(folder.glob("*.safetensors"))
    return folder, state


def test_a_pickle_only_model_is_refused_unless_allow_pickle(pickle_only_model, tmp_path):
    folder, state = pickle_only_model
    with pytest.raises(KinjectError) as refused:
        load_causal_lm(ModelSpec(path=str(folder), device="cpu"))
    message = str(refused.value)
    assert f"'{folder}'" in message and "pytorch_model.bin" in message
    assert "allow_pickle: true" in message and "safetensors" in message

    # through the command line: one line naming the folder and the switch, exit 2
    world = tmp_path / "task.jsonl"
    world.write_text(
        json.dumps({"id": "q1", "question": "Where?", "choices": ["a", "b"], "answer": 0}) + "\n"
    )
    model = {"path": str(folder), "device": "cpu"}
    config = _write_yaml(tmp_path / "eval.yaml", {"model": model, "tasks": [{"path": str(world)}]})
    result = _cli("eval", "--config", str(config), "--out", str(tmp_path / "refused"))
    assert result.exit_code == 2, result.output
    assert "pytorch_model.bin" in result.output and "allow_pickle: true" in result.output

    # opted in: the same weights, and the switch is kept in the run's config.yaml
    loaded, _ = load_causal_lm(ModelSpec(path=str(folder), device="cpu", allow_pickle=True))
    for name, tensor in state.items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    config = _write_yaml(
        tmp_path / "eval.yaml",
        {"model": {**model, "allow_pickle": True}, "tasks": [{"path": str(world)}]},
    )
    result = _cli("eval", "--config", str(config), "--out", str(tmp_path / "allowed"))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "allowed" / "config.yaml").read_text())
    assert saved["model"]["allow_pickle"] is True
    SUMMARY.append(
        "safety: a pickle-only model (pytorch_model.bin) refused by the library and "
        "`kinject eval`, loaded bit-identical with allow_pickle: true"
    )


def test_switches_left_off_are_not_written_so_hashes_stay_the_same():
    spec = ModelSpec(path="some/model")
    assert set(spec.model_dump()) == {"path", "dtype", "device", "revision", "adapter"}
    on = ModelSpec(path="some/model", trust_remote_code=True, allow_pickle=True)
    assert on.model_dump()["trust_remote_code"] is True and on.model_dump()["allow_pickle"]
    assert ModelSpec.model_validate(on.model_dump()) == on


def test_a_pickle_only_adapter_is_refused_unless_allow_pickle(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from kinject.models.loading import peft_wrapping

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    with peft_wrapping():
        lora = get_peft_model(
            base,
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        )
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero: make the adapter change the model
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    expected = lora.merge_and_unload().state_dict()
    weights = load_file(adapter / "adapter_model.safetensors")
    torch.save(weights, adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()

    spec = ModelSpec(path=str(tiny_llama_dir), adapter=str(adapter), device="cpu")
    with pytest.raises(KinjectError) as refused:
        load_causal_lm(spec)
    message = str(refused.value)
    assert f"adapter folder '{adapter}'" in message and "adapter_model.bin" in message
    assert "allow_pickle: true" in message

    merged, _ = load_causal_lm(spec.model_copy(update={"allow_pickle": True}))
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    changed = [n for n, t in merged.state_dict().items() if not torch.equal(t, plain[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    SUMMARY.append(
        "safety: a pickle-only LoRA adapter (adapter_model.bin) refused, merged with "
        "allow_pickle: true"
    )


CUSTOM_CONFIG = """
from pathlib import Path
Path({marker!r}).write_text("the repository's code ran")
from transformers import LlamaConfig
class MarkedConfig(LlamaConfig):
    model_type = "marked_llama"
"""
CUSTOM_MODEL = """
from transformers import LlamaForCausalLM
from .configuration_marked import MarkedConfig
class MarkedForCausalLM(LlamaForCausalLM):
    config_class = MarkedConfig
"""


def test_a_models_own_code_runs_only_with_trust_remote_code(tiny_llama_dir, tmp_path, monkeypatch):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, folder)
    marker = tmp_path / "RAN"
    (folder / "configuration_marked.py").write_text(CUSTOM_CONFIG.format(marker=str(marker)))
    (folder / "modeling_marked.py").write_text(CUSTOM_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "marked_llama"
    config["architectures"] = ["MarkedForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "configuration_marked.MarkedConfig",
        "AutoModelForCausalLM": "modeling_marked.MarkedForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(KinjectError) as refused:
        load_causal_lm(ModelSpec(path=str(folder), device="cpu"))
    message = str(refused.value)
    assert f"'{folder}'" in message and "trust_remote_code: true" in message
    assert not marker.exists()

    # opted in, the code runs (copied into a modules cache kept inside tmp_path)
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    model, _ = load_causal_lm(ModelSpec(path=str(folder), device="cpu", trust_remote_code=True))
    assert type(model).__name__ == "MarkedForCausalLM" and marker.exists()
    SUMMARY.append(
        "safety: a model shipping its own code refused without running it, run with "
        "trust_remote_code: true"
    )


def test_an_embedder_with_pickle_weights_only_is_refused(tmp_path):
    from safetensors.torch import load_file

    from kinject.kb.embedders import make_embedder, resolve_preset

    minilm = Path(resolve_preset(EmbedderConfig()).model)
    folder = tmp_path / "minilm-pickle"
    shutil.copytree(minilm, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(minilm / "model.safetensors"), folder / "pytorch_model.bin")

    embedder = make_embedder(EmbedderConfig(model=str(folder), device="cpu"))
    with pytest.raises(KinjectError) as refused:
        embedder.embed(["a sentence"])
    assert str(folder) in str(refused.value) and "safetensors" in str(refused.value)
    shutil.rmtree(folder)  # 90 MB
    SUMMARY.append("safety: a sentence-transformers embedder with pickle weights only refused")


class _Payload:
    """Unpickling this runs ``Path.write_text(marker, ...)``: what a hostile pickle does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran while unpickling"))


def test_a_checkpoint_holding_code_is_refused_unread(bpe_tokenizer, tmp_path):
    from kinject.training.loop import Schedule, StaleCheckpoint, train

    marker = tmp_path / "RAN"
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    torch.save({"format": 2, "payload": _Payload(marker)}, checkpoint)
    torch.load(checkpoint, weights_only=False)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()

    model = tiny_llama(bpe_tokenizer)
    schedule = Schedule(steps=2, learning_rate=1e-3, warmup_steps=0, weight_decay=0.0)
    ids = torch.tensor([[bpe_tokenizer.bos_token_id, 5, 6, 7]])
    with pytest.raises(StaleCheckpoint) as refused:
        train(
            model,
            lambda step: {"input_ids": ids, "labels": ids},
            schedule,
            bf16=False,
            checkpoint_dir=checkpoint.parent,
            show_progress=False,
        )
    assert str(checkpoint) in str(refused.value) and "not loaded" in str(refused.value)
    assert not marker.exists()
    SUMMARY.append(
        "safety: a training checkpoint carrying a pickle payload refused, payload not run"
    )


# --------------------------------------------------------------------------- source scan

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal"}
ALWAYS_UNSAFE = {
    "eval": "eval()",
    "exec": "exec()",
    "builtins.eval": "eval()",
    "builtins.exec": "exec()",
    "shelve.open": "shelve (pickle)",
    "pandas.read_pickle": "pandas.read_pickle (pickle)",
    "torch.jit.load": "torch.jit.load (runs TorchScript code)",
    "yaml.unsafe_load": "yaml.unsafe_load",
    "yaml.unsafe_load_all": "yaml.unsafe_load_all",
    "yaml.full_load": "yaml.full_load",
    "yaml.full_load_all": "yaml.full_load_all",
    "os.system": "os.system (a shell)",
    "os.popen": "os.popen (a shell)",
}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name, from every import in the module (functions' included)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str) -> tuple[list[str], int]:
    """``file:line: what`` for every unsafe call in ``source``, and the number of calls seen."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found, calls = [], 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        calls += 1
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        module, _, function = name.rpartition(".")
        problem = ALWAYS_UNSAFE.get(name)
        if module.split(".")[0] in PICKLE_MODULES and function in ("load", "loads", "Unpickler"):
            problem = f"{name} (unpickles)"
        elif name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            problem = "torch.load without weights_only=True"
        elif name == "numpy.load" and _is_true(_keyword(node, "allow_pickle")):
            problem = "numpy.load with allow_pickle=True"
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader")
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            loader_name = _dotted(loader, aliases) if loader is not None else None
            if not (loader_name or "").endswith("SafeLoader"):
                problem = f"{name} without SafeLoader"
        elif module == "subprocess" or name.startswith("subprocess."):
            shell = _keyword(node, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and not shell.value):
                problem = f"{name} with shell=True"
        elif function == "from_pretrained" and module.rpartition(".")[2].startswith("Auto"):
            if _keyword(node, "trust_remote_code") is None:
                problem = f"{name} without an explicit trust_remote_code"
            elif (
                "AutoModel" in module
                and _keyword(node, "use_safetensors") is None
                and _keyword(node, "gguf_file") is None  # reads that GGUF file, no pickle
            ):
                problem = f"{name} without use_safetensors"
        elif name == "sentence_transformers.SentenceTransformer":
            if _keyword(node, "trust_remote_code") is None:
                problem = "SentenceTransformer without an explicit trust_remote_code"
            elif _keyword(node, "model_kwargs") is None:
                problem = "SentenceTransformer without model_kwargs={'use_safetensors': True}"
        if problem:
            found.append(f"{filename}:{node.lineno}: {problem}")
    return found, calls


UNSAFE_SNIPPET = """\
import pickle, yaml, subprocess, os, torch
import numpy as np
import cloudpickle as cp
from pickle import loads as unpickle
from transformers import AutoModelForCausalLM, AutoTokenizer
from sentence_transformers import SentenceTransformer
pickle.load(handle)
unpickle(data)
cp.loads(data)
eval(text)
exec(text)
torch.load(path)
torch.load(path, weights_only=False)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.full_load(text)
subprocess.run(command, shell=True)
os.system(command)
np.load(path, allow_pickle=True)
AutoTokenizer.from_pretrained(path)
AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
SentenceTransformer(path)
torch.jit.load(path)
"""
SAFE_SNIPPET = """\
import subprocess, torch, yaml
import numpy as np
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from sentence_transformers import SentenceTransformer
model.eval()
torch.load(path, map_location="cpu", weights_only=True)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.CSafeLoader)
subprocess.run(["git", "rev-parse", "HEAD"], check=False)
subprocess.run(command, shell=False)
np.load(path)
AutoTokenizer.from_pretrained(path, trust_remote_code=False)
AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust, use_safetensors=True)
PeftModel.from_pretrained(model, adapter)
SentenceTransformer(path, trust_remote_code=False, model_kwargs={"use_safetensors": True})
json.loads(text)
"""


def test_the_scan_finds_each_unsafe_call_and_passes_safe_ones():
    found, _ = unsafe_calls(UNSAFE_SNIPPET, "snippet.py")
    lines = [int(entry.split(":")[1]) for entry in found]
    assert lines == list(range(7, 24)), found  # every line from pickle.load on, once
    assert unsafe_calls(SAFE_SNIPPET, "safe.py")[0] == []


def test_kinject_calls_no_pickle_eval_exec_or_unsafe_loader():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    problems, calls = [], 0
    for path in files:
        found, seen = unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))
        problems += found
        calls += seen
    assert problems == [], "\n".join(problems)
    SUMMARY.append(
        f"safety: source scan: {len(files)} files, {calls:,} calls, 0 unsafe (pickle, eval/exec, "
        "torch.load without weights_only, yaml.load without SafeLoader, shell=True, "
        "from_pretrained without trust_remote_code/use_safetensors)"
    )


def test_no_command_shows_local_variables_in_a_traceback():
    """typer can print every frame's local variables (an API key among them) on a crash."""
    from kinject import cli

    apps = [value for value in vars(cli).values() if type(value).__name__ == "Typer"]
    assert len(apps) >= 5
    assert all(app.pretty_exceptions_show_locals is False for app in apps)


# --------------------------------------------------------------------------- secrets

OPENAI_KEY = "sk-test-PLANTED-4f9c2a7e81d3b6054c9e2f7a1b8d3e6f"
HF_TOKEN = "hf_PLANTEDtokenQ7w3Zr9Lk2Xv8Nb5Mc1Jd6Hs4"
SECRETS = {"OPENAI_API_KEY": OPENAI_KEY, "HF_TOKEN": HF_TOKEN, "HUGGING_FACE_HUB_TOKEN": HF_TOKEN}


def _fragments(secret: str, width: int = 12) -> set[str]:
    """Every ``width``-character piece of ``secret``: a cut or partly masked key is a leak."""
    return {secret[i : i + width] for i in range(len(secret) - width + 1)}


FRAGMENTS = _fragments(OPENAI_KEY) | _fragments(HF_TOKEN)


def _leaks(text: str) -> list[str]:
    return sorted(piece for piece in FRAGMENTS if piece in text)


class Grep:
    """Counts what was searched for the planted secrets; collects what leaked."""

    def __init__(self):
        self.files = self.texts = 0
        self.leaks: list[str] = []

    def folder(self, folder: Path) -> None:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                self.files += 1
                found = _leaks(path.read_bytes().decode("utf-8", "replace"))
                self.leaks += [f"{path}: {piece}" for piece in found]

    def text(self, where: str, text: str) -> None:
        self.texts += 1
        self.leaks += [f"{where}: {piece}" for piece in _leaks(text)]

    def error(self, where: str, error: BaseException) -> None:
        for form in (str(error), repr(error), "".join(traceback.format_exception(error))):
            self.text(where, form)


def _straddling(prefix_length: int) -> str:
    """A body whose cut at ``prefix_length`` characters falls inside the key (19 of its
    characters before the cut: the body is sent JSON-encoded, one quote first)."""
    return "x" * (prefix_length - 25) + f" key {OPENAI_KEY} rejected"


def _echo_key_in_questions(body: dict) -> Reply:
    """An endpoint that writes the request's key into its reply text (a debugging proxy)."""
    reply = responder(body)
    content = json.loads(reply.body["choices"][0]["message"]["content"])
    if "questions" in content:
        content["questions"][0]["question"] += f" (served for {OPENAI_KEY})"
    return Reply(body=completion(json.dumps(content)))


FAILURES = {
    # name: (responder, what the one-line error says)
    "401, key echoed in the JSON error": (
        lambda body: Reply(
            401,
            {"error": {**recorded("error_401.json")["error"], "message": f"Bad key {OPENAI_KEY}"}},
        ),
        "HTTP 401",
    ),
    "401, key cut by the 300-character excerpt": (
        lambda body: Reply(401, _straddling(300)),  # type: ignore[arg-type]
        "HTTP 401",
    ),
    "500 every time, key echoed": (
        lambda body: Reply(500, {"error": {"message": f"upstream saw Bearer {OPENAI_KEY}"}}),
        "gave up after 2 attempts",
    ),
    "200 that is no chat.completion, key cut at 200 characters": (
        lambda body: Reply(200, _straddling(200)),  # type: ignore[arg-type]
        "not a chat.completion reply",
    ),
}


def test_llm_commands_write_and_say_no_planted_key(kb_dir, tmp_path, monkeypatch, capfd):  # noqa: F811
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    llm_yaml = _write_yaml(
        tmp_path / "llm.yaml",
        {"model": "gpt-4o", "cache_dir": str(tmp_path / "replies"), "backoff_s": 0,
         "max_retries": 1},
    )  # fmt: skip
    grep = Grep()
    out = tmp_path / "out"
    runs = 0

    for name, (answer, said) in FAILURES.items():
        with FakeOpenAI(answer) as server:
            url = ["--llm", str(llm_yaml), "--base-url", server.base_url]
            target = out / f"failed-{runs}.jsonl"
            result = _cli("questions", "generate", str(kb_dir), "--out", str(target), *url)
        runs += 1
        assert result.exit_code == 2, (name, result.output)
        assert said in result.output, (name, result.output)
        assert server.requests[0]["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"
        grep.text(f"{name}: output", result.output)

    # the same failure through the library: the exception, its repr and traceback
    from kinject.datasets.questions import QuestionOptions, generate_questions
    from kinject.llm.client import llm_config, make_chat

    with FakeOpenAI(FAILURES["401, key echoed in the JSON error"][0]) as server:
        chat = make_chat(llm_config(llm_yaml, base_url=server.base_url), sleep=lambda s: None)
        with pytest.raises(KinjectError) as raised:
            generate_questions(kb_dir, out / "lib.jsonl", chat, QuestionOptions(), False)
    grep.error("library 401", raised.value)

    # an endpoint echoing the key inside a valid reply: nothing of it is cached or written
    with FakeOpenAI(_echo_key_in_questions) as server:
        url = ["--llm", str(llm_yaml), "--base-url", server.base_url]
        result = _cli("questions", "generate", str(kb_dir), "--out", str(out / "echo.jsonl"), *url)
    runs += 1
    assert result.exit_code == 0, result.output
    grep.text("echoing endpoint: output", result.output)

    # normal runs of both commands
    with FakeOpenAI(responder) as server:
        url = ["--llm", str(llm_yaml), "--base-url", server.base_url]
        result = _cli("questions", "generate", str(kb_dir), "--out", str(out / "q.jsonl"), *url)
        assert result.exit_code == 0, result.output
        grep.text("questions: output", result.output)
        para = ["--out", str(out / "para.jsonl"), "--validation-chunks", "1"]
        para += ["--validation-out", str(out / "validation.jsonl")]
        result = _cli("paraphrase", str(kb_dir), "--n", "2", *para, *url)
        assert result.exit_code == 0, result.output
        grep.text("paraphrase: output", result.output)
    runs += 2
    assert (out / "q.jsonl").stat().st_size and (out / "para.jsonl").stat().st_size

    captured = capfd.readouterr()  # what reached the process's own stdout and stderr
    grep.text("stdout", captured.out)
    grep.text("stderr", captured.err)
    grep.folder(tmp_path)  # outputs, the reply cache, the config
    grep.folder(kb_dir)
    assert len(list((tmp_path / "replies").rglob("*.json"))) >= 5  # the cache was searched
    assert grep.leaks == [], "\n".join(grep.leaks)
    SUMMARY.append(
        f"safety: secrets: {len(SECRETS)} planted ({', '.join(SECRETS)}); {runs} LLM command "
        f"runs ({len(FAILURES)} failing requests, 1 endpoint echoing the key), "
        f"{grep.files} files and {grep.texts} outputs/messages searched for any 12 characters "
        "of them: none found"
    )


# --------------------------------------------------------------------------- a planted run

SCRIPT = "<script>alert('kinject')</script>"
IMG = '<img src=x onerror="alert(2)">'


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, tiny_llama_dir) -> dict:
    """A `kinject run` + `kinject report` with secrets in the environment and HTML in the corpus,
    the questions, the options and the open answers."""
    base = tmp_path_factory.mktemp("planted")
    people = ["Ada", "Bruno", "Clara"]
    corpus = _jsonl(
        base / "corpus.jsonl",
        [{"id": f"d{i}", "title": f"{SCRIPT} {p}", "text": f"{p} was born in Orm. {SCRIPT} {IMG}"}
         for i, p in enumerate(people)],
    )  # fmt: skip
    mc = _jsonl(
        base / "mc.jsonl",
        [{"id": f"m{i}", "question": f"{SCRIPT} Where was {p} born?",
          "choices": [f"Orm {IMG}", "Halden", "Tull", "Brask"], "answer": 0, "doc_ids": [f"d{i}"]}
         for i, p in enumerate(people)],
    )  # fmt: skip
    open_task = _jsonl(
        base / "open.jsonl",
        [{"id": f"o{i}", "question": f"Where was {p} born? {IMG}", "answers": [f"Orm {SCRIPT}"],
          "doc_ids": [f"d{i}"]}
         for i, p in enumerate(people)],
    )  # fmt: skip
    experiment = _write_yaml(
        base / "experiment.yaml",
        {
            "name": f"planted {SCRIPT}",
            "models": [{"label": "tiny", "path": str(tiny_llama_dir), "device": "cpu"}],
            "tasks": [
                {"name": "mc", "path": str(mc)},
                {"name": "open", "format": "open_jsonl", "path": str(open_task)},
            ],
            "arms": ["base", "oracle"],
            "corpus": str(corpus),
            "shots": [0],
            "scoring": {"max_new_tokens": 4},
            "bootstrap_resamples": 100,
        },
    )
    run = base / "run"
    env = dict(SECRETS)
    ran = _cli("run", str(experiment), "--out", str(run), env=env)
    assert ran.exit_code == 0, ran.output
    reported = _cli("report", str(run), env=env)
    assert reported.exit_code == 0, reported.output
    return {"run": run, "outputs": [ran.output, reported.output]}


def test_a_run_folder_and_its_report_hold_no_planted_secret(planted_run):
    grep = Grep()
    for number, text in enumerate(planted_run["outputs"]):
        grep.text(f"command {number}", text)
    grep.folder(planted_run["run"])
    for env in (planted_run["run"] / "env.json", planted_run["run"] / "models/base/env.json"):
        assert json.loads(env.read_text())["packages"]["torch"]  # written, and searched
    assert grep.leaks == [], "\n".join(grep.leaks)
    SUMMARY.append(
        f"safety: secrets: a `kinject run` and `kinject report` with them in the environment: "
        f"{grep.files} files of the run folder (env.json, config.yaml, records, report) searched, "
        "none found"
    )


def _unescaped(text: str) -> list[str]:
    lowered = text.lower()
    return [tag for tag in ("<script", "<img", 'onerror="alert') if tag in lowered]


def test_corpus_and_question_text_is_escaped_in_the_report(planted_run, tmp_path):
    from kinject.experiments.report import write_report

    run = tmp_path / "run"
    shutil.copytree(planted_run["run"], run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert _unescaped(page) == []
    escaped_script = "&lt;script&gt;alert(&#x27;kinject&#x27;)&lt;/script&gt;"
    assert escaped_script in page  # the experiment's name, questions, open answers
    assert "Orm &lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page  # an option
    samples = page.split('<section id="samples">')[1]
    assert samples.count(escaped_script) >= 2  # an MC question and an open question's answer

    # a model's open answer is model output: plant HTML there too
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    planted = 0
    for record in records:
        if "prediction" in record:
            record["prediction"] = f"{IMG} {SCRIPT}"
            planted += 1
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    html_path, md_path = write_report(run)
    page = html_path.read_text(encoding="utf-8")
    assert _unescaped(page) == [] and _unescaped(md_path.read_text(encoding="utf-8")) == []
    shown = page.split('<section id="samples">')[1].count("&lt;img src=x onerror=")
    assert shown >= 2  # the open questions' predictions in the sample table
    SUMMARY.append(
        f"safety: HTML: report.html of a run with <script>/<img onerror> planted in its corpus, "
        f"questions, options, open answers and {planted} model answers: all escaped"
    )


HTML_WRITERS = {"experiments/report.py"}  # each with a planted-payload test (above, test_report)
HTML_READERS = {"kb/ingest.py"}


def test_every_html_writer_is_known():
    """A new file that names .html output must get a planted-payload test, then be listed."""
    naming = set()
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and re.search(r"\.html?\b", node.value)
            ):
                naming.add(path.relative_to(SRC).as_posix())
    assert naming == HTML_WRITERS | HTML_READERS, sorted(naming)


# --------------------------------------------------------------------------- symlinks


def _links_warned_about(output: str) -> list[Path]:
    return sorted(
        Path(line.removeprefix("warning: ").split(":")[0])
        for line in output.splitlines()
        if line.startswith("warning: ") and "symbolic link" in line
    )


def test_kb_build_and_update_follow_no_link_out_of_the_source(tmp_path):
    from kinject.kb.store import KnowledgeBase

    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text("OUTSIDE-SECRET the payroll file.")
    (outside / "folder" / "more.md").write_text("OUTSIDE-SECRET another file.")
    source = tmp_path / "source"
    (source / "notes" / "deep").mkdir(parents=True)
    (source / "notes" / "a.txt").write_text("Ada Kessel founded the Orm observatory.")
    (source / "notes" / "deep" / "b.md").write_text("The Tarsk glacier feeds Lake Morna.")
    links = {
        "file_out.txt": outside / "secret.txt",  # a file outside
        "folder_out": outside / "folder",  # a folder outside
        "notes/deep/up.txt": Path("../../../outside/secret.txt"),  # relative, climbing out
        "notes/deep/loop": Path("../.."),  # back to the source's root
        "broken.txt": source / "missing.txt",
        "inside.txt": Path("notes/a.txt"),  # inside the source: followed
    }
    for name, target in links.items():
        (source / name).symlink_to(target)
    refused = sorted(source / name for name in links if name != "inside.txt")

    kb = tmp_path / "kb"
    result = _cli("kb", "build", str(source), "--out", str(kb))
    assert result.exit_code == 0, result.output
    assert _links_warned_about(result.output) == refused, result.output
    opened = KnowledgeBase.open(kb)
    assert not any("OUTSIDE-SECRET" in chunk.text for chunk in opened.chunks)
    ids = {row["id"] for row in opened.manifest}
    assert "inside.txt" in ids and ids <= {"inside.txt", "notes/a.txt", "notes/deep/b.md"}

    (source / "notes" / "later_out.md").symlink_to(outside / "folder" / "more.md")
    result = _cli("kb", "update", str(kb), str(source))
    assert result.exit_code == 0, result.output
    later = source / "notes" / "later_out.md"
    assert _links_warned_about(result.output) == sorted([*refused, later]), result.output
    assert not any("OUTSIDE-SECRET" in c.text for c in KnowledgeBase.open(kb).chunks)
    SUMMARY.append(
        f"safety: symlinks: {len(links) + 1} links in a corpus ({len(refused) + 1} leading out, "
        "into a loop or nowhere): each skipped with a warning naming it by `kb build` and "
        "`kb update`, no outside text in the knowledge base; the link inside followed"
    )
