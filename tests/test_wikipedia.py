"""Wikipedia knowledge bases: the real client code against recorded MediaWiki API responses
(formatversion=2 JSON in tests/fixtures/wikipedia/) served by a real HTTP server on loopback;
local dumps and WikiExtractor output through the real ingestion; the real MiniLM embedder."""

from __future__ import annotations

import bz2
import gzip
import json
import shutil
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from kinject.cli import app
from kinject.config import KBConfig
from kinject.errors import KinjectError
from kinject.kb.chunking import heading_line
from kinject.kb.ingest import ingest
from kinject.kb.store import KnowledgeBase
from kinject.sources.wikipedia import (
    MediaWikiClient,
    WikipediaSource,
    build_wikipedia_kb,
    fetch_wikipedia,
)

FIXTURES = Path(__file__).parent / "fixtures" / "wikipedia"
CONFIG = KBConfig(chunking={"size": 48, "overlap": 12})
CATEGORY = "Category:2023 events in the United States by month"

# The API's extract of "Hurricane Idalia" (see its fixture), sections tidied: See also,
# References and External links gone, the empty "Preparations" kept for its subsection.
IDALIA_FROM_API = (
    "Hurricane Idalia was a powerful Atlantic hurricane that struck the Big Bend region of "
    "Florida in late August 2023. The ninth named storm of the 2023 Atlantic hurricane season, "
    "Idalia formed from a broad area of low pressure near the Yucatán Peninsula on August 26.\n"
    "Idalia made landfall near Keaton Beach, Florida, on August 30 as a Category 3 hurricane, "
    "the strongest to strike the Big Bend region in more than a century.\n\n"
    "Meteorological history\n"
    "The storm strengthened quickly over the unusually warm waters of the Gulf of Mexico, "
    "reaching Category 4 intensity shortly before landfall.\n\n"
    "Landfall\n"
    "After landfall the hurricane weakened as it moved across southern Georgia and the "
    "Carolinas.\n\n"
    "Preparations\n\n"
    "Florida\n"
    "Governor Ron DeSantis declared a state of emergency for 46 counties on August 27."
)
HAWAII_FROM_API = (
    "In early August 2023, a series of wildfires broke out in the U.S. state of Hawaii, "
    "predominantly on the island of Maui. The wind-driven fires prompted evacuations and "
    "destroyed much of the historic town of Lahaina.\n"
    "The Lahaina fire was the deadliest wildfire in the United States since 1918.\n\n"
    "Background\n"
    "Strong winds from Hurricane Dora, passing far to the south, combined with dry vegetation "
    "to spread the fires.\n\n"
    "Aftermath\n"
    "President Joe Biden approved a major disaster declaration for Hawaii on August 10."
)
# The wikitext of the dump fixture, cleaned: templates (the {{convert}} too), refs, comments,
# the table, the file and category links, bold/italic marks and boilerplate sections gone.
IDALIA_FROM_DUMP = (
    "Hurricane Idalia was a powerful Atlantic hurricane that struck the Big Bend region of "
    "Florida in late August 2023. It was the ninth named storm of the 2023 Atlantic hurricane "
    "season.\n\n"
    "Meteorological history\n"
    "Idalia formed near the Yucatán Peninsula and made landfall near Keaton Beach, Florida, on "
    "August 30.\n\n"
    "Landfall\n"
    "Winds of were measured.\n"
    "Storm surge reached Cedar Key."
)
LEWISTON_FROM_DUMP = (
    "On October 25, 2023, mass shootings took place at a bowling alley and a bar in Lewiston, "
    "Maine. It was the deadliest mass shooting in the history of Maine. A manhunt followed."
)


# --------------------------------------------------------------------------- the server


@dataclass
class Request:
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival


