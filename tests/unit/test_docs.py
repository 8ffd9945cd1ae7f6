"""The documentation holds together: README.md is a short quick start that links every
page of docs/, every relative link (and its #anchor) leads somewhere, and no example
carries a fixed date that will be refused once it is too far ahead (send_at)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INDEX = DOCS / "README.md"

MAX_README_LINES = 250
#: A fixed date further ahead than this in an example rots: the API refuses a send_at
#: more than POSTBELL_SEND_AT_HORIZON_DAYS (365) ahead.
MAX_DAYS_AHEAD = 300

_FENCE_RE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN_RE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING_RE = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
_INLINE_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_DATE_RE = re.compile(r"\b(20\d\d)-(\d\d)-(\d\d)[T ]\d\d:\d\d")


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _documents() -> list[Path]:
    return [README, *_pages()]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans: links and headings there
    are examples, not links and headings."""
    return _CODE_SPAN_RE.sub("", _FENCE_RE.sub("", text))


def _links(path: Path) -> list[str]:
    return _LINK_RE.findall(_prose(path.read_text()))


def _is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("//")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: the text of links, lower case, punctuation dropped
    except '-' and '_', spaces as '-'."""
    text = _INLINE_LINK_RE.sub(r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of ``path``'s headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in _HEADING_RE.findall(_FENCE_RE.sub("", path.read_text())):
        base = anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _resolve(source: Path, target: str) -> tuple[Path, str | None]:
    file_part, _, fragment = target.partition("#")
    path = (source.parent / file_part).resolve() if file_part else source
    return path, fragment or None


def _linked_pages(source: Path) -> set[Path]:
    return {
        _resolve(source, target)[0]
        for target in _links(source)
        if _is_relative(target) and target.split("#")[0]
    }


def test_anchor_follows_githubs_rules() -> None:
    """Sanity for the helper: what GitHub makes of headings used in these pages."""
    assert anchor("Adding a channel") == "adding-a-channel"
    assert anchor("Host-app integration: notify in your own transaction") == (
        "host-app-integration-notify-in-your-own-transaction"
    )
    assert anchor("`postbell queues`") == "postbell-queues"
    assert anchor("PUSH (Firebase Cloud Messaging)") == "push-firebase-cloud-messaging"
    assert anchor("At least once, with stable ids") == "at-least-once-with-stable-ids"


def test_there_are_pages_and_an_index() -> None:
    assert INDEX in _pages()
    assert len(_pages()) > 1


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    """A relative link names an existing file or folder; a #anchor names a heading of
    the Markdown file it points to."""
    broken = []
    for target in _links(path):
        if not _is_relative(target):
            continue
        resolved, fragment = _resolve(path, target)
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment is not None:
            if resolved.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not Markdown")
            elif fragment not in anchors(resolved):
                broken.append(f"{target}: no heading with anchor #{fragment}")
    assert broken == []


def test_readme_is_a_short_quick_start() -> None:
    """At most 250 lines, with the two set-up commands near the top."""
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, "README.md is for the quick start: move text to docs/"
    top = "\n".join(lines[:30])
    assert "make dev" in top
    assert "make test" in top


def test_every_page_is_linked_from_the_readme_and_the_index() -> None:
    from_readme = _linked_pages(README)
    from_index = _linked_pages(INDEX)
    assert [p.name for p in _pages() if p not in from_readme] == []
    assert [p.name for p in _pages() if p != INDEX and p not in from_index] == []


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_example_carries_a_fixed_date_far_ahead(path: Path) -> None:
    """A fixed future time in an example (a send_at) becomes a 422 once it is more than
    the horizon ahead, and a wrong example long before: compute it in the shell
    instead, e.g. $(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)."""
    limit = dt.date.today() + dt.timedelta(days=MAX_DAYS_AHEAD)
    far = []
    for match in _DATE_RE.finditer(path.read_text()):
        try:
            day = dt.date(*(int(part) for part in match.groups()))
        except ValueError:
            continue
        if day > limit:
            far.append(match.group(0))
    assert far == []


def test_the_error_table_is_the_vocabulary_in_code() -> None:
    """docs/http-api.md lists exactly core.errors.CODES, and every code the code
    answers with is one of them."""
    import re

    from postbell.app.core.errors import CODES

    text = (ROOT / "docs" / "http-api.md").read_text()
    table = text.split("<!-- codes:start -->")[1].split("<!-- codes:end -->")[0]
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \| (.+) \|$", table, re.M)
    assert [(code, (int(status), meaning)) for status, code, meaning in rows] == list(CODES.items())
    used: set[str] = set()
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "postbell").rglob("*.py")]:
        source = path.read_text()
        used |= set(re.findall(r'\bcode = "([a-z_]+)"', source))
        used |= set(re.findall(r'error_response\(\s*\d{3},\s*"([a-z_]+)"', source))
        used |= set(re.findall(r'^    \d{3}: "([a-z_]+)",$', source, re.M))
    assert sorted(used - set(CODES)) == []


_TEST_REF_RE = re.compile(r"`((?:unit|integration|e2e|contract)/test_\w+\.py)(?:::(\w+))?`")
_TEST_NAME_RE = re.compile(r"`(test_\w+)`")


def test_the_claims_table_names_tests_that_exist() -> None:
    """docs/testing.md's claim → test table: every file and test it names is real (a
    renamed test must take its row with it)."""
    text = (DOCS / "testing.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "test_" in line]
    assert len(rows) >= 20
    for row in rows:
        current: Path | None = None
        for match in re.finditer(f"{_TEST_REF_RE.pattern}|{_TEST_NAME_RE.pattern}", row):
            path, name, bare = match.group(1), match.group(2), match.group(3)
            if path:
                current = ROOT / "tests" / path
                assert current.is_file(), f"{path} named in docs/testing.md does not exist"
            name = name or bare
            if name:
                assert current is not None, f"{name} has no file before it: {row}"
                assert re.search(rf"^(async )?def {name}\(", current.read_text(), re.M), (
                    f"{current.name}::{name} named in docs/testing.md does not exist"
                )
