"""The value types every payload and parameter is built from, each with its bounds.

No text that reaches postbell may carry NUL (Postgres text cannot hold it) or,
where it is one line, any control character: a line break in a name or a title
could otherwise become a second email header, and CR/LF never belong in ids, URLs
or addresses. Every number has a range that fits its column; every id fits a
bigint. The API answers a value outside these types with 400/422 naming its field.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.params import Parameter

from postbell.app.core.validation import MAX_ID

#: one line: no control characters at all (CR, LF, TAB, NUL, DEL ...)
LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
#: free text: line breaks and tabs allowed, no NUL or other control characters
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"

MAX_RECIPIENTS = 10_000
MAX_BODY_CHARS = 20_000
MAX_TITLE_CHARS = 300

ExternalId = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=LINE_PATTERN)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=KEY_PATTERN)]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_CHARS, pattern=TEXT_PATTERN)]
Title = Annotated[str, msgspec.Meta(max_length=MAX_TITLE_CHARS, pattern=LINE_PATTERN)]
Url = Annotated[str, msgspec.Meta(max_length=2048, pattern=LINE_PATTERN)]
#: a name, an address, a secret: one line of at most 255 characters
Short = Annotated[str, msgspec.Meta(max_length=255, pattern=LINE_PATTERN)]
Description = Annotated[str, msgspec.Meta(max_length=2000, pattern=TEXT_PATTERN)]
DbId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]

# Path and query parameters (Litestar validates them and answers 400 naming them).
RecipientParam = Annotated[
    str, Parameter(min_length=1, max_length=255, pattern=LINE_PATTERN, description="external id")
]
KeyParam = Annotated[str, Parameter(min_length=1, max_length=100, pattern=KEY_PATTERN)]
TokenParam = Annotated[str, Parameter(min_length=1, max_length=4096, pattern=LINE_PATTERN)]
IdParam = Annotated[int, Parameter(ge=1, le=MAX_ID)]
CursorParam = Annotated[str | None, Parameter(max_length=200, pattern=LINE_PATTERN)]
FilterParam = Annotated[str | None, Parameter(max_length=100, pattern=LINE_PATTERN)]