class FakeWikipedia:
    """Recorded API responses by request parameters (routes.json); ``scripted[key]``: responses
    ``(status, headers, body)`` to send first for the page or category ``key``;
    ``failing[key]``: one to send for it forever."""

    def __init__(self):
        self.routes = json.loads((FIXTURES / "routes.json").read_text(encoding="utf-8"))
        self.requests: list[Request] = []
        self.scripted: dict[str, list[tuple[int, dict, bytes]]] = {}
        self.failing: dict[str, tuple[int, dict, bytes]] = {}
        self.url = ""

    def respond(self, params: dict[str, str]) -> tuple[int, dict, bytes]:
        key = params.get("titles") or params.get("cmtitle") or ""
        if self.scripted.get(key):
            return self.scripted[key].pop(0)
        if key in self.failing:
            return self.failing[key]
        for route in self.routes:
            if all(params.get(name) == value for name, value in route["params"].items()):
                return 200, {}, (FIXTURES / route["file"]).read_bytes()
        return 400, {}, f"no recorded response for {params}".encode()

    def titles_asked(self) -> list[str]:
        return [r.params["titles"] for r in self.requests if "titles" in r.params]

    def categories_asked(self) -> list[tuple[str, str | None]]:
        return [
            (r.params["cmtitle"], r.params.get("cmcontinue"))
            for r in self.requests
            if "cmtitle" in r.params
        ]


@pytest.fixture
def wiki():
    fake = FakeWikipedia()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlsplit(self.path)
            params = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            fake.requests.append(Request(url.path, params, dict(self.headers), time.monotonic()))
            status, headers, body = fake.respond(params)
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body)
                headers = {**headers, "Content-Encoding": "gzip"}
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/w/api.php"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def client(wiki: FakeWikipedia, tmp_path: Path, **options) -> MediaWikiClient:
    settings = {"min_interval_s": 0.0, "backoff_s": 0.001, "max_backoff_s": 0.01, **options}
    return MediaWikiClient(wiki.url, cache_dir=tmp_path / "wiki-cache", **settings)


def fetch(wiki, tmp_path, source: WikipediaSource, **options):
    skip_missing = options.pop("skip_missing", False)
    the_client = client(wiki, tmp_path, **options)
    return fetch_wikipedia(source, the_client, skip_missing, show_progress=False), the_client


# --------------------------------------------------------------------------- the API


def test_pages_become_a_knowledge_base_with_redirects_followed(wiki, tmp_path):
    out = tmp_path / "kb"
    source = WikipediaSource(("Hurricane Idalia", "2023 Maui wildfires"))
    build = build_wikipedia_kb(source, out, CONFIG, client(wiki, tmp_path), show_progress=False)

    assert build.fetched.redirects == [("2023 Maui wildfires", "2023 Hawaii wildfires")]
    assert build.fetched.notes == ["note: redirect 2023 Maui wildfires → 2023 Hawaii wildfires"]
    kb = KnowledgeBase.open(out)
    documents = {document.id: document for document in kb.documents()}
    assert sorted(documents) == ["2023_Hawaii_wildfires", "Hurricane_Idalia"]
    assert documents["Hurricane_Idalia"].text == IDALIA_FROM_API
    assert documents["Hurricane_Idalia"].title == "Hurricane Idalia"
    assert documents["2023_Hawaii_wildfires"].text == HAWAII_FROM_API
    idalia = documents["Hurricane_Idalia"]
    assert [(h.level, h.text) for h in idalia.headings] == [
        (2, "Meteorological history"),
        (3, "Landfall"),
        (2, "Preparations"),
        (3, "Florida"),
    ]
    governor = idalia.text.index("Governor Ron DeSantis")  # indexed under its sections
    line = heading_line(idalia.title, idalia.headings, governor, "title+headings+text")
    assert line == "Hurricane Idalia > Preparations > Florida"
    for chunk in kb.chunks:
        title = documents[chunk.doc_id].title
        assert chunk.heading.startswith(title) and chunk.indexed.endswith(chunk.text)
    assert build.change.documents == 2 and build.change.chunks >= 4
    (hits,) = kb.retriever("bm25").search(["Lahaina fire deadliest wildfire"], 1)
    assert kb.chunks[hits[0].row].doc_id == "2023_Hawaii_wildfires"

    (part,) = sorted(build.corpus.glob("*.jsonl"))
    rows = {row["id"]: row for row in map(json.loads, part.read_text().splitlines())}
    assert rows["Hurricane_Idalia"]["source"] == "https://en.wikipedia.org/wiki/Hurricane_Idalia"
    assert rows["Hurricane_Idalia"]["meta"] == {"pageid": 74676170, "revision": 1187880214}

    assert wiki.titles_asked() == ["Hurricane Idalia", "2023 Maui wildfires"]  # one per request
    for request in wiki.requests:
        assert request.path == "/w/api.php"
        assert request.headers["User-Agent"].startswith("kinject/")
        assert "python-urllib/" in request.headers["User-Agent"]
        assert request.params["maxlag"] == "5"
        assert request.params["format"] == "json" and request.params["formatversion"] == "2"
        assert request.params["prop"] == "extracts|info" and request.params["explaintext"] == "1"
        assert request.params["redirects"] == "1"


