"""Wikipedia pages through the MediaWiki Action API, into a knowledge base.

::

    titles ─┐                          one request per page (TextExtracts returns a whole
            ├─► page titles ─► extracts ─► plain-text extract for one page per request)
 category ──┘   (categorymembers,        │
  + depth        continued, subcats      ▼
                 walked breadth-first)  WikiPage ─► corpus JSONL (cache) ─► build_kb

The client (:class:`MediaWikiClient`) uses only the standard library.  It is polite:

- a descriptive User-Agent (Wikimedia's policy asks for one; pass your contact with
  ``user_agent``), gzip, ``maxlag=5``;
- at least ``min_interval_s`` between the starts of two requests;
- HTTP 429 and 5xx, network errors and the API's ``maxlag`` error are retried with
  exponential backoff, at least as long as the server's ``Retry-After``; then a clear error;
- every successful response is cached on disk (``cache_dir()/wikipedia/``) under a hash of
  the API URL and request parameters, written atomically; a cached request makes no HTTP call
  (``refresh`` fetches again and replaces the cached copy).

Page texts are the API's plain-text extracts requested with ``exsectionformat=wiki``, so that
headings can be told from prose: sections without prose (References, External links, See
also, empty ones) are dropped and headings kept as plain lines
(:func:`kinject.sources.wikitext.tidy_sections`), as for a dump.
"""

from __future__ import annotations

import gzip
import json
import platform
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

from kinject import __version__
from kinject.cache import cache_dir as default_cache_dir
from kinject.cache import fingerprint
from kinject.errors import KinjectError
from kinject.fileio import staging_dir, write_json, write_jsonl
from kinject.progress import progress_bar
from kinject.sources.wikidump import WikiPage
from kinject.sources.wikitext import tidy_sections_and_headings

DEFAULT_API_URL = "https://en.wikipedia.org/w/api.php"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CATEGORY_PREFIX = "Category:"
# Corpus files are split so that each stays well under the knowledge base's file size limit.
_CORPUS_PART_BYTES = 4_000_000


def default_user_agent() -> str:
    """``kinject/<version> (knowledge-base builder; …) python-urllib/<python version>``."""
    return (
        f"kinject/{__version__} (knowledge-base builder; Wikipedia knowledge bases for "
        f"knowledge-injection experiments) python-urllib/{platform.python_version()}"
    )


