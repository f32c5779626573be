"""Passwords out of every message: URL redaction that never depends on the URL parsing.

A Redis URL typed by hand can hold a password with unescaped `#`, `/`, `?` or `@`, a scheme typo or a
non-numeric port; `urllib` then finds no password, or raises. So nothing here parses the URL: the
credentials are everything between the scheme separator and the last `@`, and any `password=`-like
query value. What stands there is replaced, and messages are scrubbed of it and of its pieces.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

MASK = "***"
# Query arguments that redis-py (and people) use for credentials. The value runs to the end of the
# text: an unescaped & or # inside a password would otherwise leave its rest in view.
_SECRET_QUERY = re.compile(r"(?i)\b(password|passwd|pass|pwd|auth|token)=(.*)$", re.S)
# Characters that split mistyped credentials into the pieces a parser may echo.
_DELIMITERS = re.compile(r"[#/?@:;&=\s]+")
_MIN_PIECE = 2


def _userinfo_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the credentials in a URL-like text (everything before its last @), or None."""
    at = text.rfind("@")
    if at < 0:
        return None
    scheme_end = text.find("://", 0, at)
    if scheme_end >= 0:
        return scheme_end + 3, at
    # A scheme typo such as redis:/ or redis: still ends the scheme at its first colon.
    colon = text.find(":", 0, at)
    scheme = text[:colon] if colon > 0 else ""
    start = colon + 1 if scheme and all(c.isalnum() or c in "+-." for c in scheme) else 0
    return start, at


def redact_url(url: object) -> str:
    """The text with its credentials (user and password) replaced by '***' (a user name before a colon kept), whatever the text is."""
    # The query first: an @ inside a query password must not pass for the end of a user name.
    text = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}={MASK}", str(url))
    span = _userinfo_span(text)
    if span is not None:
        user, colon, _ = text[span[0]:span[1]].partition(":")
        # Without a colon the whole userinfo may be a password typed where the user name goes.
        text = text[:span[0]] + (f"{user}:{MASK}" if colon else MASK) + text[span[1]:]
    return text


def url_secrets(url: object) -> list[str]:
    """Every string a message about this URL must not show: the password, its encodings and its pieces."""
    found = [m.group(2) for m in _SECRET_QUERY.finditer(str(url))]
    text = _SECRET_QUERY.sub("", str(url))
    span = _userinfo_span(text)
    if span is not None:
        user, colon, password = text[span[0]:span[1]].partition(":")
        found.append(password if colon else user)
    secrets: set[str] = set()
    for secret in filter(None, found):
        secrets.update({secret, unquote(secret), quote(secret, safe="")})
        secrets.update(p for p in _DELIMITERS.split(secret) if len(p) >= _MIN_PIECE)
    # Longest first, so a piece never leaves part of a longer secret behind.
    return sorted(secrets, key=len, reverse=True)


def scrub(message: object, url: object) -> str:
    """The message with the URL shown redacted and every trace of its password masked."""
    text = str(message).replace(str(url), redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text