def test_a_second_run_is_served_from_the_cache(wiki, tmp_path):
    source = WikipediaSource(category=CATEGORY, depth=1)
    first, first_client = fetch(wiki, tmp_path, source)
    sent = len(wiki.requests)
    assert first_client.http_requests == sent == 10  # 5 category listings, 5 pages

    again, again_client = fetch(wiki, tmp_path, source)
    assert again_client.http_requests == 0 and len(wiki.requests) == sent
    assert again.pages == first.pages and again.urls == first.urls

    _, refreshing = fetch(wiki, tmp_path, source, refresh=True)
    assert refreshing.http_requests == sent


def test_a_category_with_depth_1_collects_each_subcategory_page_once(wiki, tmp_path):
    source = WikipediaSource(category="2023_events_in_the_United_States_by_month", depth=1)
    fetched, _ = fetch(wiki, tmp_path, source)

    assert [page.title for page in fetched.pages] == [
        "2023 in the United States",
        "2023 Hawaii wildfires",
        "Hurricane Idalia",  # in August and September: fetched once
        "2023 United Auto Workers strike",  # in September and October: fetched once
        "2023 Lewiston shootings",
    ]
    assert sorted(wiki.titles_asked()) == sorted(page.title for page in fetched.pages)
    continuation = json.loads(
        (FIXTURES / "query-categorymembers-2023_events_by_month.json").read_text()
    )
    assert wiki.categories_asked() == [
        (CATEGORY, None),
        (CATEGORY, continuation["continue"]["cmcontinue"]),  # continuation followed
        ("Category:August 2023 events in the United States", None),
        ("Category:September 2023 events in the United States", None),
        ("Category:October 2023 events in the United States", None),
    ]  # the August subcategory's own subcategory (depth 2) is not listed; the cycle back ends
    listing = wiki.requests[0].params
    assert listing["list"] == "categorymembers" and listing["cmlimit"] == "max"
    assert listing["cmtype"] == "page|subcat"
    assert fetched.pages[2].text == IDALIA_FROM_API


def test_deeper_categories_are_walked_once_through_cycles(wiki, tmp_path):
    # August lists the root category and "August 2023 crimes", which lists August again
    # refresh: no cache reads, so a category listed twice would be asked twice
    fetched, _ = fetch(wiki, tmp_path, WikipediaSource(category=CATEGORY, depth=4), refresh=True)
    assert [page.title for page in fetched.pages][-1] == "2023 Jacksonville shooting"
    assert len(fetched.pages) == 6
    asked = [category for category, _ in wiki.categories_asked()]
    assert asked.count("Category:August 2023 crimes in the United States") == 1
    assert asked.count(CATEGORY) == 2  # the first listing and its continuation


def test_a_category_with_depth_0_is_its_own_pages_only(wiki, tmp_path):
    fetched, _ = fetch(wiki, tmp_path, WikipediaSource(category=CATEGORY))
    assert [page.id for page in fetched.pages] == ["2023_in_the_United_States"]
    assert [category for category, _ in wiki.categories_asked()] == [CATEGORY, CATEGORY]
    assert fetched.pages[0].text == (
        "The following is a list of events of the year 2023 in the United States, as well as "
        "predicted and scheduled events that have not yet occurred.\n\n"
        "Incumbents\n\n"
        "Federal government\n"
        "President: Joe Biden (D-Delaware)\n"
        "Vice President: Kamala Harris (D-California)"
    )


