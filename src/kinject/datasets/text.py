"""Words of a text as the question checks compare them: normalised text and content words."""

from __future__ import annotations

import re

_STOP = """a an the of in on at to for from by with and or but as is are was were be been being it
    its this that these those which who whom whose what when where why how than then there
    their they them he she his her him we our you your i me my not no into onto over under
    about after before during between also has have had do does did can could would should
    will may might must so such very more most other some any each all both only own same"""
STOP_WORDS = frozenset(_STOP.split())


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def content_words(text: str) -> set[str]:
    words = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in STOP_WORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.isdigit():
            word = word[:-1]
        words.add(word)
    return words
