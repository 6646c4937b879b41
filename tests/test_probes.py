"""Entity-rename probes (issue 9) and the cloze prompt style.

Renaming must be exact (case forms, possessives, word boundaries, counts) and reversible;
the probe files must pair question for question across the two names; bad maps and bad
templates fail with one line naming the file and the probe; the example templates build on
the real tiny shakespeare; and a cloze task scores through ``kinject eval`` on a tiny model
exactly as lm-evaluation-harness scores the same layout.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import SHARED_DATA
from kinject.cli import app
from kinject.config import EvalConfig, RenameConfig, load_config, parse_config
from kinject.errors import KinjectError
from kinject.probes.rename import (
    RenameError,
    RenameMap,
    build_rename_probes,
    group_passages,
    parse_rename,
    rename_fingerprint,
    rename_text,
    split_passages,
    split_sections,
)
from kinject.tasks.items import MCItem, Task
from kinject.tasks.loaders import load_mc_jsonl
from kinject.tasks.prompts import build_prompt
from lm_eval_tasks import CLOZE_TASK_YAML
from near_ties import TIE, margin

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rename" / "probes.yaml"
SHAKESPEARE = SHARED_DATA / "tiny_shakespeare" / "input.txt"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------
# renaming


def test_rename_text_renames_whole_words_in_three_case_forms_and_counts_them():
    text = (
        "ROMEO:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
        "Romeo's hand; romeo; Romeo-like; (Romeo).\n"
        "Left: Romeos Romeorama xRomeo Romeo_2 Romeo2 RoMeO ROMEOS.\n"
    )
    renamed = rename_text(text, {"Romeo": "Bob"})
    assert renamed.text == (
        "BOB:\nO Bob, Bob! wherefore art thou Bob?\n"
        "Bob's hand; bob; Bob-like; (Bob).\n"
        "Left: Romeos Romeorama xRomeo Romeo_2 Romeo2 RoMeO ROMEOS.\n"
    )
    assert renamed.counts == {"Romeo": {"Romeo": 6, "ROMEO": 1, "romeo": 1}}
    assert renamed.possessive == {"Romeo": 1}
    assert renamed.total() == 8


def test_several_names_rename_in_one_pass_longest_first():
    rmap = RenameMap.of(["Romeo -> Bob", "Romeo Montague=Carl", "Juliet=Alice"])
    renamed = rename_text("Romeo Montague met Romeo and Juliet; JULIET, ROMEO MONTAGUE.", rmap)
    assert renamed.text == "Carl met Bob and Alice; ALICE, CARL."
    assert renamed.counts["Romeo Montague"]["Romeo Montague"] == 1
    assert renamed.counts["Romeo"] == {"Romeo": 1, "ROMEO": 0, "romeo": 0}


@pytest.mark.parametrize(
    ("spec", "pair"),
    [
        ("Romeo=Bob", ("Romeo", "Bob")),
        ("Romeo -> Bob", ("Romeo", "Bob")),
        (" Friar Laurence->Brother Tim ", ("Friar Laurence", "Brother Tim")),
    ],
)
def test_parse_rename(spec, pair):
    assert parse_rename(spec) == pair


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"Romeo": "Romeo"}, "contains the old name"),
        ({"Romeo": "BOB"}, "fewer case forms"),
        ({"ROMEO": "Bob"}, "different cases"),
        ({"Romeo": "Bob", "Juliet": "Romeo"}, "contains the old name 'Romeo'"),
        ({"Romeo": "Bob", "Juliet": "Bob"}, "the same new name"),
        ({"Romeo": "Bob", "romeo": "carl"}, "are the same name"),
        ({"Romeo": " Bob"}, "begins and ends with a letter"),
        ({"Romeo": "Bob\nCarl"}, "one line"),
        ({}, "empty"),
    ],
)
def test_bad_rename_maps_are_refused(mapping, message):
    with pytest.raises(RenameError, match=message):
        RenameMap(mapping)


def test_bad_rename_spec_is_refused():
    with pytest.raises(RenameError, match="expected 'Old=New' or 'Old -> New'"):
        parse_rename("Romeo")


OLD_NAMES = ["Romeo", "Petruchio", "Friar Laurence", "Kate"]
NEW_NAMES = ["Bob", "Carl", "Brother Tim", "Zed"]
PIECES = st.sampled_from(
    [" ", "\n", "\n\n", ",", "'s", "s", "x", "_", "-", "é", "!", "ROMEO:", "KATE", "kate"]
)


@st.composite
def renaming_cases(draw):
    index = draw(st.integers(0, len(OLD_NAMES) - 1))
    old, new = OLD_NAMES[index], NEW_NAMES[index]
    forms = st.sampled_from([old, old.upper(), old.lower(), old[:-1], old + "o"])
    parts = draw(st.lists(st.one_of(forms, PIECES, st.text(max_size=4)), max_size=30))
    return old, new, "".join(parts)


@settings(max_examples=300, deadline=None)
@given(renaming_cases())
def test_renaming_there_and_back_restores_the_text(case):
    old, new, text = case
    forward = RenameMap({old: new})
    if forward.new_pattern.search(text):  # the new name is already in the text: not reversible
        return
    renamed = rename_text(text, forward)
    assert not forward.pattern.search(renamed.text)  # no whole-word old name is left
    whole_words = len(
        re.findall(
            rf"(?<!\w)(?:{re.escape(old)}|{re.escape(old.upper())}|"
            rf"{re.escape(old.lower())})(?!\w)",
            text,
        )
    )
    assert renamed.total() == whole_words
    back = rename_text(renamed.text, {new: old})
    assert back.text == text
    assert back.total() == renamed.total()


def test_passages_are_grouped_into_documents_without_cutting_one():
    text = "A:\none\n\nB:\ntwo\n \n\n\nC:\n" + "x" * 50 + "\n\nD:\nfour\n"
    passages = split_passages(text)
    assert passages == ["A:\none", "B:\ntwo", "C:\n" + "x" * 50, "D:\nfour"]
    assert group_passages(passages, 20) == ["A:\none\n\nB:\ntwo", "C:\n" + "x" * 50, "D:\nfour"]
    assert group_passages(passages, 10_000) == ["\n\n".join(passages)]
    assert split_sections("A:\none\n\nB:\ntwo\n\n \nC:\nthree\n\n\n\n") == [
        "A:\none\n\nB:\ntwo",
        "C:\nthree",
    ]


# ---------------------------------------------------------------------------------------------
# building probes from a small text written here

PLAY = """ROMEO:
I am Romeo, a Montague, and I love Juliet.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?