def test_a_missing_page_is_a_one_line_error_and_leaves_no_knowledge_base(wiki, tmp_path):
    out = tmp_path / "kb"
    source = WikipediaSource(("Hurricane Idalia", "Hurricane Idalia (2024)"))
    with pytest.raises(KinjectError) as error:
        build_wikipedia_kb(source, out, CONFIG, client(wiki, tmp_path), show_progress=False)
    message = str(error.value)
    assert "no Wikipedia page 'Hurricane Idalia (2024)'" in message and "--skip-missing" in message
    assert "\n" not in message
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "wiki-cache"]

    fetched, _ = fetch(wiki, tmp_path, source, skip_missing=True)
    assert [page.id for page in fetched.pages] == ["Hurricane_Idalia"]
    assert fetched.notes == ["warning: skipped missing page 'Hurricane Idalia (2024)'"]


def test_a_normalised_title_is_not_reported_as_a_redirect(wiki, tmp_path):
    fetched, _ = fetch(wiki, tmp_path, WikipediaSource(("hurricane Idalia", "Hurricane Idalia")))
    assert [page.title for page in fetched.pages] == ["Hurricane Idalia"]
    assert fetched.redirects == []
    assert fetched.notes == [
        "note: 'Hurricane Idalia' is 'Hurricane Idalia', already fetched as 'hurricane Idalia'"
    ]


def test_http_429_is_retried_after_the_servers_retry_after(wiki, tmp_path):
    wiki.scripted["Hurricane Idalia"] = [(429, {"Retry-After": "0.3"}, b"Too many requests")]
    fetched, the_client = fetch(
        wiki, tmp_path, WikipediaSource(("Hurricane Idalia",)), max_backoff_s=5.0
    )
    assert [page.text for page in fetched.pages] == [IDALIA_FROM_API]
    assert wiki.titles_asked() == ["Hurricane Idalia", "Hurricane Idalia"]
    first, second = wiki.requests
    assert second.at - first.at >= 0.25  # waited as asked, not the 1 ms backoff
    assert the_client.http_requests == 2


def test_the_maxlag_error_is_retried(wiki, tmp_path):
    maxlag = (FIXTURES / "error-maxlag.json").read_bytes()
    wiki.scripted["Hurricane Idalia"] = [(200, {"Retry-After": "0"}, maxlag)] * 2
    fetched, _ = fetch(wiki, tmp_path, WikipediaSource(("Hurricane Idalia",)))
    assert [page.id for page in fetched.pages] == ["Hurricane_Idalia"]
    assert len(wiki.requests) == 3
    (cached,) = (tmp_path / "wiki-cache").rglob("*.json")  # the answer, not the error
    assert json.loads(cached.read_text())["response"]["query"]["pages"][0]["pageid"] == 74676170


def test_server_errors_give_a_clear_error_after_max_retries(wiki, tmp_path):
    wiki.failing["Hurricane Idalia"] = (503, {"Retry-After": "0"}, b"Service Unavailable")
    with pytest.raises(KinjectError) as error:
        fetch(wiki, tmp_path, WikipediaSource(("Hurricane Idalia",)), max_retries=2)
    assert str(error.value) == (
        f"{wiki.url}: fetching page 'Hurricane Idalia' failed 3 times, "
        "last: HTTP 503 Service Unavailable"
    )
    assert len(wiki.requests) == 3
    assert not (tmp_path / "wiki-cache").exists()  # failures are not cached


def test_an_api_error_is_not_retried(wiki, tmp_path):
    body = json.dumps(
        {"error": {"code": "badvalue", "info": 'Unrecognized value for parameter "list".'}}
    )
    wiki.failing[CATEGORY] = (200, {}, body.encode())
    with pytest.raises(KinjectError, match="API error 'badvalue': Unrecognized value"):
        fetch(wiki, tmp_path, WikipediaSource(category=CATEGORY))
    assert len(wiki.requests) == 1