class MediaWikiClient:
    """GET requests to one MediaWiki API: rate-limited, retried, cached (see the module doc)."""

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        user_agent: str | None = None,
        min_interval_s: float = 1.0,
        max_retries: int = 5,
        cache_dir: str | Path | None = None,
        timeout_s: float = 30.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 120.0,
        refresh: bool = False,
    ):
        if not api_url.startswith(("http://", "https://")):
            raise KinjectError(f"--api-url must be an http(s) URL, got '{api_url}'")
        if min_interval_s < 0 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise KinjectError("min_interval_s, max_retries, backoff_s ≥ 0 and timeout_s > 0")
        self.api_url = api_url
        self.user_agent = user_agent or default_user_agent()
        self.min_interval_s = min_interval_s
        self.max_retries = max_retries
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "wikipedia"
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.refresh = refresh
        self.http_requests = 0  # requests sent, retries included
        self._last_request: float | None = None

    # ------------------------------------------------------------------- requests

    def query(self, params: dict[str, str]) -> dict:
        """One API response (JSON, formatversion 2): from the cache, or fetched and cached."""
        params = {"format": "json", "formatversion": "2", **params}
        path = self.cache_path(params)
        if not self.refresh and path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))["response"]
            except (ValueError, KeyError):
                pass  # not a cache file we wrote (atomic writes): fetch it again
        response = self._fetch(params)
        write_json(path, {"api_url": self.api_url, "params": params, "response": response})
        return response

    def query_continued(self, params: dict[str, str]) -> Iterator[dict]:
        """Each response of a query, following ``continue`` until the API says it is complete."""
        extra: dict[str, str] = {}
        while True:
            response = self.query({**params, **extra})
            yield response
            more = response.get("continue")
            if not more:
                return
            extra = {key: str(value) for key, value in more.items()}

    def cache_path(self, params: dict[str, str]) -> Path:
        key = fingerprint(self.api_url, sorted(params.items()))
        return self.cache_dir / key[:2] / f"{key}.json"

    def _fetch(self, params: dict[str, str]) -> dict:
        url = f"{self.api_url}?{urllib.parse.urlencode({**params, 'maxlag': '5'})}"
        what = _describe(params)
        failure, retry_after = "", 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                backoff = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(min(max(backoff, retry_after), self.max_backoff_s))
            outcome = self._attempt(url, what)
            if isinstance(outcome, dict):
                return outcome
            failure, retry_after = outcome
        attempts = self.max_retries + 1
        raise KinjectError(
            f"{self.api_url}: {what} failed {attempts} time{'s' * (attempts > 1)}, last: {failure}"
        )

    def _attempt(self, url: str, what: str) -> dict | tuple[str, float]:
        """The response, or ``(why it failed, seconds the server asked to wait)`` when the
        request may be retried; anything else is raised."""
        self._wait_turn()
        request = urllib.request.Request(
            url,
            headers={
                "User-Agent": self.user_agent,
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
            },
        )
        self.http_requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
                if response.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                wait = _retry_after(response.headers.get("Retry-After"))
        except urllib.error.HTTPError as error:
            with error:
                status = f"HTTP {error.code} {error.reason}"
                if error.code in RETRY_STATUSES:
                    return status, _retry_after(error.headers.get("Retry-After")) or 0.0
            raise KinjectError(f"{self.api_url}: {what}: {status}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            return f"{type(error).__name__}: {' '.join(str(reason).split())}", 0.0
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise KinjectError(f"{self.api_url}: {what}: the response is not JSON") from None
        if not isinstance(data, dict):
            raise KinjectError(f"{self.api_url}: {what}: the response is not a JSON object")
        error = data.get("error")
        if isinstance(error, dict):
            code, info = error.get("code"), " ".join(str(error.get("info", "")).split())
            if code == "maxlag":
                lag = float(error.get("lag") or 0)
                return f"maxlag ({info})", lag if wait is None else wait
            raise KinjectError(f"{self.api_url}: {what}: API error '{code}': {info}")
        return data

    def _wait_turn(self) -> None:
        """Sleep until ``min_interval_s`` has passed since the previous request started."""
        if self._last_request is not None:
            wait = self._last_request + self.min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_request = time.monotonic()

    # ------------------------------------------------------------------- pages

    def page(self, title: str) -> dict:
        """The API's page object for ``title`` (redirects followed), with ``redirected_from``
        when it was reached through a redirect.  Missing or invalid pages are returned as the
        API describes them (``missing`` / ``invalid``)."""
        params = {
            "action": "query",
            "prop": "extracts|info",
            "inprop": "url",
            "explaintext": "1",
            "exsectionformat": "wiki",
            "redirects": "1",
            "titles": title,
        }
        normalized: dict[str, str] = {}
        redirects: dict[str, str] = {}
        pages: dict[str, dict] = {}
        for response in self.query_continued(params):
            query = response.get("query", {})
            normalized.update({step["from"]: step["to"] for step in query.get("normalized", [])})
            redirects.update({step["from"]: step["to"] for step in query.get("redirects", [])})
            for page in query.get("pages", []):
                pages.setdefault(page["title"], {}).update(page)
        final = normalized.get(title, title)
        seen = {final}
        while final in redirects and redirects[final] not in seen:
            final = redirects[final]
            seen.add(final)
        if final not in pages:
            raise KinjectError(f"{self.api_url}: the response for '{title}' has no such page")
        page = dict(pages[final])
        if len(seen) > 1:
            page["redirected_from"] = title
        return page

    def category_members(self, category: str) -> Iterator[dict]:
        """Articles (ns 0) and subcategories (ns 14) of ``category``, every continuation."""
        params = {
            "action": "query",
            "list": "categorymembers",
            "cmtitle": category,
            "cmtype": "page|subcat",
            "cmnamespace": "0|14",
            "cmprop": "ids|title",
            "cmlimit": "max",
        }
        for response in self.query_continued(params):
            yield from response.get("query", {}).get("categorymembers", [])


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date); None when absent."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _describe(params: dict[str, str]) -> str:
    if "titles" in params:
        return f"fetching page '{params['titles']}'"
    if "cmtitle" in params:
        return f"listing '{params['cmtitle']}'"
    return "request"


