"""Entity-rename probes (issue 9: "fine-tuning is for form, not facts").

Fine-tune a model on a text where every Romeo is called Bob, then ask it whether Bob loves
Juliet.  From a corpus, a rename map (``Romeo -> Bob``) and probe templates this builds:

* the training text with each old name renamed where it is a whole word, in three case
  forms: ``Romeo -> Bob``, ``ROMEO -> BOB`` (tiny shakespeare's speaker tags ``ROMEO:``) and
  ``romeo -> bob``.  A possessive is renamed with its name (``Romeo's -> Bob's``: the
  apostrophe ends the word); a name touching another letter, digit or underscore is a
  different word and stays (``Romeos``, ``Romeorama``, ``xRomeo``), as do other case mixes
  (``RoMeO``): ``probes.json`` counts every such word left (``untouched``);
* the same documents not renamed, with the same ids (plain text: consecutive blank-line
  separated passages, a few thousand characters each, never across two blank lines);
  ``documents: mentions`` keeps only the documents that mention a renamed name, in both;
* probes about each renamed entity, of three kinds: *quotes* (a line of the corpus cut
  before its answer: does the model remember the renamed line — the form?), *cloze* texts
  and *questions* in words the corpus does not use (does it know the renamed entity's
  associations — the facts?).  Each probe is written twice with the
  same id and the same choice order: with the new name (``*_new.jsonl``), and with the old
  one (``*_old.jsonl``).  Every other renamed name in a probe (an answer that is another
  renamed character) is renamed in the new file too.

The output folder (built in a staging folder beside it, then renamed into place)::

    renamed.jsonl, original.jsonl     corpus JSONL {"id", "text", "source"}: the same documents
    quote_new.jsonl, quote_old.jsonl  tasks for style cloze:  "Bob slew" + " Tybalt" | " Paris" …
    cloze_new.jsonl, cloze_old.jsonl  tasks for style cloze:  "Bob is in love with" + " Juliet" …
    mc_new.jsonl, mc_old.jsonl        tasks for style option: "Whom does Bob love?" …
    *_dev.jsonl                       k-shot examples about unrenamed characters (when given)
    entities/<entity>/<kind>_<name>.jsonl   one entity's probes (a validation entity apart)
    probes.json                       map, replacements per form, probe counts, files, seed

A task record is kinject's multiple-choice JSONL with ``subject`` the entity's old name.

The probe template file (YAML; unknown keys and wrong types are errors naming the key)::

    entities:                      # OLD names as the corpus writes them; each one in the map
      Romeo:
        - {id: slew, quote: "{name} slew", answer: Tybalt, distractors: [Paris, Benvolio]}
        - {cloze: "{name} is in love with", answer: Juliet, distractors: [Bianca, Hermione]}
        - {question: "Whom does {name} love?", answer: Juliet, distractors: [Bianca, Hermione]}
    dev:                           # optional: probes about characters the map leaves alone
      Hermione:
        - {cloze: "{name} is the wife of", answer: Leontes, distractors: [Polixenes, Camillo]}
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from kinject.config import RenameConfig, Section, parse_config
from kinject.errors import KinjectError
from kinject.fileio import (
    read_bytes,
    read_lines,
    read_yaml,
    replace_dir,
    staging_dir,
    write_json,
    write_jsonl,
)

FORMAT = 1
SLOT = "{name}"
MANIFEST = "probes.json"
KINDS = {"quote": "cloze", "cloze": "cloze", "mc": "option"}  # probe kind -> its prompt style


class RenameError(KinjectError, ValueError):
    """A bad rename or probe: a one-line user error (a ValueError too, so that inside a
    pydantic model it is reported with the key it came from)."""


# ---------------------------------------------------------------------------------------------
# renaming


def parse_rename(spec: str) -> tuple[str, str]:
    """``"Romeo=Bob"`` or ``"Romeo -> Bob"`` as ``("Romeo", "Bob")``."""
    parts = re.split(r"\s*(?:->|=)\s*", spec.strip())
    if len(parts) != 2 or not all(parts):
        raise RenameError(f"rename '{spec}': expected 'Old=New' or 'Old -> New'")
    return parts[0], parts[1]


def case_forms(name: str) -> tuple[str, str, str]:
    """The forms of a name that are renamed: as written, UPPER, lower."""
    return name, name.upper(), name.lower()


_NAME = re.compile(r"\w(?:[^\n\r]*\w)?")


def _check_name(name: Any, role: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RenameError(
            f"{role} name {name!r}: must be one line that begins and ends with a letter or digit"
        )
    return name


class RenameMap:
    """Old names to new names, checked so that renaming is exact and can be undone: every
    case form of an old name has its own new form, no two names share a form, and no new
    name is (or contains) an old one, so nothing is renamed twice."""

    def __init__(self, mapping: Mapping[str, str]):
        self.pairs: tuple[tuple[str, str], ...] = tuple(mapping.items())
        if not self.pairs:
            raise RenameError("the rename map is empty")
        self.forms: dict[str, tuple[str, str]] = {}  # old form -> (old name, new form)
        self.new_forms: dict[str, str] = {}  # new form -> new name
        for old, new in self.pairs:
            _check_name(old, "old")
            _check_name(new, "new")
            forms: dict[str, str] = {}
            for old_form, new_form in zip(case_forms(old), case_forms(new)):
                if forms.setdefault(old_form, new_form) != new_form:
                    raise RenameError(
                        f"'{old}' -> '{new}': the two are written in different cases "
                        f"('{old_form}' would become both '{forms[old_form]}' and '{new_form}')"
                        "; write them alike (Romeo=Bob)"
                    )
            if len(set(forms.values())) != len(forms):
                raise RenameError(
                    f"'{old}' -> '{new}': '{new}' has fewer case forms than '{old}' (renaming "
                    "could not be undone); write them alike (Romeo=Bob)"
                )
            for old_form, new_form in forms.items():
                if old_form in self.forms:
                    raise RenameError(f"'{old}' and '{self.forms[old_form][0]}' are the same name")
                self.forms[old_form] = (old, new_form)
                self.new_forms[new_form] = new
        for old, _ in self.pairs:
            for other_old, new in self.pairs:
                if old.casefold() in new.casefold():
                    raise RenameError(
                        f"'{other_old}' -> '{new}': the new name contains the old name '{old}' "
                        "(renaming twice, swaps and chains are not supported)"
                    )
        news = [new.casefold() for _, new in self.pairs]
        if len(set(news)) != len(news):
            raise RenameError("two old names get the same new name")
        self.pattern = _whole_words(self.forms)
        self.new_pattern = _whole_words(self.new_forms)

    @classmethod
    def of(cls, value: RenameMap | Mapping[str, str] | str | Iterable[str]) -> RenameMap:
        """A map from a RenameMap, a dict, one ``"Romeo=Bob"`` or a list of them."""
        if isinstance(value, RenameMap):
            return value
        if isinstance(value, Mapping):
            return cls(dict(value))
        if isinstance(value, str):
            value = [value]
        pairs = [parse_rename(spec) for spec in value]
        mapping = dict(pairs)
        if len(mapping) != len(pairs):
            raise RenameError("an old name is renamed twice")
        return cls(mapping)

    @property
    def olds(self) -> list[str]:
        return [old for old, _ in self.pairs]

    def new_name(self, old: str) -> str:
        return dict(self.pairs)[old]

    def to_dict(self) -> dict[str, str]:
        return dict(self.pairs)


def _whole_words(forms: Iterable[str]) -> re.Pattern:
    """Any of ``forms`` where no word character touches it; longest first, so that of
    "Romeo" and "Romeo Montague" the longer wins."""
    alternation = "|".join(re.escape(form) for form in sorted(forms, key=lambda f: (-len(f), f)))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)")


_POSSESSIVE = re.compile(r"['\u2019][sS](?!\w)")


@dataclass(frozen=True)
class Renamed:
    text: str
    counts: dict[str, dict[str, int]]  # old name -> {old form: replacements}
    possessive: dict[str, int]  # old name -> replacements followed by 's

    def total(self, old: str | None = None) -> int:
        olds = [old] if old is not None else list(self.counts)
        return sum(sum(self.counts[name].values()) for name in olds)


def rename_text(text: str, rename_map: RenameMap | Mapping[str, str] | str) -> Renamed:
    """``text`` with every whole-word case form of each old name replaced, and the counts."""
    rmap = RenameMap.of(rename_map)
    counts = {old: dict.fromkeys(case_forms(old), 0) for old in rmap.olds}
    possessive = dict.fromkeys(rmap.olds, 0)

    def replace(match: re.Match) -> str:
        old, new_form = rmap.forms[match.group()]
        counts[old][match.group()] += 1
        if _POSSESSIVE.match(text, match.end()):
            possessive[old] += 1
        return new_form

    return Renamed(rmap.pattern.sub(replace, text), counts, possessive)


def untouched_words(renamed_text: str, rename_map: RenameMap) -> dict[str, dict[str, int]]:
    """Per old name, the words of an already renamed text that still hold it (any case):
    ``Romeos``, ``Romeorama``, ``RoMeO`` — what whole-word renaming left alone."""
    left: dict[str, dict[str, int]] = {}
    for old in rename_map.olds:
        words: dict[str, int] = {}
        pattern = re.compile(rf"\w*{re.escape(old)}\w*", re.IGNORECASE)
        for match in pattern.finditer(renamed_text):
            words[match.group()] = words.get(match.group(), 0) + 1
        left[old] = dict(sorted(words.items(), key=lambda kv: (-kv[1], kv[0])))
    return left


# ---------------------------------------------------------------------------------------------
# the corpus as documents


def split_sections(text: str) -> list[str]:
    """Parts separated by two or more blank lines: no document spans one of these breaks
    (tiny shakespeare has two: where Romeo and Juliet begins, and in Measure for Measure)."""
    return [part for part in re.split(r"\n(?:[ \t]*\n){2,}", text) if part.strip()]


def split_passages(text: str) -> list[str]:
    """Passages separated by blank lines (tiny shakespeare: one speech each)."""
    return [part.strip("\n") for part in re.split(r"\n(?:[ \t]*\n)+", text) if part.strip()]


def group_passages(passages: list[str], doc_chars: int) -> list[str]:
    """Consecutive passages joined by a blank line into documents of at most ``doc_chars``
    characters; a passage longer than that is a document of its own, never cut."""
    documents: list[str] = []
    current = ""
    for passage in passages:
        if current and len(current) + 2 + len(passage) > doc_chars:
            documents.append(current)
            current = ""
        current = passage if not current else current + "\n\n" + passage
    if current:
        documents.append(current)
    return documents


def read_documents(path: Path, doc_chars: int) -> list[dict]:
    """Corpus JSONL as it is, or plain text grouped into documents ``<stem>-00001`` …"""
    if path.suffix.lower() == ".jsonl":
        from kinject.corpus import load_corpus_jsonl

        rows = []
        for doc in load_corpus_jsonl(path).values():
            row = {"id": doc.id, "text": doc.text, "source": doc.source or path.name}
            if doc.title is not None:
                row["title"] = doc.title
            if doc.meta:
                row["meta"] = doc.meta
            rows.append(row)
    else:
        text = "\n".join(line for _, line in read_lines(path))
        stem = _slug(path.stem) or "doc"
        documents = [
            document
            for section in split_sections(text)
            for document in group_passages(split_passages(section), doc_chars)
        ]
        rows = [
            {"id": f"{stem}-{number:05d}", "text": document, "source": path.name}
            for number, document in enumerate(documents, start=1)
        ]
    if not rows:
        raise KinjectError(f"{path}: the corpus holds no text")
    return rows


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------------------------------------
# probe templates


class ProbeTemplate(Section):
    """One probe: a cloze text or a question with ``{name}`` where the entity's name goes."""

    id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Default: cloze01, mc01 … in the entity's order; ids get the entity's "
        "name in front (romeo-slew).",
    )
    quote: str | None = Field(
        None,
        description="A line of the corpus cut before the answer: '{name} slew' (Romeo slew "
        "Tybalt).  It asks for the form: the renamed line, remembered.",
    )
    cloze: str | None = Field(
        None,
        description="A text the answer continues, in words the corpus does not use: "
        "'{name} is in love with'.  It asks for the fact.",
    )
    question: str | None = Field(None, description="A question: 'Whom does {name} love?'.")
    answer: str
    distractors: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ProbeTemplate:
        if sum(text is not None for text in (self.quote, self.cloze, self.question)) != 1:
            raise ValueError("give exactly one of 'quote', 'cloze' and 'question'")
        if SLOT not in self.text:
            raise ValueError(f"'{self.text}' has no {SLOT} slot for the entity's name")
        for choice in self.choices:
            if not choice.strip() or choice != choice.strip() or "\n" in choice:
                raise ValueError(f"choice {choice!r}: one line, not empty, no spaces at either end")
        folded = [choice.casefold() for choice in self.choices]
        if folded[0] in folded[1:]:
            raise ValueError(f"the answer '{self.answer}' is also a distractor")
        if len(set(folded)) != len(folded):
            raise ValueError("a distractor is given twice")
        return self

    @property
    def kind(self) -> str:
        if self.quote is not None:
            return "quote"
        return "cloze" if self.cloze is not None else "mc"

    @property
    def text(self) -> str:
        return next(t for t in (self.quote, self.cloze, self.question) if t is not None)

    @property
    def choices(self) -> list[str]:
        return [self.answer, *self.distractors]