def test_requests_are_spaced_by_the_minimum_interval(wiki, tmp_path):
    titles = ("Hurricane Idalia", "2023 Hawaii wildfires", "2023 Lewiston shootings")
    fetch(wiki, tmp_path, WikipediaSource(titles), min_interval_s=0.05)
    arrivals = [request.at for request in wiki.requests]
    assert len(arrivals) == 3
    assert all(later - earlier >= 0.04 for earlier, later in pairwise(arrivals))


def kinject(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_builds_a_knowledge_base_and_reports_errors_in_one_line(wiki, tmp_path):
    out = tmp_path / "kb" / "us"
    cache = tmp_path / "cache"
    agent = "kinject-tests/1.0 (tests@example.org) python-urllib/3"
    code, stdout, stderr = kinject(
        "kb", "wikipedia", "--page", "2023 Maui wildfires", "--out", out, "--api-url", wiki.url,
        "--cache-dir", cache, "--user-agent", agent,
    )  # fmt: skip
    assert code == 0, stderr
    assert "note: redirect 2023 Maui wildfires → 2023 Hawaii wildfires" in stderr
    assert f"knowledge base: {out} (1 Wikipedia pages)" in stdout
    assert [d.id for d in KnowledgeBase.open(out).documents()] == ["2023_Hawaii_wildfires"]
    assert wiki.requests[0].headers["User-Agent"] == agent

    missing = tmp_path / "kb" / "missing"
    code, stdout, stderr = kinject(
        "kb", "wikipedia", "--page", "Hurricane Idalia (2024)", "--out", missing,
        "--api-url", wiki.url, "--cache-dir", cache,
    )  # fmt: skip
    assert code == 2
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        (
            f"error: no Wikipedia page 'Hurricane Idalia (2024)' at {wiki.url} "
            "(check the titles, or pass --skip-missing)"
        )
    ]
    assert not missing.exists()

    code, _, stderr = kinject("kb", "wikipedia", "--out", missing, "--depth", "1", "--page", "X")
    assert code == 2 and "--depth applies to --category only" in stderr

    code, stdout, _ = kinject("kb", "wikipedia", "--help")
    assert code == 0 and "Example" in stdout and "kinject kb wikipedia --out kb/events" in stdout


# --------------------------------------------------------------------------- local dumps


def bz2_copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bz2.compress(source.read_bytes()))
    return target


def test_a_pages_articles_dump_is_streamed_and_cleaned(tmp_path):
    xml = FIXTURES / "enwiki-pages-articles-sample.xml"
    split_dump = bz2_copy(xml, tmp_path / "enwiki-20231201-pages-articles1.xml-p1p41242.bz2")
    for dump in (xml, split_dump, bz2_copy(xml, tmp_path / "sample.xml.bz2")):
        report = ingest([dump], strict=True)
        # the redirect and the Template: page are skipped
        assert [d.id for d in report.documents] == ["2023_Lewiston_shootings", "Hurricane_Idalia"]
        documents = {d.id: d for d in report.documents}
        assert documents["Hurricane_Idalia"].text == IDALIA_FROM_DUMP
        assert documents["Hurricane_Idalia"].title == "Hurricane Idalia"
        idalia = documents["Hurricane_Idalia"]  # the section names: lines of the text
        assert [(h.level, h.text) for h in idalia.headings] == [
            (2, "Meteorological history"),
            (3, "Landfall"),
        ]
        assert all(idalia.text[h.start :].split("\n")[0] == h.text for h in idalia.headings)
        assert documents["2023_Lewiston_shootings"].text == LEWISTON_FROM_DUMP
        assert report.warnings == []