TYBALT:
Romeo's sword slew me. Romeos everywhere!

NURSE:
Petruchio came from Verona. Kate is his wife.

PETRUCHIO:
I am Petruchio of Verona.
"""

TEMPLATES = {
    "entities": {
        "Romeo": [
            {
                "id": "loves",
                "cloze": "{name} loves",
                "answer": "Juliet",
                "distractors": ["Kate", "Rosaline", "Nurse"],
            },
            {
                "cloze": "{name}'s sword slew",
                "answer": "Tybalt",
                "distractors": ["Paris", "Petruchio"],
            },
            {
                "question": "Whom does {name} love?",
                "answer": "Juliet",
                "distractors": ["Kate", "Nurse", "Rosaline"],
            },
            {
                "id": "am",
                "quote": "I am {name}, a",
                "answer": "Montague",
                "distractors": ["Capulet"],
            },
        ],
        "Petruchio": [
            {"cloze": "{name} came from", "answer": "Verona", "distractors": ["Padua", "Pisa"]},
        ],
    },
    "dev": {
        "Kate": [
            {
                "cloze": "{name} is the wife of",
                "answer": "her husband",
                "distractors": ["nobody", "a friar"],
            },
            {"question": "Who is {name}?", "answer": "a wife", "distractors": ["a nurse"]},
        ],
    },
}


@pytest.fixture
def play(tmp_path) -> tuple[Path, Path]:
    corpus = tmp_path / "play.txt"
    corpus.write_text(PLAY, encoding="utf-8")
    templates = tmp_path / "probes.yaml"
    templates.write_text(yaml.safe_dump(TEMPLATES, sort_keys=False), encoding="utf-8")
    return corpus, templates


def test_build_writes_paired_probes_for_both_names(tmp_path, play):
    corpus, templates = play
    out = tmp_path / "out"
    rmap = {"Romeo": "Bob", "Petruchio": "Carl"}
    result = build_rename_probes(corpus, rmap, templates, out, seed=3, doc_chars=60)
    manifest = json.loads((out / "probes.json").read_text())
    assert manifest == result.manifest
    assert manifest["replacements"]["Romeo"] == {
        "new": "Bob",
        "total": 6,
        "forms": {"Romeo -> Bob": 5, "ROMEO -> BOB": 1, "romeo -> bob": 0},
        "possessive": 1,
        "untouched": {"Romeos": 1},
    }
    assert manifest["replacements"]["Petruchio"]["total"] == 3
    assert manifest["probes"] == {
        "Romeo": {"quote": 1, "cloze": 2, "mc": 1},
        "Petruchio": {"quote": 0, "cloze": 1, "mc": 0},
    }
    assert manifest["dev"] == {"quote": 0, "cloze": 1, "mc": 1}
    assert manifest["map"] == rmap and manifest["seed"] == 3

    original, renamed = rows(out / "original.jsonl"), rows(out / "renamed.jsonl")
    assert (
        [d["id"] for d in original]
        == [d["id"] for d in renamed]
        == [f"play-{i:05d}" for i in range(1, len(original) + 1)]
    )
    assert len(original) > 1 and all(d["source"] == "play.txt" for d in original)
    assert "\n\n".join(d["text"] for d in original) == PLAY.strip("\n")
    for before, after in zip(original, renamed):
        assert rename_text(before["text"], rmap).text == after["text"]
    joined = "\n".join(d["text"] for d in renamed)
    assert "BOB:" in joined and "Bob's sword" in joined and "Romeos everywhere" in joined
    assert not re.search(r"\bRomeo\b|\bPetruchio\b|\bPETRUCHIO\b", joined)

    for kind in ("quote", "cloze", "mc"):
        new, old = rows(out / f"{kind}_new.jsonl"), rows(out / f"{kind}_old.jsonl")
        assert [r["id"] for r in new] == [r["id"] for r in old]
        for a, b in zip(new, old):
            assert a["answer"] == b["answer"] and a["subject"] == b["subject"]
            assert a["choices"] == [rename_text(c, rmap).text for c in b["choices"]]
            assert a["question"] == rename_text(b["question"], rmap).text != b["question"]
        load_mc_jsonl(out / f"{kind}_new.jsonl")  # valid kinject task files
    cloze_old = {r["id"]: r for r in rows(out / "cloze_old.jsonl")}
    cloze_new = {r["id"]: r for r in rows(out / "cloze_new.jsonl")}
    assert set(cloze_old) == {"romeo-loves", "romeo-cloze02", "petruchio-cloze01"}
    slew_old, slew_new = cloze_old["romeo-cloze02"], cloze_new["romeo-cloze02"]
    assert (
        slew_old["question"] == "Romeo's sword slew" and slew_new["question"] == "Bob's sword slew"
    )
    assert slew_old["choices"][slew_old["answer"]] == "Tybalt"
    assert "Petruchio" in slew_old["choices"] and "Carl" in slew_new["choices"]  # renamed too
    assert cloze_new["romeo-loves"]["choices"][cloze_new["romeo-loves"]["answer"]] == "Juliet"
    (quote,) = rows(out / "quote_new.jsonl")
    assert quote["id"] == "romeo-am" and quote["question"] == "I am Bob, a"
    assert manifest["files"]["quote_old.jsonl"]["style"] == "cloze"
    (mc,) = rows(out / "mc_new.jsonl")
    assert mc["id"] == "romeo-mc01" and mc["question"] == "Whom does Bob love?"

    assert [r["question"] for r in rows(out / "cloze_dev.jsonl")] == ["Kate is the wife of"]
    assert rows(out / "mc_dev.jsonl")[0]["id"] == "dev-kate-mc01"
    assert rows(out / "entities/romeo/cloze_new.jsonl") == [
        cloze_new["romeo-loves"],
        cloze_new["romeo-cloze02"],
    ]
    assert rows(out / "entities/petruchio/cloze_old.jsonl") == [cloze_old["petruchio-cloze01"]]
    assert not (out / "entities/petruchio/mc_new.jsonl").exists()
    assert set(manifest["files"]) == {str(p.relative_to(out)) for p in out.rglob("*.jsonl")}
    assert manifest["files"]["cloze_new.jsonl"] == {
        "kind": "task",
        "style": "cloze",
        "names": "new",
        "records": 3,
    }


def test_build_is_deterministic_and_the_seed_only_moves_choices(tmp_path, play):
    corpus, templates = play
    rmap = {"Romeo": "Bob", "Petruchio": "Carl"}

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.json*")}

    first = build_rename_probes(corpus, rmap, templates, tmp_path / "a", seed=0)
    before = files(tmp_path / "a")
    again = build_rename_probes(corpus, rmap, templates, tmp_path / "a", seed=0)  # a rebuild
    assert files(tmp_path / "a") == before and again.manifest == first.manifest
    other = build_rename_probes(corpus, rmap, templates, tmp_path / "b", seed=1)
    changed = files(tmp_path / "b")
    for name in ("renamed.jsonl", "original.jsonl", "cloze_dev.jsonl"):  # dev: one choice order
        assert changed[name] == before[name] or name == "cloze_dev.jsonl"
    assert first.manifest["fingerprint"] != other.manifest["fingerprint"]
    orders = [
        [(r["choices"], r["answer"]) for r in rows(tmp_path / folder / "cloze_old.jsonl")]
        for folder in ("a", "b")
    ]
    assert orders[0] != orders[1]  # 3 probes: the same orders under both seeds: 1 in 864
    for (choices_a, answer_a), (choices_b, answer_b) in zip(*orders):
        assert sorted(choices_a) == sorted(choices_b)
        assert choices_a[answer_a] == choices_b[answer_b]
    config = parse_config(
        RenameConfig, {"corpus": str(corpus), "map": rmap, "templates": str(templates)}
    )
    assert rename_fingerprint(config) == first.manifest["fingerprint"]


def test_corpus_jsonl_documents_keep_their_ids(tmp_path, play):
    _, templates = play
    corpus = tmp_path / "kb.jsonl"
    docs = [
        {"id": "d1", "text": "Romeo loves Juliet. Romeo's sword slew Tybalt.", "title": "Romeo"},
        {"id": "d2", "text": "Petruchio came from Verona.", "source": "shrew"},
    ]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    build_rename_probes(corpus, ["Romeo=Bob", "Petruchio=Carl"], templates, tmp_path / "out")
    assert rows(tmp_path / "out" / "renamed.jsonl") == [
        {
            "id": "d1",
            "text": "Bob loves Juliet. Bob's sword slew Tybalt.",
            "source": "kb.jsonl",
            "title": "Bob",
        },
        {"id": "d2", "text": "Carl came from Verona.", "source": "shrew"},
    ]


def test_documents_mentions_keeps_only_documents_naming_a_renamed_entity(tmp_path, play):
    _, templates = play
    corpus = tmp_path / "kb.jsonl"
    docs = [
        {"id": "d1", "text": "ROMEO:\nI love Juliet."},
        {"id": "d2", "text": "The nurse and Tybalt quarrel. Romeos everywhere."},
        {"id": "d3", "text": "Petruchio came from Verona."},
        {"id": "d4", "text": "Kate is a wife."},
    ]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "out"
    args = ["probes", "rename", str(corpus), "--map", "Romeo=Bob", "--map", "Petruchio=Carl"]
    args += ["--templates", str(templates), "--out", str(out), "--documents", "mentions"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "renamed.jsonl: 2 corpus records" in result.output
    assert [row["id"] for row in rows(out / "renamed.jsonl")] == ["d1", "d3"]
    assert [row["text"] for row in rows(out / "original.jsonl")] == [
        "ROMEO:\nI love Juliet.",
        "Petruchio came from Verona.",
    ]
    manifest = json.loads((out / "probes.json").read_text())
    assert manifest["corpus"]["documents"] == 4 and manifest["kept"]["documents"] == 2
    assert manifest["documents"] == "mentions"
    every = build_rename_probes(
        corpus, ["Romeo=Bob", "Petruchio=Carl"], templates, tmp_path / "all"
    )
    assert len(rows(tmp_path / "all" / "renamed.jsonl")) == 4
    assert every.manifest["fingerprint"] != manifest["fingerprint"]
    bad = CliRunner().invoke(app, [*args[:-1], "some"])
    assert bad.exit_code == 2 and "key 'documents'" in bad.output and "'mentions'" in bad.output


def _templates_with(tmp_path: Path, probe: dict, entity: str = "Romeo", section="entities"):
    data = {"entities": {"Romeo": [TEMPLATES["entities"]["Romeo"][0]]}}
    data.setdefault(section, {}).setdefault(entity, []).append(probe)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("probe", "entity", "section", "message"),
    [
        (
            {"cloze": "{name} slew", "answer": "Tybalt", "distractors": ["Paris", "tybalt"]},
            "Romeo",
            "entities",
            r"key 'entities\.Romeo\.1': the answer 'Tybalt' is also a distractor",
        ),
        (
            {"cloze": "Romeo slew", "answer": "Tybalt", "distractors": ["Paris"]},
            "Romeo",
            "entities",
            r"key 'entities\.Romeo\.1': 'Romeo slew' has no \{name\} slot",
        ),
        (
            {"cloze": "{name} slew", "question": "Who?", "answer": "A", "distractors": ["B"]},
            "Romeo",
            "entities",
            "exactly one of 'quote', 'cloze' and 'question'",
        ),
        (
            {"cloze": "{name} slew", "answer": "Tybalt", "distractors": []},
            "Romeo",
            "entities",
            r"key 'entities\.Romeo\.1\.distractors'",
        ),
        (
            {"cloze": "{name} slew", "anwser": "Tybalt", "distractors": ["Paris"]},
            "Romeo",
            "entities",
            r"unknown key 'entities\.Romeo\.1\.anwser'",
        ),
        (
            {"cloze": "{name} slew", "answer": 3, "distractors": ["Paris"]},
            "Romeo",
            "entities",
            r"key 'entities\.Romeo\.1\.answer': Input should be a valid string",
        ),
        (
            {"cloze": "{name} slew", "answer": " Tybalt", "distractors": ["Paris"]},
            "Romeo",
            "entities",
            "no spaces at either end",
        ),
        (
            {"cloze": "{name} was", "answer": "Romeo's own self", "distractors": ["Paris"]},
            "Romeo",
            "entities",
            (
                r"probe entities\.Romeo\[1\] \('romeo-cloze02'\): the answer 'Romeo's own "
                "self' mentions the renamed entity's old name 'Romeo'"
            ),
        ),
        (
            {"cloze": "{name} was", "answer": "Tybalt", "distractors": ["ROMEO"]},
            "Romeo",
            "entities",
            "the distractor 'ROMEO' mentions",
        ),
        (
            {"id": "x", "question": "Is {name} Romeo?", "answer": "yes", "distractors": ["no"]},
            "Romeo",
            "entities",
            r"\('romeo-x'\): 'Is \{name\} Romeo\?' names 'Romeo' outside",
        ),
        (
            {"cloze": "{name}s slew", "answer": "Tybalt", "distractors": ["Paris"]},
            "Romeo",
            "entities",
            r"\{name\} in '\{name\}s slew' touches a letter or digit",
        ),
        (
            {"cloze": "{name} loves", "answer": "Kate", "distractors": ["Juliet"]},
            "Juliet",
            "entities",
            "entity 'Juliet' has probes but the map does not rename it",
        ),
        (
            {"cloze": "{name} loves", "answer": "Romeo", "distractors": ["Paris"]},
            "Juliet",
            "dev",
            r"probe dev\.Juliet\[0\] \('dev-juliet-cloze01'\) mentions 'Romeo'",
        ),
        (
            {"cloze": "{name} loves", "answer": "Juliet", "distractors": ["Paris"]},
            "Romeo",
            "dev",
            "dev.Romeo: dev probes are about characters the map does not rename",
        ),
        (
            {"id": "loves", "cloze": "{name} adores", "answer": "Juliet", "distractors": ["Kate"]},
            "Romeo",
            "entities",
            "two probes have the id 'romeo-loves'",
        ),
    ],
)
def test_bad_probes_fail_with_one_line_naming_file_and_probe(
    tmp_path, play, probe, entity, section, message
):
    corpus, _ = play
    templates = _templates_with(tmp_path, probe, entity, section)
    with pytest.raises(KinjectError, match=message) as error:
        build_rename_probes(corpus, {"Romeo": "Bob"}, templates, tmp_path / "out")
    text = str(error.value)
    assert "\n" not in text and text.startswith(str(templates))
    assert not (tmp_path / "out").exists()


def test_corpus_errors_name_the_corpus(tmp_path, play):
    corpus, templates = play
    with pytest.raises(
        KinjectError, match=r"'Mercutio' never occurs in the corpus as a whole word"
    ):
        build_rename_probes(corpus, {"Romeo": "Bob", "Mercutio": "Max"}, templates, tmp_path / "o")
    with pytest.raises(KinjectError, match=r"the new name 'Kate' already occurs in the corpus"):
        build_rename_probes(corpus, {"Romeo": "Kate"}, templates, tmp_path / "o")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(KinjectError, match="not an empty folder nor an earlier probes folder"):
        build_rename_probes(corpus, {"Romeo": "Bob", "Petruchio": "Carl"}, templates, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".busy.staging-*"))


def test_rename_config_reads_maps_and_names_the_file_on_errors(tmp_path):
    path = tmp_path / "rename.yaml"
    path.write_text("corpus: a.txt\ntemplates: p.yaml\nmap: [Romeo=Bob, 'Petruchio -> Carl']\n")
    config = load_config(RenameConfig, path)
    assert config.map == {"Romeo": "Bob", "Petruchio": "Carl"} and config.doc_chars == 2000
    assert config.with_paths_resolved(tmp_path).corpus == str(tmp_path / "a.txt")
    path.write_text("corpus: a.txt\ntemplates: p.yaml\nmap: {Romeo: BOB}\n")
    with pytest.raises(KinjectError, match=rf"{re.escape(str(path))}: key 'map': .*fewer case"):
        load_config(RenameConfig, path)
    path.write_text("corpus: a.txt\ntemplates: p.yaml\nmap: [Romeo=Bob, Romeo=Carl]\n")
    with pytest.raises(KinjectError, match="key 'map': 'Romeo' is renamed twice"):
        load_config(RenameConfig, path)


# ---------------------------------------------------------------------------------------------
# the command line and the real corpus


def test_cli_builds_probes_from_a_small_text(tmp_path, play):
    corpus, templates = play
    runner = CliRunner()
    help_text = runner.invoke(app, ["probes", "rename", "--help"]).output
    assert "Example" in help_text and "kinject probes rename" in help_text
    out = tmp_path / "out"
    args = [
        "probes",
        "rename",
        str(corpus),
        "--map",
        "Romeo=Bob",
        "--map",
        "Petruchio -> Carl",
        "--templates",
        str(templates),
        "--out",
        str(out),
        "--seed",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Romeo -> Bob: 6 replaced (Romeo -> Bob: 5, ROMEO -> BOB: 1, romeo -> bob: 0)" in (
        result.output
    )
    assert "left as they are: Romeos (1)" in result.output
    assert "cloze_new.jsonl: 3 task records, style cloze" in result.output
    assert json.loads((out / "probes.json").read_text())["seed"] == 2
    bad = runner.invoke(app, [*args[:3], "--map", "Romeo", *args[7:]])
    assert bad.exit_code == 2 and "error: key 'map': rename 'Romeo'" in bad.output


@pytest.fixture(scope="module")
def shakespeare() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip("shared tiny_shakespeare data not present")
    return SHAKESPEARE


def test_cli_on_a_tiny_shakespeare_excerpt(tmp_path, shakespeare):
    lines = shakespeare.read_text(encoding="utf-8").split("\n")
    excerpt = tmp_path / "excerpt.txt"
    excerpt.write_text("\n".join(lines[16760:16960] + lines[18120:18300]), encoding="utf-8")
    templates = tmp_path / "probes.yaml"
    templates.write_text(
        yaml.safe_dump(
            {
                "entities": {
                    "Romeo": [
                        {
                            "cloze": "{name} slew",
                            "answer": "Tybalt",
                            "distractors": ["Mercutio", "Paris"],
                        },
                        {
                            "question": "Which house does {name} belong to?",
                            "answer": "Montague",
                            "distractors": ["Capulet", "York"],
                        },
                    ]
                }
            }
        )
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "probes",
            "rename",
            str(excerpt),
            "--map",
            "Romeo=Bob",
            "--templates",
            str(templates),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    expected = {
        form: len(re.findall(rf"(?<!\w){form}(?!\w)", excerpt.read_text()))
        for form in ("Romeo", "ROMEO")
    }
    assert expected["Romeo"] > 10 and expected["ROMEO"] > 5
    done = json.loads((out / "probes.json").read_text())["replacements"]["Romeo"]
    assert done["forms"] == {
        "Romeo -> Bob": expected["Romeo"],
        "ROMEO -> BOB": expected["ROMEO"],
        "romeo -> bob": 0,
    }
    renamed = "\n".join(d["text"] for d in rows(out / "renamed.jsonl"))
    assert "BOB:\n" in renamed and "Bob slew Tybalt, Bob must not live." in renamed
    assert "romeo" not in renamed.lower()
    assert rows(out / "cloze_new.jsonl")[0]["question"] == "Bob slew"


def test_example_templates_build_on_tiny_shakespeare(tmp_path, shakespeare):
    """examples/rename/probes.yaml: Romeo (test) and Petruchio (validation) with the sizes the
    issue asks for, every answer and distractor a string the corpus holds (words of it)."""
    out = tmp_path / "bob"
    result = build_rename_probes(shakespeare, ["Romeo=Bob", "Petruchio=Carl"], EXAMPLE, out)
    manifest = result.manifest
    romeo = manifest["replacements"]["Romeo"]
    assert romeo["forms"] == {"Romeo -> Bob": 128, "ROMEO -> BOB": 163, "romeo -> bob": 0}
    assert romeo["possessive"] == 13 and romeo["untouched"] == {}
    assert manifest["replacements"]["Petruchio"]["total"] == 192
    counts = manifest["probes"]
    romeo_probes, petruchio = counts["Romeo"], counts["Petruchio"]
    assert romeo_probes["quote"] >= 8 and romeo_probes["cloze"] >= 8 and romeo_probes["mc"] >= 8
    assert petruchio["quote"] >= 8 and petruchio["cloze"] >= 8
    assert manifest["dev"]["cloze"] >= 5 and manifest["dev"]["mc"] >= 5
    text = shakespeare.read_text(encoding="utf-8")
    for record in rows(out / "quote_old.jsonl"):  # a quote is a line of the text, answer and all
        assert f"{record['question']} {record['choices'][record['answer']]}" in text, record["id"]
    for record in rows(out / "cloze_old.jsonl"):  # a cloze text says it in other words
        said = f"{record['question']} {record['choices'][record['answer']]}"
        assert said not in text, record["id"]
    words = set(re.findall(r"\w+", text.lower()))
    names = (
        "quote_old.jsonl",
        "cloze_old.jsonl",
        "mc_old.jsonl",
        "cloze_dev.jsonl",
        "mc_dev.jsonl",
    )
    for name in names:
        for record in rows(out / name):
            for choice in record["choices"]:
                assert set(re.findall(r"\w+", choice.lower())) <= words, (record["id"], choice)
    renamed = "\n".join(d["text"] for d in rows(out / "renamed.jsonl"))
    assert not re.search(r"(?i)romeo|petruchio", renamed)
    original = rows(out / "original.jsonl")  # two blank lines (L15598): Romeo and Juliet begins
    assert any(d["text"].startswith("SAMPSON:\nGregory, o' my word") for d in original)
    assert max(len(d["text"]) for d in original) < 4000 and len(original) > 500
    for record in (
        rows(out / "quote_new.jsonl") + rows(out / "cloze_new.jsonl") + rows(out / "mc_new.jsonl")
    ):
        assert not re.search(r"(?i)romeo|petruchio", record["question"] + str(record["choices"]))


# ---------------------------------------------------------------------------------------------
# the cloze prompt style


def cloze_task() -> Task:
    items = (
        MCItem("q1", "Bob slew", ("Paris", "Tybalt"), 1),
        MCItem("q2", "His name is Bob, and a", ("Montague", "Capulet", "York"), 0),
    )
    dev = (
        MCItem("d1", "Isabella is the sister of", ("Angelo", "Claudio"), 1),
        MCItem("d2", "Tranio is the servant of", ("Lucentio", "Gremio"), 0),
    )
    return Task("bob", items, dev, style="cloze")


def test_cloze_prompt_is_the_text_then_each_choice():
    task = cloze_task()
    prompt = build_prompt(task, task.items[0], 0)
    assert prompt.context == "Bob slew"
    assert prompt.continuations == (" Paris", " Tybalt")
    assert prompt.choice_texts == ("Paris", "Tybalt")
    two = build_prompt(task, task.items[1], 2, context="Bob is a Montague.")
    assert two.context == (
        "Isabella is the sister of Claudio\n\nTranio is the servant of Lucentio\n\n"
        "Bob is a Montague.\n\nHis name is Bob, and a"
    )
    assert two.continuations == (" Montague", " Capulet", " York")


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("probes")
    corpus = folder / "play.txt"
    corpus.write_text(PLAY, encoding="utf-8")
    templates = folder / "probes.yaml"
    templates.write_text(yaml.safe_dump(TEMPLATES), encoding="utf-8")
    out = folder / "out"
    build_rename_probes(corpus, {"Romeo": "Bob", "Petruchio": "Carl"}, templates, out)
    shutil.copy(out / "cloze_dev.jsonl", out / "two_dev.jsonl")
    with (out / "two_dev.jsonl").open("a", encoding="utf-8") as handle:  # 2-shot needs two
        handle.write(
            json.dumps(
                {
                    "id": "dev-extra",
                    "question": "Tybalt is the cousin of",
                    "choices": ["Juliet", "Paris"],
                    "answer": 0,
                    "subject": "Tybalt",
                }
            )
            + "\n"
        )
    return out


@pytest.mark.parametrize("shots", [0, 2])
def test_cloze_prompts_are_lm_evals_plain_continuation_layout(tmp_path, probe_dir, shots):
    """lm-eval's own multiple_choice task with doc_to_text {{question}} builds kinject's
    requests byte for byte (k-shot examples included)."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from kinject.tasks.loaders import jsonl_task

    test, dev = probe_dir / "cloze_new.jsonl", probe_dir / "two_dev.jsonl"
    (tmp_path / "cloze.yaml").write_text(
        CLOZE_TASK_YAML.format(name="cloze_bob", test=test, dev=dev)
    )
    lm_task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["cloze_bob"])[
        "tasks"
    ]["cloze_bob"]
    lm_task.set_config(key="num_fewshot", value=shots)
    lm_task.set_fewshot_seed(seed=1234)
    lm_task.build_all_requests(limit=None, rank=0, world_size=1)
    ours = jsonl_task("bob", test, dev, style="cloze")
    by_doc: dict[int, list] = {}
    for instance in lm_task.instances:
        by_doc.setdefault(instance.doc_id, []).append(instance)
    assert len(by_doc) == len(ours.items) == 3
    for item, doc_id in zip(ours.items, sorted(by_doc)):
        prompt = build_prompt(ours, item, shots)
        instances = sorted(by_doc[doc_id], key=lambda instance: instance.idx)
        assert [inst.args for inst in instances] == [
            (prompt.context, continuation) for continuation in prompt.continuations
        ]


