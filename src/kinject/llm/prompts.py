"""Prompt templates: text files a user can copy, edit and point ``--prompts DIR`` at.

The defaults are ``kinject/llm/prompts/*.txt`` inside the package.  A template is the whole
user message; ``$name`` marks a value (``$$`` is a literal dollar sign).  A file in DIR
replaces the default of the same name; a missing file keeps the default.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kinject.errors import KinjectError

# template name -> the values it is filled with (each must be used, none other may be)
PLACEHOLDERS = {
    "questions": {"text", "n"},
    "select": {"text", "questions", "count", "keep"},
    "paraphrase": {"text", "n"},
    "question_for_answer": {"sentence", "answer"},
}


@dataclass(frozen=True)
class Prompts:
    templates: dict[str, str]  # name -> template text
    origins: dict[str, str]  # name -> where it came from (for error messages)

    def render(self, name: str, **values: object) -> str:
        try:
            return string.Template(self.templates[name]).substitute(
                {k: str(v) for k, v in values.items()}
            )
        except (KeyError, ValueError) as error:
            raise KinjectError(f"{self.origins[name]}: bad placeholder ({error})") from None


def load_prompts(folder: str | Path | None = None) -> Prompts:
    """The packaged templates, each replaced by ``folder/<name>.txt`` when that file exists."""
    templates, origins = {}, {}
    packaged = resources.files("kinject.llm") / "prompts"
    if folder is not None and not Path(folder).is_dir():
        raise KinjectError(f"{folder}: prompts folder not found")
    for name, allowed in PLACEHOLDERS.items():
        own = Path(folder) / f"{name}.txt" if folder is not None else None
        if own is not None and own.exists():
            text, origin = own.read_text(encoding="utf-8"), str(own)
        else:
            text = (packaged / f"{name}.txt").read_text(encoding="utf-8")
            origin = f"packaged prompt {name}.txt"
        _check(text, allowed, origin)
        templates[name], origins[name] = text, origin
    return Prompts(templates, origins)


def _check(text: str, allowed: set[str], origin: str) -> None:
    used = set()
    for match in string.Template.pattern.finditer(text):  # (Template.is_valid: Python 3.11+)
        if match.group("invalid") is not None:
            raise KinjectError(f"{origin}: a '$' that is not a placeholder (write $$ for '$')")
        name = match.group("named") or match.group("braced")
        if name:
            used.add(name)
    unknown = sorted(used - allowed)
    if unknown:
        raise KinjectError(
            f"{origin}: unknown placeholder(s) {', '.join('$' + u for u in unknown)} "
            f"(allowed: {', '.join('$' + a for a in sorted(allowed))})"
        )
    missing = sorted(allowed - used)
    if missing:
        raise KinjectError(
            f"{origin}: the template must contain {', '.join('$' + m for m in missing)}"
        )