class ProbeFile(Section):
    """A probe template file: probes per renamed entity, and optional k-shot dev probes."""

    entities: dict[str, list[ProbeTemplate]] = Field(
        min_length=1, description="Old name (as in the corpus and the map) -> its probes."
    )
    dev: dict[str, list[ProbeTemplate]] = Field(
        default_factory=dict, description="Unrenamed characters -> probes for k-shot examples."
    )

    @model_validator(mode="after")
    def _check(self) -> ProbeFile:
        for section in ("entities", "dev"):
            for entity, probes in getattr(self, section).items():
                _check_name(entity, "entity")
                if not probes:
                    raise ValueError(f"{section}.{entity}: no probes")
        return self


def load_templates(path: str | Path) -> ProbeFile:
    path = Path(path)
    data = read_yaml(path, "probe template file")
    if not isinstance(data, dict):
        raise KinjectError(f"{path}: expected a mapping with 'entities' (and 'dev')")
    return parse_config(ProbeFile, data, path)


# ---------------------------------------------------------------------------------------------
# probes


@dataclass(frozen=True)
class Probe:
    id: str
    entity: str
    kind: str  # quote | cloze | mc
    old: dict  # the task record with the old name
    new: dict  # the same with the new name (dev probes: the same record)


def _ids(templates: list[ProbeTemplate], prefix: str) -> list[str]:
    numbers = dict.fromkeys(KINDS, 0)
    ids = []
    for template in templates:
        numbers[template.kind] += 1
        ids.append(f"{prefix}-{template.id or f'{template.kind}{numbers[template.kind]:02d}'}")
    return ids