# --------------------------------------------------------------------------- what to fetch


@dataclass(frozen=True)
class WikipediaSource:
    """Pages to fetch: titles, or a category (with ``depth`` levels of subcategories)."""

    pages: tuple[str, ...] = ()
    category: str | None = None
    depth: int = 0  # 0: the category's own pages; 1: and those of its subcategories; …

    def __post_init__(self) -> None:
        if bool(self.pages) == bool(self.category):
            raise KinjectError("name pages (--page, repeatable) or one --category, not both")
        if self.depth < 0:
            raise KinjectError(f"--depth must be 0 or more, got {self.depth}")
        if self.depth and not self.category:
            raise KinjectError("--depth applies to --category only")
        if any(not title.strip() for title in self.pages):
            raise KinjectError("--page needs a page title, got an empty one")


@dataclass
class Fetched:
    """Pages fetched, and what happened on the way."""

    pages: list[WikiPage] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # page id -> page URL
    meta: dict[str, dict] = field(default_factory=dict)  # page id -> pageid, revision
    redirects: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # "note: …" and "warning: …" lines


def category_title(name: str) -> str:
    """``"Category:X"`` for ``"X"``, ``"category:X"`` or ``"Category:X"`` (``_`` as spaces)."""
    name = " ".join(name.replace("_", " ").split())
    prefix, colon, rest = name.partition(":")
    if colon and prefix.strip().lower() == "category":
        name = rest.strip()
    if not name:
        raise KinjectError("--category needs a category name")
    return CATEGORY_PREFIX + name


def category_page_titles(client: MediaWikiClient, category: str, depth: int) -> list[str]:
    """The article titles in ``category`` and, to ``depth`` levels, its subcategories:
    breadth-first, each title once, each category visited once (category cycles end)."""
    root = category_title(category)
    queue = deque([(root, 0)])
    seen_categories = {root}
    titles: dict[str, None] = {}
    while queue:
        current, level = queue.popleft()
        for member in client.category_members(current):
            title = member["title"]
            if member.get("ns") == 14:
                if level < depth and title not in seen_categories:
                    seen_categories.add(title)
                    queue.append((title, level + 1))
            elif member.get("ns") == 0:
                titles.setdefault(title)
    if not titles:
        levels = f" or its subcategories ({depth} level{'s' * (depth != 1)})" if depth else ""
        raise KinjectError(f"no article pages in '{root}'{levels}; check the category's name")
    return list(titles)


def fetch_wikipedia(
    source: WikipediaSource,
    client: MediaWikiClient,
    skip_missing: bool = False,
    show_progress: bool = True,
) -> Fetched:
    """Every page of ``source`` as cleaned text; a missing page is an error naming it (with
    ``skip_missing``, a warning)."""
    titles = (
        list(dict.fromkeys(title.strip() for title in source.pages))
        if source.pages
        else category_page_titles(client, source.category or "", source.depth)
    )
    fetched = Fetched()
    seen: dict[int, str] = {}  # pageid -> the title first asked for
    with progress_bar("fetching Wikipedia pages", total=len(titles), enabled=show_progress) as bar:
        for title in titles:
            _add_page(fetched, client.page(title), title, seen)
            bar.advance(1, info=title)
    if fetched.missing:
        names = ", ".join(f"'{title}'" for title in fetched.missing)
        if not skip_missing:
            raise KinjectError(
                f"no Wikipedia page {names} at {client.api_url} "
                "(check the titles, or pass --skip-missing)"
            )
        plural = "s" * (len(fetched.missing) > 1)
        fetched.notes.append(f"warning: skipped missing page{plural} {names}")
    if not fetched.pages:
        raise KinjectError("no Wikipedia pages with text to build from")
    return fetched