def test_cloze_task_scores_through_kinject_eval_and_matches_lm_eval(
    tmp_path, probe_dir, tiny_llama_dir, one_torch_thread
):
    """`kinject eval` scores the cloze probes (0- and 2-shot) on a tiny Llama; `kinject export
    lm-eval --style cloze` of the same file, run by lm-eval's HFLM, gives the same
    log-likelihoods (to float32 rounding) and predictions."""
    config = {
        "model": {"path": str(tiny_llama_dir), "device": "cpu"},
        "tasks": [
            {
                "name": "bob",
                "path": str(probe_dir / "cloze_new.jsonl"),
                "dev": str(probe_dir / "two_dev.jsonl"),
                "style": "cloze",
            }
        ],
        "shots": [0, 2],
        "bootstrap_resamples": 100,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", "-c", str(path), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert load_config(EvalConfig, run / "config.yaml").tasks[0].style == "cloze"
    records = rows(run / "records.jsonl")
    questions = {r["id"]: r for r in rows(probe_dir / "cloze_new.jsonl")}
    assert sorted((r["shots"], r["question_id"]) for r in records) == sorted(
        (shots, qid) for shots in (0, 2) for qid in questions
    )
    for record in records:
        question = questions[record["question_id"]]
        lls = record["loglikelihoods"]
        assert len(lls) == len(question["choices"]) and all(ll < 0 for ll in lls)
        assert record["answer"] == question["answer"]
        assert record["pred"] == max(range(len(lls)), key=lambda i: (lls[i], -i))
        lengths = [len(choice) for choice in question["choices"]]
        assert record["pred_norm"] == max(range(len(lls)), key=lambda i: (lls[i] / lengths[i], -i))
    metrics = json.loads((run / "metrics.json").read_text())["cells"]
    assert {(cell["split"], cell["shots"], cell["n"]) for cell in metrics} == {
        ("bob", 0, 3),
        ("bob", 2, 3),
    }

    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from kinject.export.lm_eval import export_lm_eval

    export = tmp_path / "export"
    (entry,) = export_lm_eval(
        probe_dir / "cloze_new.jsonl",
        export,
        dev=probe_dir / "two_dev.jsonl",
        style="cloze",
        shots=(0, 2),
        model=str(tiny_llama_dir),
    ).tasks
    assert entry["style"] == "cloze"
    exported = rows(export / entry["data"]["test"])
    assert [doc["query"] for doc in exported] == [q["question"] for q in questions.values()]
    lm_yaml = yaml.safe_load((export / entry["yaml"]).read_text())
    assert (lm_yaml["doc_to_text"], lm_yaml["target_delimiter"]) == ("query", " ")
    hflm = HFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=16)
    for shots in (0, 2):
        samples = simple_evaluate(
            model=hflm,
            tasks=[entry["name"]],
            num_fewshot=shots,
            log_samples=True,
            task_manager=TaskManager(include_path=str(export), include_defaults=False),
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )["samples"][entry["name"]]
        ours = {r["question_id"]: r for r in records if r["shots"] == shots}
        assert len(samples) == len(ours)
        for sample in samples:
            record = ours[sample["doc"]["id"]]
            theirs = [float(resp[0]) for resp in sample["filtered_resps"]]
            assert max(abs(a - b) for a, b in zip(theirs, record["loglikelihoods"])) <= 1e-4
            lengths = [len(c) for c in sample["doc"]["choices"]]
            if margin(theirs) > TIE:  # else a near tie, which another kernel may order either way
                assert sample["acc"] == float(record["correct"])
            if margin([ll / n for ll, n in zip(theirs, lengths)]) > TIE:
                assert sample["acc_norm"] == float(record["correct_norm"])