def _shuffled(choices: list[str], seed: int, probe_id: str) -> tuple[list[int], int]:
    """A choice order that depends on the seed and the probe's id only."""
    order = list(range(len(choices)))
    random.Random(f"{seed}:{probe_id}").shuffle(order)
    return order, order.index(0)


def entity_probes(
    rmap: RenameMap, entity: str, templates: list[ProbeTemplate], seed: int, where: str
) -> list[Probe]:
    """The probes of one renamed entity; ``where`` names the template file in errors."""
    probes = []
    for index, (template, probe_id) in enumerate(zip(templates, _ids(templates, _slug(entity)))):
        at = f"{where}: probe entities.{entity}[{index}] ('{probe_id}')"
        slots = template.text.count(SLOT)
        question = rename_text(template.text.replace(SLOT, entity), rmap)
        if question.total(entity) > slots:
            raise RenameError(
                f"{at}: '{template.text}' names '{entity}' outside the {SLOT} slot, which "
                "would give the old name away"
            )
        if question.total(entity) < slots:
            raise RenameError(
                f"{at}: {SLOT} in '{template.text}' touches a letter or digit, so the name "
                "there is not a whole word and would not be renamed"
            )
        roles = ["answer"] + ["distractor"] * len(template.distractors)
        for role, choice in zip(roles, template.choices):
            if rename_text(choice, rmap).total(entity):
                raise RenameError(
                    f"{at}: the {role} '{choice}' mentions the renamed entity's old name '{entity}'"
                )
        order, answer = _shuffled(template.choices, seed, probe_id)
        choices = [template.choices[i] for i in order]
        old = {
            "id": probe_id,
            "question": template.text.replace(SLOT, entity),
            "choices": choices,
            "answer": answer,
            "subject": entity,
        }
        new = {
            **old,
            "question": question.text,
            "choices": [rename_text(choice, rmap).text for choice in choices],
        }
        probes.append(Probe(probe_id, entity, template.kind, old, new))
    return probes