def test_wikiextractor_doc_and_json_files(tmp_path):
    folder = tmp_path / "text"
    shutil.copytree(FIXTURES / "extracted", folder)
    bz2_copy(FIXTURES / "extracted" / "AA" / "wiki_00", folder / "AB" / "wiki_00.bz2")
    (folder / "AB" / "wiki_00").write_text(
        '<doc id="1" url="https://en.wikipedia.org/wiki?curid=1" title="Page &quot;A&quot;">\n'
        'Page "A"\n\nText of A.\n</doc>\n',
        encoding="utf-8",
    )
    report = ingest([folder])
    texts = {d.id: d.text for d in report.documents}
    assert texts == {
        "2023_Hawaii_wildfires": (
            "In early August 2023, a series of wildfires broke out in the U.S. state of Hawaii, "
            "predominantly on the island of Maui. The fires destroyed much of the historic town "
            "of Lahaina & nearby Kula.\n"
            "Background.\n"
            "Strong winds from Hurricane Dora combined with dry vegetation to spread the fires."
        ),
        "2023_United_Auto_Workers_strike": (
            "The 2023 United Auto Workers strike was a labor strike by the United Auto Workers "
            "against General Motors, Ford and Stellantis."
        ),
        "2023_Lewiston_shootings": (
            "On October 25, 2023, mass shootings took place at a bowling alley and a bar in "
            "Lewiston, Maine.\nA manhunt lasted two days."
        ),
        "2023_in_the_United_States": (
            "The following is a list of events of the year 2023 in the United States."
        ),
        'Page_"A"': "Text of A.",
    }
    # the compressed copy's pages are the same documents: their ids are taken already
    assert len(report.warnings) == 2
    assert all("AB/wiki_00.bz2: duplicate id" in warning for warning in report.warnings)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.xml",
            (
                '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">\n<page>\n'
                "<title>A</title></pag>\n</mediawiki>"
            ),
            r"bad\.xml, line 3: not well-formed XML \(mismatched tag",
        ),
        ("notes.xml", "<notes><note>hi</note></notes>", r"not a MediaWiki XML export"),
        (
            "notext.xml",
            (
                '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/"><page><title>Lahaina'
                "</title><ns>0</ns><id>3</id><revision><id>4</id></revision></page></mediawiki>"
            ),
            r"notext\.xml, field 'text': page 1 'Lahaina' has no <revision><text>",
        ),
        (
            "wiki_03",
            '{"id": "1", "url": "u", "title": "A", "text": "Text."}\n{"id": "2", "text": "B"}\n',
            r"wiki_03, line 2, field 'title': missing or not a non-empty string",
        ),
        (
            "wiki_04",
            '<doc id="1" url="u" title="A">\nA\n\nText.\n',
            r"wiki_04, line 1: <doc> without a closing </doc>",
        ),
        (
            "truncated.xml.bz2",
            bz2.compress(b"<mediawiki>" + b"<page/>" * 1000)[:60],
            r"truncated\.xml\.bz2: cannot read the dump",
        ),
    ],
)
def test_bad_wikipedia_input_names_file_line_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(KinjectError, match=message):
        ingest([path], strict=True)
    assert any(name in warning for warning in ingest([path]).warnings)  # else: a warning


def test_kb_build_takes_a_dump_and_wikiextractor_output(tmp_path):
    sources = tmp_path / "wiki"
    bz2_copy(FIXTURES / "enwiki-pages-articles-sample.xml", sources / "enwiki-sample.xml.bz2")
    shutil.copytree(FIXTURES / "extracted", sources / "text")
    out = tmp_path / "kb"
    code, _stdout, stderr = kinject("kb", "build", sources, "--out", out)
    assert code == 0, stderr
    documents = {d.id: d for d in KnowledgeBase.open(out).documents()}
    assert sorted(documents) == [
        "2023_Hawaii_wildfires",
        "2023_Lewiston_shootings",
        "2023_United_Auto_Workers_strike",
        "2023_in_the_United_States",
        "Hurricane_Idalia",
    ]
    assert documents["2023_Lewiston_shootings"].text == LEWISTON_FROM_DUMP  # the dump sorts first
    assert "text/AA/wiki_01: duplicate id '2023_Lewiston_shootings'" in stderr


def test_a_folder_walk_passes_over_xml_that_is_not_a_mediawiki_export(tmp_path):
    sources = tmp_path / "project"
    sources.mkdir()
    shutil.copy(FIXTURES / "enwiki-pages-articles-sample.xml", sources / "d.xml")
    (sources / "pom.xml").write_text("<project><modelVersion>4.0.0</modelVersion></project>")
    report = ingest([sources], strict=True)  # strict: a bad file would be an error
    assert "Hurricane_Idalia" in {d.id for d in report.documents}
    assert report.warnings == [f"{sources}: skipped 1 file of unsupported type (.xml)"]
