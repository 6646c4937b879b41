"""Question and paraphrase generation end to end on a tiny knowledge base, against the loopback
OpenAI-compatible server of test_llm.py replaying recorded replies."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kinject.config import LLMConfig
from kinject.datasets.paraphrases import ParaphraseOptions, generate_paraphrases
from kinject.datasets.questions import QuestionOptions, generate_questions, supported
from kinject.errors import KinjectError
from kinject.llm.client import make_chat
from kinject.llm.prompts import load_prompts
from kinject.tasks.loaders import load_mc_jsonl
from kinject.training.data import load_paraphrases, load_units
from test_llm import SECRET, FakeOpenAI, Reply, all_written_text, completion, recorded

DOCUMENTS = {
    "orm": (
        "The Orm observatory stands on Kestrel Hill above the town of Orm. It was founded by "
        "the astronomer Ada Kessel, who raised the money for its first dome from the wool "
        "merchants of the valley. Today the observatory holds seven telescopes, the largest of "
        "them a reflector with a mirror of one and a half metres. Its most famous discovery is "
        "Comet Lind, first seen from the east dome on a cold night in early spring and named "
        "after the assistant who spotted it. Students from the university at Halden spend their "
        "summers at Orm, measuring the brightness of variable stars and keeping the old logbooks."
    ),
    "tarsk": (
        "The Tarsk glacier is nineteen kilometres long and lies in the high valley beneath Mount "
        "Ulvar. Its meltwater fills Lake Morna every summer, and from the lake flows the river "
        "Velka, which runs through the town of Orm before reaching the sea. The glacier has lost "
        "almost a third of its ice in the last century, and a line of stone markers shows where "
        "its front stood in each decade. Guides from the village of Brask lead walkers onto the "
        "ice from June to September, when the crevasses are easiest to see and to avoid."
    ),
    "velka": (
        "The river Velka rises in Lake Morna and flows through the town of Orm on its way to the "
        "sea. The stone bridge over the Velka at Orm was completed in 1871 and replaced a wooden "
        "crossing that floods had carried away twice. In spring the river is green with fine "
        "glacial silt, and in autumn it runs low and clear. Trout are common in its upper "
        "reaches, where anglers from Halden and Tull fish from the gravel banks. A towpath "
        "follows the river for most of its length and is now a popular route for cyclists."
    ),
}


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory) -> Path:
    from kinject.config import KBConfig
    from kinject.kb.store import KnowledgeBase, SourceOptions, build_kb

    base = tmp_path_factory.mktemp("generation-kb")
    corpus = base / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in DOCUMENTS.items())
    )
    build_kb([corpus], base / "kb", KBConfig(), SourceOptions(show_progress=False))
    chunks = KnowledgeBase.open(base / "kb").chunks
    assert [c.id for c in chunks] == ["orm::0", "tarsk::0", "velka::0"]  # one chunk each
    return base / "kb"


def topic(text: str) -> str:
    """Which document a prompt is about (its first distinctive name)."""
    for name, marker in (("orm", "Orm observatory"), ("tarsk", "Tarsk glacier")):
        if marker in text:
            return name
    return "velka"


def passage(prompt: str) -> str:
    return prompt.split("Passage:\n", 1)[1].split("\n\nQuestions:\n", 1)[0]


def responder(body: dict) -> Reply:
    """Recorded replies for questions and selection; paraphrases made from the request."""
    prompt = body["messages"][-1]["content"]
    if "most specific" in prompt:
        if topic(passage(prompt)) == "orm":
            return Reply(body=recorded("select_orm.json"))
        return Reply(body=completion('{"selected": [1, 2]}'))
    if "multiple-choice questions" in prompt:
        return Reply(body=recorded(f"questions_{topic(passage(prompt))}.json"))
    if "paraphrase" in prompt:
        n = int(re.search(r"Write (\d+) different", prompt).group(1))
        text = passage(prompt)
        seed = body["seed"]
        found = [f"Version {seed}.{i}: {text}" for i in range(n)]
        return Reply(body=completion(json.dumps({"paraphrases": found})))
    raise AssertionError(f"unexpected prompt: {prompt[:100]}")


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def chat_for(server: FakeOpenAI, tmp_path: Path, **settings):
    config = LLMConfig(
        base_url=server.base_url, model="gpt-4o", cache_dir=str(tmp_path / "replies"), **settings
    )
    return make_chat(config, sleep=lambda s: None)


def test_questions_end_to_end(kb_dir, tmp_path, key):
    out = tmp_path / "generated.jsonl"
    with FakeOpenAI(responder) as server:
        report = generate_questions(
            kb_dir, out, chat_for(server, tmp_path), QuestionOptions(), show_progress=False
        )
    # one question call per chunk; a selection call where more than 2 were valid (orm, tarsk)
    assert len(server.requests) == 5
    items = load_mc_jsonl(out)
    assert [item.id for item in items] == [
        "orm::0-q1",
        "orm::0-q4",
        "tarsk::0-q1",
        "tarsk::0-q2",
        "velka::0-q2",  # velka's q1 is tarsk's q1 again: deduped
    ]
    assert [item.doc_ids for item in items] == [
        ("orm",),
        ("orm",),
        ("tarsk",),
        ("tarsk",),
        ("velka",),
    ]
    assert report.dropped == Counter(
        {
            "duplicate options": 1,  # Green / green
            "answer not in chunk": 1,  # salmon: not in the velka text
            "refers to other options": 1,  # All of the above
            "answer": 1,  # "E"
            "duplicate question": 1,
        }
    )
    assert (report.generated, report.not_selected, report.kept) == (12, 2, 5)
    correct = {item.id: item.choices[item.answer] for item in items}
    assert correct["orm::0-q4"] == "Comet Lind" and correct["velka::0-q2"] == "1871"
    positions = Counter(item.answer for item in items)
    assert max(positions.values()) - min(positions[i] for i in range(4)) <= 1
    assert report.positions == [positions[i] for i in range(4)]
    for item in items:  # the options are the recorded ones, reordered
        assert len(set(item.choices)) == 4
    assert not out.with_name(out.name + ".partial.jsonl").exists()
    assert SECRET not in all_written_text(tmp_path)


def test_a_killed_question_run_resumes_without_asking_again(kb_dir, tmp_path, key):
    out = tmp_path / "generated.jsonl"

    def fails_on_velka(body):
        prompt = body["messages"][0]["content"]
        if "multiple-choice questions" in prompt and topic(passage(prompt)) == "velka":
            return Reply(500, recorded("error_500.json"))
        return responder(body)

    with FakeOpenAI(fails_on_velka) as server:  # the same endpoint for both runs
        chat = chat_for(server, tmp_path, cache=False, max_retries=0)
        with pytest.raises(KinjectError, match="HTTP 500"):
            generate_questions(kb_dir, out, chat, show_progress=False)
        assert not out.exists()
        partial = out.with_name(out.name + ".partial.jsonl")
        assert [json.loads(line)["unit"] for line in partial.read_text().splitlines()] == [
            "orm::0",
            "tarsk::0",
        ]
        with partial.open("a") as handle:
            handle.write('{"fingerprint": "torn li')  # a kill in the middle of a line
        server.responder, server.requests = responder, []
        report = generate_questions(kb_dir, out, chat, show_progress=False)
    assert [topic(passage(p)) for p in server.prompts()] == ["velka"]  # finished chunks kept
    assert report.chunks_resumed == 2 and report.kept == 5
    assert len(load_mc_jsonl(out)) == 5
    assert not partial.exists()


def test_min_chars_and_edited_prompts(kb_dir, tmp_path, key):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "questions.txt").write_text(
        "Write $n specific multiple-choice questions (JSON) about:\nPassage:\n$text"
    )
    prompts = load_prompts(folder)
    assert "Write $n specific" in prompts.templates["questions"]
    assert prompts.templates["select"] == load_prompts().templates["select"]  # kept default
    with FakeOpenAI(responder) as server:
        chat = chat_for(server, tmp_path)
        with pytest.raises(KinjectError, match="no chunk has at least 5000 characters"):
            generate_questions(kb_dir, tmp_path / "q.jsonl", chat, QuestionOptions(min_chars=5000))
        generate_questions(
            kb_dir, tmp_path / "q.jsonl", chat, QuestionOptions(), prompts, show_progress=False
        )
    assert server.prompts()[0].startswith("Write 4 specific multiple-choice questions (JSON)")
    (folder / "paraphrase.txt").write_text("Paraphrase $text as $style")
    with pytest.raises(KinjectError, match=r"unknown placeholder\(s\) \$style"):
        load_prompts(folder)


def test_lexical_support_check():
    text = "The stone bridge over the Velka at Orm was completed in 1871 by masons from Tull."
    assert supported("1871", text, 0.5)
    assert supported("Masons from Tull", text, 0.5)
    assert supported("Stone bridges", text, 1.0)  # a trailing s is ignored
    assert not supported("Salmon", text, 0.5)
    assert not supported("Wooden bridges of Halden", text, 0.5)  # 1 of 3 content words
    assert not supported("the", text, 0.5)  # no content word at all


def test_paraphrases_load_for_ft_par_with_a_new_seed_per_call(kb_dir, tmp_path, key):
    out = tmp_path / "paraphrases.jsonl"
    with FakeOpenAI(responder) as server:
        chat = chat_for(server, tmp_path)
        report = generate_paraphrases(
            kb_dir, out, chat, ParaphraseOptions(n=5, per_call=2), show_progress=False
        )
    table = load_paraphrases(out, load_units(kb_dir))
    assert sorted(table) == ["orm::0", "tarsk::0", "velka::0"]
    assert all(len(texts) == 5 for texts in table.values())
    assert table["orm::0"][0].endswith(DOCUMENTS["orm"])
    seeds = [request["body"]["seed"] for request in server.requests]
    assert len(seeds) == 9 == report.calls  # 2 + 2 + 1 paraphrases per chunk
    assert len(set(seeds)) == len(seeds)  # a new seed per call
    asked = [int(re.search(r"Write (\d+) different", p).group(1)) for p in server.prompts()]
    assert asked == [2, 2, 1] * 3


def test_repeated_paraphrases_are_an_error(kb_dir, tmp_path, key):
    same = Reply(body=completion('{"paraphrases": ["One and the same."]}'))
    with FakeOpenAI(lambda body: same) as server:
        chat = chat_for(server, tmp_path)
        with pytest.raises(KinjectError, match="only 1 distinct paraphrases of 3 after 6 calls"):
            generate_paraphrases(
                kb_dir,
                tmp_path / "p.jsonl",
                chat,
                ParaphraseOptions(n=3, per_call=1, max_calls=6),
                show_progress=False,
            )


def test_cli_questions_and_paraphrase_with_validation(kb_dir, tmp_path, key):
    from kinject.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["questions", "generate", "--help"]).output
    assert "kinject questions generate kb/docs --out tasks/generated.jsonl" in help_text
    assert (
        "kinject paraphrase kb/docs --n 10" in runner.invoke(app, ["paraphrase", "--help"]).output
    )

    llm_yaml = tmp_path / "llm.yaml"
    llm_yaml.write_text(f"model: gpt-4o\ncache_dir: {tmp_path / 'replies'}\nbackoff_s: 0\n")
    out = tmp_path / "tasks" / "generated.jsonl"
    with FakeOpenAI(responder) as server:
        url = ["--llm", str(llm_yaml), "--base-url", server.base_url]
        result = runner.invoke(app, ["questions", "generate", str(kb_dir), "--out", str(out), *url])
        assert result.exit_code == 0, result.output
        assert "questions: 12 generated, 5 kept, 2 not chosen as most specific" in result.output
        assert "dropped (duplicate question): 1" in result.output
        assert len(load_mc_jsonl(out)) == 5

        para = tmp_path / "para.jsonl"
        validation = tmp_path / "validation.jsonl"
        args = ["paraphrase", str(kb_dir), "--n", "2", "--out", str(para), *url]
        args += ["--validation-chunks", "2", "--validation-out", str(validation)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert sorted(load_paraphrases(para, load_units(kb_dir))) == ["orm::0", "tarsk::0", "velka::0"]
    items = load_mc_jsonl(validation)
    sources = {item.id.split("~v")[0] for item in items}
    assert len(sources) == 2  # two chunks picked, each paraphrased twice
    assert all(item.doc_ids == (item.id.split("::")[0],) for item in items)
    asked = [p for p in server.prompts() if "Write 4 specific" in p and "Version" in p]
    assert len(asked) == 4  # questions asked about each of 2 paraphrases of 2 chunks
    # the recorded replies repeat for a chunk's second paraphrase: deduped, said in the summary
    assert {item.id.split("-q")[0].split("~")[1] for item in items} == {"v1"}
    assert "validation: 2 chunks" in result.output
    assert "dropped (duplicate question): " in result.output.split("validation:")[1]
    assert SECRET not in all_written_text(tmp_path)

    result = runner.invoke(app, ["questions", "generate", str(kb_dir), "--out", str(out)])
    assert result.exit_code == 2 and "model is required" in result.output


def test_a_partial_line_holding_a_unicode_line_separator_reads_back(tmp_path):
    from kinject.datasets.resume import PartialResults

    out = tmp_path / "p.jsonl"
    partial = PartialResults(out, "fp")
    partial.add("c1", "h1", {"paraphrases": ["one\u2028two", "three\u0085four"]})
    partial.add("c2", "h2", {"paraphrases": ["five"]})
    again = PartialResults(out, "fp")
    assert len(again) == 2
    assert again.get("c1", "h1") == {"paraphrases": ["one\u2028two", "three\u0085four"]}


def test_an_edited_prompt_must_keep_every_placeholder(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "select.txt").write_text("Pick the $keep best of $count about:\n$text")
    with pytest.raises(KinjectError, match=r"select.txt: the template must contain \$questions"):
        load_prompts(folder)
    (folder / "select.txt").write_text("Pick $keep of $count:\n$questions\nabout $text costing $")
    with pytest.raises(KinjectError, match="a '\\$' that is not a placeholder"):
        load_prompts(folder)


@pytest.mark.parametrize(
    "question, options, reason",
    [
        ("A", ["Orm", "Tarsk", "Velka", "Halden"], "empty question"),  # no content word
        ("What is the passage about?", ["A", "B", "C", "D"], "option is a letter"),
        (
            "Where does the Velka rise?",
            ["Lake Morna", "B.", "Tull", "Halden"],
            "option is a letter",
        ),
        ("Where does the Velka rise?", ["Lake Morna", "Orm", "Tull", "Halden"], None),
    ],
)
def test_a_question_that_copies_the_reply_form_is_dropped(question, options, reason):
    """What SmolLM2-135M-Instruct wrote on SQuAD articles, written to the schema (docs/llm-datasets.md)."""
    from kinject.datasets.questions import DraftQuestion, check

    draft = DraftQuestion(question=question, options=options, answer="A")
    kept, why = check(draft, DOCUMENTS["velka"], 0.5)
    assert why == reason and (kept is None) == (reason is not None)