def dev_probes(
    rmap: RenameMap, entity: str, templates: list[ProbeTemplate], seed: int, where: str
) -> list[Probe]:
    """Probes about a character the map leaves alone: one record, for k-shot examples."""
    if rename_text(entity, rmap).total():
        raise RenameError(
            f"{where}: dev.{entity}: dev probes are about characters the map does not rename"
        )
    probes = []
    prefix = f"dev-{_slug(entity)}"
    for index, (template, probe_id) in enumerate(zip(templates, _ids(templates, prefix))):
        record_text = [template.text.replace(SLOT, entity), *template.choices]
        renamed = rename_text("\n".join(record_text), rmap)
        if renamed.total():
            old = next(name for name in renamed.counts if renamed.total(name))
            raise RenameError(
                f"{where}: probe dev.{entity}[{index}] ('{probe_id}') mentions '{old}', which "
                "the map renames; k-shot examples must not give a renamed name away"
            )
        order, answer = _shuffled(template.choices, seed, probe_id)
        record = {
            "id": probe_id,
            "question": record_text[0],
            "choices": [template.choices[i] for i in order],
            "answer": answer,
            "subject": entity,
        }
        probes.append(Probe(probe_id, entity, template.kind, record, record))
    return probes


# ---------------------------------------------------------------------------------------------
# building the folder


