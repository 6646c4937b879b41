"""Reading an experiment file: ``include:`` of base files, paths relative to the file that
wrote them, and the placeholders (``${world}``, ``${text_model}`` …) of what its setup
sections build (:mod:`kinject.experiments.setup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kinject.config import ExperimentConfig, local_model_path, parse_config
from kinject.errors import KinjectError


def load_experiment(path: str | Path) -> ExperimentConfig:
    """The experiment in ``path`` with its includes merged in (the including file wins) and
    every relative path made absolute against the file it was written in."""
    path = Path(path)
    data, origins = _read(path, ())

    def origin(key: tuple) -> Path:
        """The file that wrote ``key`` (or the nearest section above it)."""
        for end in range(len(key), 0, -1):
            if key[:end] in origins:
                return origins[key[:end]]
        return path

    return parse_config(ExperimentConfig, data, path, origin)


def _read(path: Path, seen: tuple[Path, ...]) -> tuple[dict, dict[tuple, Path]]:
    """The merged mapping of ``path`` and its includes, and which file wrote each key."""
    from kinject.fileio import read_yaml

    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise KinjectError(f"include cycle: {chain}")
    if not path.exists():
        where = f" (included from {seen[-1]})" if seen else ""
        raise KinjectError(f"{path}: experiment file not found{where}")
    data = read_yaml(path, "experiment file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KinjectError(f"{path}: expected a mapping at the top level")
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise KinjectError(f"{path}: key 'include': expected a file name or a list of them")
    _resolve_paths(data, path.parent)
    merged: dict = {}
    origins: dict[tuple, Path] = {}
    for include in includes:
        included, written = _read(path.parent / include, (*seen, path))
        merged = deep_merge(merged, included)
        origins.update(written)
    origins.update(_written_keys(data, path))
    return deep_merge(merged, data), origins


def _written_keys(data: dict, path: Path, prefix: tuple = ()) -> dict[tuple, Path]:
    written = {}
    for key, value in data.items():
        written[(*prefix, key)] = path
        if isinstance(value, dict):
            written.update(_written_keys(value, path, (*prefix, key)))
    return written


def deep_merge(base: dict, override: dict) -> dict:
    """Mappings merge key by key; anything else (lists too) is replaced by ``override``'s."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def _resolve_paths(data: dict, base: Path) -> None:
    """Relative paths in ``data`` (one file's mapping, before validation) made absolute."""

    def file(value: Any) -> Any:
        if not isinstance(value, str) or value.startswith("${"):
            return value
        return str((base / Path(value).expanduser()).resolve())

    def task(spec: Any) -> None:
        if isinstance(spec, dict):
            for key in ("path", "dev"):
                if key in spec:
                    spec[key] = file(spec[key])

    def model_path(section: dict) -> None:
        local = section.get("path")
        placeholder = not isinstance(local, str) or local.startswith("${")
        if not placeholder and (path := local_model_path(local, base)) is not None:
            section["path"] = str(path)  # else a hub id or a preset

    for model in _list(data.get("models")):
        if isinstance(model, dict):
            model_path(model)
            if "adapter" in model:
                model["adapter"] = file(model["adapter"])
    facts = data.get("facts")
    if isinstance(facts, dict):
        model = {"path": facts.get("model")}  # a folder or .gguf file; else a preset or hub id
        model_path(model)
        if model["path"] is not None:
            facts["model"] = model["path"]
        if "world" in facts:
            facts["world"] = file(facts["world"])
    for spec in _list(data.get("tasks")):
        task(spec)
    validation = data.get("validation")
    if isinstance(validation, dict):
        task(validation.get("task"))
    for key in ("corpus", "finetune_dir"):
        if key in data:
            data[key] = file(data[key])
    for section, keys in (("text_model", ("corpus",)), ("rename", ("corpus", "templates"))):
        setup = data.get(section)
        if isinstance(setup, dict):
            for key in keys:
                if key in setup:
                    setup[key] = file(setup[key])
    setup = data.get("knowledge_base")
    if isinstance(setup, dict) and isinstance(setup.get("sources"), list):
        setup["sources"] = [file(source) for source in setup["sources"]]
    rag = data.get("rag")
    if isinstance(rag, dict) and "kb" in rag:
        rag["kb"] = file(rag["kb"])
    recipes = data.get("finetunes")
    if isinstance(recipes, dict):
        for recipe in recipes.values():
            training = recipe.get("data") if isinstance(recipe, dict) else None
            if isinstance(training, dict):
                for key in ("corpus", "paraphrases", "qa", "replay"):
                    if key in training:
                        training[key] = file(training[key])


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def with_placeholders(config: ExperimentConfig, values: dict[str, str]) -> ExperimentConfig:
    """The experiment with each ``${name}`` of ``values`` replaced by its value."""
    text_of = {f"${{{name}}}": value for name, value in values.items()}

    def substitute(value: Any) -> Any:
        if isinstance(value, str):
            for placeholder, replacement in text_of.items():
                value = value.replace(placeholder, replacement)
            return value
        if isinstance(value, dict):
            return {key: substitute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [substitute(item) for item in value]
        return value

    return parse_config(ExperimentConfig, substitute(config.model_dump(mode="json")))


def unresolved_placeholder(config: ExperimentConfig) -> str | None:
    """The first ``${…}`` left in the experiment (a typo, or no section that makes it)."""
    import re

    found = re.search(r"\$\{[^}]*\}", str(config.model_dump(mode="json")))
    return found.group(0) if found else None


def with_model(config: ExperimentConfig, model: str, dtype: str | None = None) -> ExperimentConfig:
    """The experiment with its models replaced by ``model`` (a local folder, made absolute,
    or a hub id), labelled by its last path part."""
    import re

    local = Path(model).expanduser()
    path = str(local.resolve()) if local.exists() else model
    label = re.sub(r"[^A-Za-z0-9_-]", "-", Path(model.rstrip("/")).name) or "model"
    entry: dict[str, Any] = {"label": label, "path": path}
    if dtype is not None:
        entry["dtype"] = dtype
    data = config.model_dump(mode="json")
    data["models"] = [entry]
    return parse_config(ExperimentConfig, data)
