"""What an experiment builds before its grid, each once and cached by what decides it.

An experiment file may name things that do not exist yet, by placeholder; its setup sections
make them first, in this order (a later section may use an earlier one's placeholder):

    world:          ${world} ${world_model} ${world_kb}   the synthetic world, its base model, its KB
    facts:          ${facts}        a model's checked known/updated facts (kinject probes facts)
    rename:         ${rename}       a renamed corpus and its probe tasks (kinject probes rename)
    text_model:     ${text_model}   a tiny base model pretrained on a text
    knowledge_base: ${kb}           a knowledge base of corpus files (kinject kb build)

Every built thing lives in the kinject cache under a hash of its config and the content of
its input files, so a second run (or another experiment asking the same) reuses it.
"""

from __future__ import annotations

from pathlib import Path

from kinject.cache import cache_dir, cache_lock, fingerprint
from kinject.config import ExperimentConfig, KBSetup
from kinject.errors import KinjectError

SETUP_SECTIONS = ("world", "facts", "rename", "text_model", "knowledge_base")
PLACEHOLDERS = {
    "world": ("world", "world_model", "world_kb"),
    "facts": ("facts",),
    "rename": ("rename",),
    "text_model": ("text_model",),
    "knowledge_base": ("kb",),
}


def used_sections(config: ExperimentConfig) -> list[str]:
    """The setup sections whose placeholders the rest of the experiment uses (a section no
    one uses, e.g. ``text_model:`` after ``kinject run --model`` replaced the models, is
    not built)."""
    data = config.model_dump(mode="json")
    for section in SETUP_SECTIONS:
        data.pop(section, None)
    rest = str(data)
    used = []
    for section in reversed(SETUP_SECTIONS):  # a used section makes what it uses used
        if getattr(config, section) is None:
            continue
        if any(f"${{{name}}}" in rest for name in PLACEHOLDERS[section]):
            used.append(section)
            rest += str(getattr(config, section).model_dump(mode="json"))
    return [section for section in SETUP_SECTIONS if section in used]


def resolve_setup(
    config: ExperimentConfig, show_progress: bool = True, console=None
) -> ExperimentConfig:
    """Build (or reuse) what the setup sections name, and put their paths in the experiment."""
    from kinject.experiments.files import unresolved_placeholder, with_placeholders

    for section in used_sections(config):
        _unresolved_inputs(config, section)
        values = _BUILDERS[section](config, show_progress, console)
        config = with_placeholders(config, values)
    left = unresolved_placeholder(config)
    if left is not None:
        sections = ", ".join(f"'{name}:'" for name in SETUP_SECTIONS)
        raise KinjectError(
            f"the experiment still holds '{left}' (placeholders come from {sections})"
        )
    return config


def cached_setup(
    config: ExperimentConfig,
) -> tuple[ExperimentConfig, dict[str, dict[str, str]], list[str], dict[str, str]]:
    """The experiment with the placeholders of whatever is already built put in, the
    placeholders each built section gave, the sections not built yet, and the sections
    that could not even be looked up, with the reason (a ``facts:`` model that is not
    there).  Builds nothing: ``kinject run --dry-run``."""
    from kinject.experiments.files import with_placeholders

    built, missing, failed = {}, [], {}
    for section in used_sections(config):
        values = None
        if not _holds_placeholder(getattr(config, section)):
            try:
                values = _CACHED[section](config)
            except KinjectError as error:  # reported as the dry run's failed check
                failed[section] = str(error)
                continue
        if values is None:
            missing.append(section)
        else:
            built[section] = values
            config = with_placeholders(config, values)
    return config, built, missing, failed


def _holds_placeholder(section) -> bool:
    return "${" in str(section.model_dump(mode="json"))


def _unresolved_inputs(config: ExperimentConfig, section: str) -> None:
    if _holds_placeholder(getattr(config, section)):
        import re

        left = re.search(r"\$\{[^}]*\}", str(getattr(config, section).model_dump(mode="json")))
        order = " → ".join(SETUP_SECTIONS)
        raise KinjectError(
            f"'{section}:' uses {left.group(0)}, which no earlier setup section makes "
            f"(they run in the order {order})"
        )