@dataclass(frozen=True)
class RenameResult:
    out: Path
    manifest: dict


def build_rename_probes(
    corpus_path: str | Path,
    rename_map: RenameMap | Mapping[str, str] | str | Iterable[str],
    templates: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    doc_chars: int | None = None,
) -> RenameResult:
    """Write the renamed corpus, the original and the probes into ``out_dir`` (see the module
    doc).  The same inputs give byte-identical files.  ``out_dir`` must not exist, be empty,
    or hold an earlier build (``probes.json``), which is replaced whole."""
    fields: dict[str, Any] = {
        "corpus": str(corpus_path),
        "map": RenameMap.of(rename_map).to_dict(),
        "templates": str(templates),
        "seed": seed,
    }
    if doc_chars is not None:
        fields["doc_chars"] = doc_chars
    return build_from_config(parse_config(RenameConfig, fields), out_dir)


def build_from_config(config: RenameConfig, out_dir: str | Path) -> RenameResult:
    """:func:`build_rename_probes` from a :class:`~kinject.config.RenameConfig`."""
    out = Path(out_dir).absolute()
    _check_target(out)
    corpus, template_path = Path(config.corpus), Path(config.templates)
    rmap = RenameMap(config.map)
    probe_file = load_templates(template_path)
    original = read_documents(corpus, config.doc_chars)
    read_count, read_chars = len(original), sum(len(doc["text"]) for doc in original)
    renamed, replacements = _rename_documents(original, rmap, corpus)
    if config.documents == "mentions":
        kept = [i for i, (old, new) in enumerate(zip(original, renamed)) if old != new]
        original, renamed = [original[i] for i in kept], [renamed[i] for i in kept]

    unknown = [entity for entity in probe_file.entities if entity not in config.map]
    if unknown:
        raise RenameError(
            f"{template_path}: entity '{unknown[0]}' has probes but the map does not rename it "
            f"(the map renames {', '.join(config.map)}); probes about characters left alone "
            "go under 'dev:'"
        )
    probes = [
        probe
        for entity, templates in probe_file.entities.items()
        for probe in entity_probes(rmap, entity, templates, config.seed, str(template_path))
    ]
    dev = [
        probe
        for entity, templates in probe_file.dev.items()
        for probe in dev_probes(rmap, entity, templates, config.seed, str(template_path))
    ]
    seen: set[str] = set()
    for probe in probes + dev:
        if probe.id in seen:
            raise RenameError(f"{template_path}: two probes have the id '{probe.id}'")
        seen.add(probe.id)

    files: dict[str, list[dict]] = {"renamed.jsonl": renamed, "original.jsonl": original}
    about: dict[str, dict] = {
        "renamed.jsonl": {"kind": "corpus", "names": "new"},
        "original.jsonl": {"kind": "corpus", "names": "old"},
    }
    for folder, chosen in [("", probes)] + [
        (f"entities/{_slug(entity)}/", [p for p in probes if p.entity == entity])
        for entity in probe_file.entities
    ]:
        for kind, style in KINDS.items():
            of_kind = [probe for probe in chosen if probe.kind == kind]
            if not of_kind:
                continue
            for names in ("new", "old"):
                name = f"{folder}{kind}_{names}.jsonl"
                files[name] = [getattr(probe, names) for probe in of_kind]
                about[name] = {"kind": "task", "style": style, "names": names}
    for kind, style in KINDS.items():
        of_kind = [probe.old for probe in dev if probe.kind == kind]
        if of_kind:
            files[f"{kind}_dev.jsonl"] = of_kind
            about[f"{kind}_dev.jsonl"] = {"kind": "dev", "style": style, "names": "unrenamed"}

    manifest = {
        "format": FORMAT,
        "fingerprint": rename_fingerprint(config),
        "seed": config.seed,
        "doc_chars": config.doc_chars,
        "documents": config.documents,
        "corpus": {
            "path": str(corpus.resolve()),
            "sha256": _sha256(corpus),
            "documents": read_count,
            "characters": read_chars,
        },
        "kept": {
            "documents": len(renamed),
            "characters": sum(len(doc["text"]) for doc in renamed),
        },
        "templates": {"path": str(template_path.resolve()), "sha256": _sha256(template_path)},
        "map": config.map,
        "replacements": replacements,
        "probes": {
            entity: {
                kind: sum(1 for p in probes if p.entity == entity and p.kind == kind)
                for kind in KINDS
            }
            for entity in probe_file.entities
        },
        "dev": {kind: sum(1 for p in dev if p.kind == kind) for kind in KINDS},
        "files": {name: {**about[name], "records": len(rows)} for name, rows in files.items()},
    }
    _write(out, files, manifest)
    return RenameResult(out, manifest)


