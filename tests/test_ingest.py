"""Ingestion: real files on disk, real BeautifulSoup and pypdf, no mocks."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from io import BytesIO
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from kinject.errors import KinjectError
from kinject.kb.ingest import (
    SUPPORTED_SUFFIXES,
    IngestReport,
    clean_text,
    html_to_text,
    ingest,
    squad_paragraph_id,
)

SQUAD_DEV = SHARED_DATA / "squad_v1.1_dev" / "dev-v1.1.json"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def ids(report: IngestReport) -> list[str]:
    return [document.id for document in report.documents]


def squad(*articles: tuple[str, list[str]]) -> str:
    data = [
        {"title": title, "paragraphs": [{"context": c, "qas": []} for c in contexts]}
        for title, contexts in articles
    ]
    return json.dumps({"version": "1.1", "data": data})


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (xref offsets computed)."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def encrypted_pdf_bytes() -> bytes:
    import pypdf

    writer = pypdf.PdfWriter(clone_from=BytesIO(pdf_bytes(["Top secret"])))
    writer.encrypt("user-password", "owner-password", algorithm="RC4-128")
    buffer = BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- ids and fields


def test_ids_are_paths_relative_to_the_source_folder_and_nothing_is_written(tmp_path):
    kb = tmp_path / "kb"
    write(kb / "guides" / "setup.md", "# Setup\n\nRun it.")
    write(kb / "a.txt", "Alpha text.")
    write(kb / "notes.markdown", "Some notes.")
    single = write(tmp_path / "other" / "single.txt", "A single file.")
    before = sorted(tmp_path.rglob("*"))

    report = ingest([kb, single])

    assert ids(report) == ["a.txt", "guides/setup.md", "notes.markdown", "single.txt"]
    assert report.warnings == [] and report.duplicates == []
    setup = report.documents[1]
    assert setup.text == "# Setup\n\nRun it." and setup.title == "Setup"  # its first heading
    assert setup.source == str((kb / "guides" / "setup.md").absolute())
    assert setup.root == str(kb.absolute())
    assert setup.sha256 == hashlib.sha256(setup.text.encode("utf-8")).hexdigest()
    assert report.documents[3].root == str(single.absolute())
    assert sorted(tmp_path.rglob("*")) == before


def test_relative_source_gives_absolute_source_and_root(tmp_path, monkeypatch):
    write(tmp_path / "kb" / "x.txt", "x")
    monkeypatch.chdir(tmp_path)
    (document,) = ingest(["kb"]).documents
    assert document.root == str(tmp_path / "kb")
    assert document.source == str(tmp_path / "kb" / "x.txt")


def test_jsonl_documents_keep_their_ids_and_titles(tmp_path):
    rows = [
        {"id": "doc-2", "text": "Second  document.", "title": " The\ttitle "},
        {"id": "doc-1", "text": "First document.", "source": "wiki", "meta": {"k": 1}},
    ]
    path = write(tmp_path / "corpus.jsonl", jsonl(*rows) + "\n  \n")

    report = ingest([path])

    assert ids(report) == ["doc-1", "doc-2"]
    first, second = report.documents
    assert (first.text, first.title) == ("First document.", None)
    assert (second.text, second.title) == ("Second document.", "The title")
    assert first.source == str(path.absolute())
    assert report.warnings == []


def test_squad_layout_gives_one_document_per_paragraph(tmp_path):
    path = write(
        tmp_path / "kb" / "squad.json",
        squad(
            ("Super_Bowl_50", ["Paragraph zero.", "Paragraph  one."]),
            ("Normans", ["Norman zero.", " \u200b ", "Norman two."]),
        ),
    )

    report = ingest([tmp_path / "kb"])

    assert ids(report) == ["Normans#0", "Normans#2", "Super_Bowl_50#0", "Super_Bowl_50#1"]
    documents = {document.id: document for document in report.documents}
    assert documents["Super_Bowl_50#1"].text == "Paragraph one."
    assert documents["Super_Bowl_50#0"].title == "Super Bowl 50"
    assert documents["Normans#2"].title == "Normans"
    assert squad_paragraph_id("Super_Bowl_50", 1) == "Super_Bowl_50#1"
    assert report.warnings == [
        f"{path}, field 'data[1].paragraphs[1].context': no text after cleaning"
    ]
    with pytest.raises(KinjectError, match=r"data\[1\]\.paragraphs\[1\]\.context"):
        ingest([tmp_path / "kb"], strict=True)


def test_pdf_pages_are_joined_with_a_blank_line(tmp_path):
    write(tmp_path / "kb" / "manual.pdf", pdf_bytes(["Hello PDF world", "Second page"]))

    report = ingest([tmp_path / "kb"])

    assert ids(report) == ["manual.pdf"]
    assert report.documents[0].text == "Hello PDF world\n\nSecond page"
    assert report.documents[0].title is None


# --------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("e\u0301te\u0301", "\u00e9t\u00e9"),  # NFC
        ("a\r\nb\rc\nd", "a\nb\nc\nd"),
        ("a\x00b\x07c\x1bd\x7fe", "abcde"),  # control characters
        ("zero\u200bwidth\ufeff soft\u00adhyphen", "zerowidth softhyphen"),  # format characters
        ("keep\tone \t  space", "keep one space"),
        ("no\u00a0break\u2009thin", "no break thin"),
        ("  line end  \n   line start", "line end\nline start"),
        ("p1\n\n\n\n\np2", "p1\n\np2"),
        ("p1\n  \n\t\n \np2", "p1\n\np2"),
        ("\n\n  text \n\n", "text"),
        ("tab\tand\nnewline", "tab and\nnewline"),
        ("page\fbreak", "page\nbreak"),
        ("\u0646\u0645\u200c\u0634\u062f", "\u0646\u0645\u200c\u0634\u062f"),  # ZWNJ is kept
    ],
)
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected
    assert clean_text(expected) == expected


def test_html_to_text_drops_scripts_keeps_inline_runs_and_takes_the_title():
    html = """<!DOCTYPE html>
    <html><head><title> The
      Page </title><style>p { color: red }</style><meta charset="utf-8"></head>
    <body>
      <!-- a comment -->
      <h1>Heading</h1>
      <p>Hello <b>bold</b> and
         <a href="#">a link</a>, <span>inline</span>.</p>
      <script>var hidden = "script text";</script>
      <noscript>enable javascript</noscript>
      <ul>
        <li>one</li>
        <li>two <em>words</em></li>
      </ul>
      <div>outer<div>inner</div></div>
      line<br>break
      <table><tr><td>cell a</td><td>cell b</td></tr></table>
    </body></html>"""

    text, title = html_to_text(html)

    assert title == "The Page"
    assert text == (
        "Heading\n\nHello bold and a link, inline.\n\none\ntwo words\n\nouter\ninner\n"
        "line\nbreak\n\ncell a cell b"
    )
    assert html_to_text("<p>no title</p>") == ("no title", None)


def test_html_file_is_ingested_with_its_title(tmp_path):
    html = "<html><head><title>Guide</title></head><body><p>Read <i>me</i>.</p></body></html>"
    write(tmp_path / "kb" / "guide.htm", html)
    (document,) = ingest([tmp_path / "kb"]).documents
    assert (document.id, document.title, document.text) == ("guide.htm", "Guide", "Read me.")


def test_exact_duplicates_keep_the_first_id_in_sorted_order(tmp_path):
    kb = tmp_path / "kb"
    write(kb / "b.txt", "Same   text.\r\n")
    write(kb / "a.md", "Same text.")
    write(kb / "c.txt", "Other text.")
    write(kb / "z.jsonl", jsonl({"id": "0-first", "text": "Same text."}))

    for strict in (False, True):
        report = ingest([kb], strict=strict)
        assert ids(report) == ["0-first", "c.txt"]
        assert report.duplicates == [("a.md", "0-first"), ("b.txt", "0-first")]
        assert report.warnings == []


# --------------------------------------------------------------------------- bad input

BAD_FILES = [
    ("empty.txt", b"", "empty file"),
    ("blank.md", "  \n\t\n\x07\u200b\r\n".encode(), "no text after cleaning"),
    ("binary.txt", b"PK\x03\x04\x00\x00binary", "binary file (NUL byte at offset 4)"),
    ("latin1.txt", b"first line\ncaf\xe9", "line 2: invalid UTF-8 at byte 14"),
    ("script-only.html", b"<html><script>x()</script><body> </body></html>", "no visible text"),
    ("binary.html", b"<html>\x00</html>", "binary file"),
    ("blank.jsonl", b"\n \n", "no text (only blank lines)"),
    ("config.json", b'{"name": "not squad"}', "not a SQuAD-format JSON file"),
    ("list.json", b"[1, 2]", "not a SQuAD-format JSON file"),
    ("truncated.json", b'{"data": [\n', "line 2: not valid JSON"),
    (
        "bad-context.json",
        b'{"data": [{"title": "T", "paragraphs": [{"context": "ok"}, {"context": 7}]}]}',
        "field 'data[0].paragraphs[1].context': not a SQuAD-format JSON file",
    ),
    ("broken.pdf", b"%PDF-1.4\nthis is not a pdf", "unreadable PDF"),
    ("half.pdf", pdf_bytes(["Cut short"])[:200], "unreadable PDF"),
    ("locked.pdf", None, "encrypted PDF"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_skipped_with_a_warning_or_raised_when_strict(tmp_path, name, content, message):
    kb = tmp_path / "kb"
    write(kb / "good.txt", "A good file.")
    path = write(kb / name, encrypted_pdf_bytes() if content is None else content)

    report = ingest([kb])

    assert ids(report) == ["good.txt"]
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith(str(path))
    assert message in report.warnings[0]
    with pytest.raises(KinjectError) as raised:
        ingest([kb], strict=True)
    assert str(raised.value) == report.warnings[0]


BAD_LINES = [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    ('"just a string"', "line 2: expected a JSON object"),
    (json.dumps({"text": "no id"}), "line 2, field 'id': missing or not a non-empty string"),
    (json.dumps({"id": "", "text": "x"}), "line 2, field 'id': missing or not a non-empty"),
    (json.dumps({"id": 7, "text": "x"}), "line 2, field 'id': missing or not a non-empty"),
    (json.dumps({"id": "b", "text": 5}), "line 2, field 'text': missing or not a non-empty"),
    (json.dumps({"id": "b", "text": "x", "title": 3}), "line 2, field 'title': expected a str"),
    (json.dumps({"id": "b", "text": "x", "source": []}), "line 2, field 'source': expected"),
    (json.dumps({"id": "b", "text": "x", "meta": []}), "line 2, field 'meta': expected an obj"),
    (json.dumps({"id": "b", "text": "x", "extra": 1}), "line 2, field 'extra': unknown field"),
    (json.dumps({"id": "a", "text": "again"}), "line 2, field 'id': duplicate id 'a' (first on"),
    (json.dumps({"id": "b", "text": " \u200b\t"}), "line 2, field 'text': no text after clean"),
    (b'{"id": "b", "text": "caf\xe9"}', "line 2: invalid UTF-8 at byte 61"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_bad_jsonl_line_is_skipped_with_a_warning_or_raised_when_strict(tmp_path, line, message):
    first = json.dumps({"id": "a", "text": "First record."}).encode() + b"\n"
    assert len(first) == 37  # so the invalid byte in the last case is at file offset 37 + 24
    last = json.dumps({"id": "c", "text": "Third record."}).encode() + b"\n"
    line = line if isinstance(line, bytes) else line.encode("utf-8")
    path = write(tmp_path / "kb" / "corpus.jsonl", first + line + b"\n" + last)

    report = ingest([tmp_path / "kb"])

    assert ids(report) == ["a", "c"]
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith(f"{path}, {message}")
    with pytest.raises(KinjectError) as raised:
        ingest([tmp_path / "kb"], strict=True)
    assert str(raised.value).startswith(f"{path}, {message}")


def test_oversized_file_is_skipped_without_being_read(tmp_path):
    kb = tmp_path / "kb"
    write(kb / "good.txt", "A good file.")
    big = kb / "big.txt"
    with big.open("wb") as handle:
        chunk = b"a" * 1_000_000
        for _ in range(50):
            handle.write(chunk)

    tracemalloc.start()
    try:
        report = ingest([kb])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert ids(report) == ["good.txt"]
    assert report.warnings == [
        f"{big}: too large (50.0 MB > 20 MB; raise max_file_mb in the KB config)"
    ]
    assert peak < 10_000_000  # the 50 MB file was never read into memory
    with pytest.raises(KinjectError, match="big.txt: too large"):
        ingest([kb], strict=True)
    assert ids(ingest([kb], max_file_mb=0.001)) == ["good.txt"]  # 12 bytes < 1000 bytes


def test_duplicate_jsonl_ids_across_files_keep_the_first_file(tmp_path):
    kb = tmp_path / "kb"
    one = write(kb / "one.jsonl", jsonl({"id": "x", "text": "From one."}))
    two = write(kb / "two.jsonl", jsonl({"id": "x", "text": "From two."}, {"id": "y", "text": "Y"}))

    report = ingest([kb])

    assert ids(report) == ["x", "y"]
    assert report.documents[0].text == "From one."
    assert report.warnings == [f"{two}: duplicate id 'x' (already taken by {one}), skipped"]
    with pytest.raises(KinjectError, match="duplicate id 'x'"):
        ingest([kb], strict=True)


def test_same_relative_path_in_two_sources_keeps_the_source_given_first(tmp_path):
    first = write(tmp_path / "first" / "README.md", "First readme.")
    second = write(tmp_path / "second" / "README.md", "Second readme.")

    report = ingest([tmp_path / "second", tmp_path / "first"])

    assert [d.text for d in report.documents] == ["Second readme."]
    assert report.documents[0].root == str((tmp_path / "second").absolute())
    assert report.warnings == [
        f"{first}: duplicate id 'README.md' (already taken by {second}), skipped"
    ]
    with pytest.raises(KinjectError, match="README.md"):
        ingest([tmp_path / "second", tmp_path / "first"], strict=True)


# --------------------------------------------------------------------------- walking folders


def test_symlinks_inside_are_followed_outside_and_loops_are_not(tmp_path):
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "Secret outside text.")
    kb = tmp_path / "kb"
    write(kb / "sub" / "real.md", "Real markdown.")
    write(kb / "sub" / "other.txt", "Other text.")
    (kb / "alias").symlink_to(kb / "sub")  # folder link inside: followed
    (kb / "zlink.txt").symlink_to(Path("sub") / "other.txt")  # file link inside: followed
    (kb / "file_out.txt").symlink_to(outside / "secret.txt")
    (kb / "dir_out").symlink_to(outside)
    (kb / "sub" / "loop").symlink_to(kb)  # a loop back to the root
    (kb / "broken.txt").symlink_to(kb / "missing.txt")

    for strict in (False, True):  # links not followed are warnings in both modes
        report = ingest([kb], strict=strict)
        assert ids(report) == ["alias/other.txt", "alias/real.md"]
        assert sorted(report.duplicates) == [
            ("sub/other.txt", "alias/other.txt"),
            ("sub/real.md", "alias/real.md"),
            ("zlink.txt", "alias/other.txt"),
        ]
        assert all("Secret" not in d.text for d in report.documents)
        warned = sorted(warning.split(":")[0] for warning in report.warnings)
        assert warned == sorted(
            str(kb / name) for name in ("alias/loop", "broken.txt", "dir_out", "file_out.txt",
                                        "sub/loop")
        )  # fmt: skip
        assert any("outside" in w and "file_out.txt" in w for w in report.warnings)


def test_hidden_files_and_folders_are_skipped_silently(tmp_path):
    kb = tmp_path / "kb"
    write(kb / "visible.txt", "Visible.")
    write(kb / ".hidden.txt", "Hidden file.")
    write(kb / ".git" / "notes.md", "Hidden folder.")
    write(kb / "sub" / ".cache" / "x.txt", "Nested hidden folder.")

    report = ingest([kb])

    assert ids(report) == ["visible.txt"] and report.warnings == []


def test_unsupported_files_get_one_summary_warning_per_source(tmp_path):
    for name in ("a/x.csv", "a/y.csv", "a/img.PNG", "a/Makefile", "b/z.csv"):
        write(tmp_path / name, "data")
    write(tmp_path / "a" / "ok.txt", "ok")

    report = ingest([tmp_path / "a", tmp_path / "b"])

    assert ids(report) == ["ok.txt"]
    assert report.warnings == [
        f"{tmp_path / 'a'}: skipped 4 files of unsupported types (.csv, .png, no extension)",
        f"{tmp_path / 'b'}: skipped 1 file of unsupported type (.csv)",
    ]
    assert ingest([tmp_path / "a"], strict=True).warnings[0].startswith(str(tmp_path / "a"))
    assert ".pdf" in SUPPORTED_SUFFIXES and ".csv" not in SUPPORTED_SUFFIXES


def test_bad_sources_are_always_errors(tmp_path):
    csv = write(tmp_path / "table.csv", "a,b")
    with pytest.raises(KinjectError, match=r"table\.csv: unsupported file type '\.csv'"):
        ingest([csv])
    with pytest.raises(KinjectError, match="missing: no such file or folder"):
        ingest([tmp_path / "missing"])
    with pytest.raises(KinjectError, match="no SOURCE"):
        ingest([])


def test_include_and_exclude_patterns(tmp_path):
    kb = tmp_path / "kb"
    write(kb / "LICENSE.txt", "License text.")
    write(kb / "docs" / "a.md", "Doc a.")
    write(kb / "docs" / "b.txt", "Doc b.")
    write(kb / "build" / "gen.md", "Generated.")
    write(kb / "data" / "q.json", squad(("T", ["Squad paragraph."])))

    def found(**patterns: list[str]) -> list[str]:
        return ids(ingest([kb], **patterns))

    assert found() == ["LICENSE.txt", "T#0", "build/gen.md", "docs/a.md", "docs/b.txt"]
    assert found(exclude=["LICENSE*", "build"]) == ["T#0", "docs/a.md", "docs/b.txt"]
    assert found(include=["*.json"]) == ["T#0"]
    assert found(include=["docs/*"]) == ["docs/a.md", "docs/b.txt"]
    assert found(include=["*.md"], exclude=["build/*"]) == ["docs/a.md"]
    assert found(include=["b.txt", "gen.md"]) == ["build/gen.md", "docs/b.txt"]


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not SQUAD_DEV.exists(), reason=f"{SQUAD_DEV} not present")
def test_real_squad_dev_file():
    report = ingest([SQUAD_DEV.parent], include=["*.json"])

    assert report.warnings == []
    assert len(report.documents) + len(report.duplicates) == 2067
    assert len(report.duplicates) < 10
    first = next(d for d in report.documents if d.id == squad_paragraph_id("Super_Bowl_50", 0))
    assert first.title == "Super Bowl 50"
    assert first.text.startswith("Super Bowl 50 was an American football game")
    assert len({d.sha256 for d in report.documents}) == len(report.documents)


# --------------------------------------------------------------------------- titles, headings


def heading_lines(document) -> list[tuple[int, str]]:
    """(level, text) of each heading, checking that it names the line it starts."""
    for heading in document.headings:
        line = document.text[heading.start :].split("\n")[0]
        assert heading.text in line and document.text[heading.start - 1 : heading.start] in "\n"
    return [(heading.level, heading.text) for heading in document.headings]


def test_markdown_headings_and_first_heading_as_title(tmp_path):
    write(
        tmp_path / "kb" / "guide.md",
        "# Kestrel  Guide\n\nIntro.\n\n## Install ##\n\nRun it.\n\n```\n# not a heading\n```\n\n"
        "### On Linux\n\nUse the tarball.\n\n#hashtag, not a heading\n\n## Usage\n\nPoint it.",
    )
    write(tmp_path / "kb" / "plain.md", "No heading here.\n\n## Later\n\nText.")
    write(tmp_path / "kb" / "notes.txt", "# Not markdown\n\nA text file.")

    documents = {d.id: d for d in ingest([tmp_path / "kb"]).documents}

    guide = documents["guide.md"]
    assert guide.title == "Kestrel Guide"  # the first heading, out of the headings
    assert heading_lines(guide) == [(2, "Install"), (3, "On Linux"), (2, "Usage")]
    assert documents["plain.md"].title == "Later" and documents["plain.md"].headings == ()
    assert documents["notes.txt"].title is None and documents["notes.txt"].headings == ()


def test_html_headings_and_title(tmp_path):
    write(
        tmp_path / "kb" / "a.html",
        "<html><head><title>Harbour  Notes</title></head><body><h1>Harbour Notes</h1>"
        "<ul><li><a href='#s'>Ships and boats</a></li><li>Ferries</li></ul>"  # contents
        "<p>Opened in 1802.</p><h2>Ships <small>and boats</small></h2><p>The Marigold.</p>"
        "<section><h3>Fer<b>ries</b></h3><p>Hourly.</p></section><script><h2>no</h2></script>"
        "</body>",
    )
    write(
        tmp_path / "kb" / "b.htm", "<body><h2>Untitled page</h2><p>Text.</p><h3>Part</h3>x</body>"
    )

    documents = {d.id: d for d in ingest([tmp_path / "kb"]).documents}

    page = documents["a.html"]
    assert page.title == "Harbour Notes"
    assert heading_lines(page) == [(1, "Harbour Notes"), (2, "Ships and boats"), (3, "Ferries")]
    ships = page.headings[1].start  # the heading's own line, not the table of contents'
    assert page.text[ships:].startswith("Ships and boats\n\nThe Marigold.")
    untitled = documents["b.htm"]  # no <title>: its first heading
    assert untitled.title == "Untitled page" and heading_lines(untitled) == [(3, "Part")]


def test_jsonl_headings_are_placed_at_their_lines_and_bad_ones_are_named(tmp_path):
    good = {
        "id": "a",
        "title": "Alpha",
        "text": "Intro.\n\nHistory\nFounded in 1900.\n\nNot a heading: History\n\nLater\nEnd.",
        "headings": [[2, "History"], [3, "Later"], [2, "Missing"]],
    }
    bad = {"id": "b", "text": "B.", "headings": [[2, "Ok"], [9, "Too deep"]]}
    path = write(tmp_path / "corpus.jsonl", jsonl(good, bad))

    report = ingest([path])

    (document,) = report.documents
    assert heading_lines(document) == [(2, "History"), (3, "Later")]  # no line: left out
    assert report.warnings == [
        f"{path}, line 2, field 'headings[1]': expected [level, \"heading\"] with level 1 to 6"
    ]


def test_formats_without_headings_keep_their_titles(tmp_path):
    write(tmp_path / "kb" / "a.txt", "Plain text.")
    write(tmp_path / "kb" / "manual.pdf", pdf_bytes(["Hello PDF world"]))
    write(tmp_path / "kb" / "squad.json", squad(("Super_Bowl_50", ["Paragraph zero."])))

    documents = {d.id: d for d in ingest([tmp_path / "kb"]).documents}

    assert documents["Super_Bowl_50#0"].title == "Super Bowl 50"
    assert documents["a.txt"].title is None and documents["manual.pdf"].title is None
    assert all(document.headings == () for document in documents.values())