def _add_page(fetched: Fetched, page: dict, asked: str, seen: dict[int, str]) -> None:
    if page.get("missing") or page.get("invalid"):
        reason = page.get("invalidreason")
        fetched.missing.append(f"{asked} ({' '.join(reason.split())})" if reason else asked)
        return
    title = page["title"]
    if "redirected_from" in page:
        fetched.redirects.append((asked, title))
        fetched.notes.append(f"note: redirect {asked} → {title}")
    if page["pageid"] in seen:
        first = seen[page["pageid"]]
        fetched.notes.append(f"note: '{asked}' is '{title}', already fetched as '{first}'")
        return
    seen[page["pageid"]] = asked
    if "extract" not in page:
        raise KinjectError(f"the API returned no text for '{title}' (is it an article page?)")
    text, headings = tidy_sections_and_headings(page["extract"])
    if not text.strip():
        fetched.notes.append(f"warning: page '{title}' has no text, skipped")
        return
    wiki_page = WikiPage(title, text, tuple(headings))
    fetched.pages.append(wiki_page)
    fetched.urls[wiki_page.id] = page.get("canonicalurl") or page.get("fullurl") or ""
    fetched.meta[wiki_page.id] = {"pageid": page["pageid"], "revision": page.get("lastrevid")}


# --------------------------------------------------------------------------- knowledge base


@dataclass
class WikipediaBuild:
    """What :func:`build_wikipedia_kb` did: the pages fetched and the knowledge-base change."""

    fetched: Fetched
    change: object  # kinject.kb.store.Change
    corpus: Path  # the corpus folder the knowledge base was built from


def build_wikipedia_kb(
    source: WikipediaSource,
    out: str | Path,
    config=None,
    client: MediaWikiClient | None = None,
    skip_missing: bool = False,
    show_progress: bool = True,
) -> WikipediaBuild:
    """A new knowledge base at ``out`` from Wikipedia pages.

    All pages are fetched first; if any fetch fails, nothing is created at ``out``.  The pages
    are written as corpus JSONL (``{"id", "title", "text", "source": page URL, "meta"}``)
    under the client's cache folder (``corpora/<hash of the pages>/``, where the knowledge
    base's manifest points), then built with :func:`kinject.kb.store.build_kb`.
    """
    from kinject.kb.store import SourceOptions, build_kb

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KinjectError(f"{out} already exists; choose another --out")
    client = client or MediaWikiClient()
    fetched = fetch_wikipedia(source, client, skip_missing, show_progress)
    corpus = write_corpus(fetched, client.cache_dir / "corpora")
    change = build_kb(
        [corpus], out, config, SourceOptions(strict=True, show_progress=show_progress)
    )
    return WikipediaBuild(fetched, change, corpus)


def corpus_rows(fetched: Fetched) -> list[dict]:
    rows = []
    for page in fetched.pages:
        row = {"id": page.id, "title": page.title, "text": page.text}
        if page.headings:
            row["headings"] = [list(heading) for heading in page.headings]
        rows.append(row | {"source": fetched.urls[page.id], "meta": fetched.meta[page.id]})
    return rows


def write_corpus(fetched: Fetched, parent: Path) -> Path:
    """A folder of corpus JSONL parts (each under a few MB) named by a hash of its rows;
    written in a staging folder and renamed, so it is complete or absent."""
    rows = corpus_rows(fetched)
    folder = parent / f"wikipedia-{fingerprint(rows)}"
    if folder.is_dir():
        return folder  # the same rows, written before
    staging = staging_dir(parent, ".corpus-")
    try:
        for number, part in enumerate(_parts(rows), start=1):
            write_jsonl(staging / f"part-{number:04d}.jsonl", part)
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if folder.is_dir():
            return folder  # another process wrote the same rows meanwhile
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _parts(rows: Sequence[dict]) -> Iterator[list[dict]]:
    part: list[dict] = []
    size = 0
    for row in rows:
        row_size = len(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        if part and size + row_size > _CORPUS_PART_BYTES:
            yield part
            part, size = [], 0
        part.append(row)
        size += row_size
    if part:
        yield part