def _rename_documents(
    original: list[dict], rmap: RenameMap, corpus: Path
) -> tuple[list[dict], dict[str, dict]]:
    """The renamed documents and, per old name, what was replaced and what was left."""
    renamed_docs = []
    counts = {old: dict.fromkeys(case_forms(old), 0) for old in rmap.olds}
    possessive = dict.fromkeys(rmap.olds, 0)
    for doc in original:
        clash = rmap.new_pattern.search(doc["text"])
        if clash:
            raise RenameError(
                f"{corpus}: the new name '{rmap.new_forms[clash.group()]}' already occurs in "
                f"the corpus (document '{doc['id']}': '{_around(doc['text'], clash)}'); choose "
                "a name the text does not use"
            )
        result = rename_text(doc["text"], rmap)
        for old, by_form in result.counts.items():
            for form, count in by_form.items():
                counts[old][form] += count
            possessive[old] += result.possessive[old]
        row = {**doc, "text": result.text}
        if "title" in doc:
            row["title"] = rename_text(doc["title"], rmap).text
        renamed_docs.append(row)
    left = untouched_words("\n".join(doc["text"] for doc in renamed_docs), rmap)
    replacements = {}
    for old in rmap.olds:
        total = sum(counts[old].values())
        if total == 0:
            forms = ", ".join(dict.fromkeys(case_forms(old)))
            raise RenameError(
                f"{corpus}: '{old}' never occurs in the corpus as a whole word ({forms}); "
                "the map names it as the corpus writes it"
            )
        new_forms = dict(zip(case_forms(old), case_forms(rmap.new_name(old))))
        replacements[old] = {
            "new": rmap.new_name(old),
            "total": total,
            "forms": {f"{form} -> {new_forms[form]}": n for form, n in counts[old].items()},
            "possessive": possessive[old],
            "untouched": left[old],
        }
    return renamed_docs, replacements


def _around(text: str, match: re.Match, width: int = 30) -> str:
    return " ".join(text[max(0, match.start() - width) : match.end() + width].split())


def _sha256(path: Path) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


def rename_fingerprint(config: RenameConfig) -> str:
    """A digest of everything that decides the output folder's contents: the corpus's and
    the templates' bytes, the map, the seed, the document size and this module's format."""
    decided = {
        "format": FORMAT,
        "corpus": _sha256(Path(config.corpus)),
        "corpus_kind": "jsonl" if Path(config.corpus).suffix.lower() == ".jsonl" else "text",
        "corpus_name": Path(config.corpus).name,  # the documents' source and ids
        "templates": _sha256(Path(config.templates)),
        "map": sorted(config.map.items()),
        "seed": config.seed,
        "doc_chars": config.doc_chars,
    }
    if config.documents != "all":  # the default leaves earlier folders' fingerprints as they were
        decided["documents"] = config.documents
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:16]


def _check_target(out: Path) -> None:
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).exists())
    ):
        raise KinjectError(
            f"{out} exists and is not an empty folder nor an earlier probes folder "
            f"(no {MANIFEST}); write into a new folder"
        )


def _write(out: Path, files: dict[str, list[dict]], manifest: dict) -> None:
    staging = staging_dir(out.parent, f".{out.name}.staging-")
    try:
        for name, rows in files.items():
            write_jsonl(staging / name, rows)
        write_json(staging / MANIFEST, manifest)
        _check_target(out)  # nobody wrote there meanwhile
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