def _content_key(paths: list[str]) -> list:
    """The content of files (and of every file under folders), as hashes, in a stable order."""
    from kinject.fileio import sha256_of

    key = []
    for name in paths:
        path = Path(name)
        if path.is_file():
            key.append([str(path.resolve()), sha256_of(path)])
        elif path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                key.append([str(child.resolve()), sha256_of(child)])
        else:
            raise KinjectError(f"{name}: no such file or folder")
    return key


# --- world -------------------------------------------------------------------------------


def _build_world(config, show_progress, console) -> dict[str, str]:
    from kinject.experiments.runner import prepare_world

    return prepare_world(config.world, show_progress, console)


def _cached_world(config) -> dict[str, str] | None:
    from kinject.experiments.runner import cached_world

    return cached_world(config.world)


# --- facts -------------------------------------------------------------------------------


def facts_dir(config: ExperimentConfig) -> Path:
    from kinject.probes.facts import facts_fingerprint

    return cache_dir() / "facts" / f"facts-{facts_fingerprint(config.facts)}"


def _build_facts(config, show_progress, console) -> dict[str, str]:
    from kinject.probes.facts import build_facts

    setup = config.facts
    folder = facts_dir(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(folder):  # the build itself is atomic: staged, then renamed into place
        if not (folder / "facts.json").exists():
            build_facts(setup.model, folder, setup.world, setup.n_new, setup.seed, show_progress)
    if console is not None:
        console.print(f"checked facts of {setup.model}: {folder}")
    return {"facts": str(folder)}


def _cached_facts(config) -> dict[str, str] | None:
    folder = facts_dir(config)
    return {"facts": str(folder)} if (folder / "facts.json").exists() else None


# --- rename ------------------------------------------------------------------------------


def rename_dir(config: ExperimentConfig) -> Path:
    from kinject.probes.rename import rename_fingerprint

    return cache_dir() / "rename" / f"rename-{rename_fingerprint(config.rename)}"


def _build_rename(config, show_progress, console) -> dict[str, str]:
    from kinject.probes.rename import build_from_config

    folder = rename_dir(config)
    with cache_lock(folder):  # the build itself is atomic: staged, then renamed into place
        if not (folder / "probes.json").exists():
            build_from_config(config.rename, folder)
    if console is not None:
        console.print(f"renamed corpus and probes: {folder}")
    return {"rename": str(folder)}


def _cached_rename(config) -> dict[str, str] | None:
    folder = rename_dir(config)
    return {"rename": str(folder)} if (folder / "probes.json").exists() else None


# --- text_model --------------------------------------------------------------------------


def _build_text_model(config, show_progress, console) -> dict[str, str]:
    from kinject.models.text_model import ensure_text_model

    folder, cached = ensure_text_model(config.text_model, show_progress)
    if console is not None:
        console.print(f"text model: {folder} ({'cached' if cached else 'pretrained now'})")
    return {"text_model": str(folder)}


def _cached_text_model(config) -> dict[str, str] | None:
    from kinject.models.text_model import text_model_dir

    folder = text_model_dir(config.text_model)
    return {"text_model": str(folder)} if (folder / "config.json").exists() else None


# --- knowledge_base ----------------------------------------------------------------------


def kb_dir(setup: KBSetup) -> Path:
    key = fingerprint(setup.config.model_dump(mode="json"), _content_key(setup.sources))
    return cache_dir() / "kbs" / f"kb-{key}"


def _build_kb(config, show_progress, console) -> dict[str, str]:
    import shutil

    from kinject.kb.store import SourceOptions, build_kb

    setup = config.knowledge_base
    folder = kb_dir(setup)
    with cache_lock(folder):
        if not (folder / "kb.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            options = SourceOptions(strict=True, show_progress=show_progress)
            build_kb(setup.sources, folder, setup.config, options)
    if console is not None:
        console.print(f"knowledge base: {folder}")
    return {"kb": str(folder)}


def _cached_kb(config) -> dict[str, str] | None:
    folder = kb_dir(config.knowledge_base)
    return {"kb": str(folder)} if (folder / "kb.json").exists() else None


_BUILDERS = {
    "world": _build_world,
    "facts": _build_facts,
    "rename": _build_rename,
    "text_model": _build_text_model,
    "knowledge_base": _build_kb,
}
_CACHED = {
    "world": _cached_world,
    "facts": _cached_facts,
    "rename": _cached_rename,
    "text_model": _cached_text_model,
    "knowledge_base": _cached_kb,
}
