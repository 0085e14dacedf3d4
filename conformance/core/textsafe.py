"""Text that came from outside (adapter exceptions, framework messages, file contents, registry entries) made
safe to store, print and link:

- `cap`: bounded length. A 20 MB exception message must not make a 461 MB records file; the head and the tail
  are kept (a traceback's last lines say what raised) with the number of characters left out between them.
- `terminal`: no escape sequences. ANSI CSI/OSC sequences (colours, cursor moves, window titles, OSC 8 links) and
  other control characters from an adapter's message must not reach the user's terminal; newlines and tabs stay.
- `markup`: `terminal` plus rich's markup escaped, for text printed through rich (a '[/]' in a message would
  otherwise be parsed as a closing tag and crash the printer).
- `web_link`: only http(s) URLs become hrefs in the HTML pages (a `javascript:` link is shown as text).
"""
from __future__ import annotations

import re

MESSAGE_LIMIT = 16_000  # characters of a stored message (tracebacks included)
REASON_LIMIT = 2_000  # characters of a one-line reason

_ESCAPES = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL / ST (titles, hyperlinks)
    r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS, PM, APC, SOS strings
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor)
    r"|\x1b[@-Z\\-_]"  # other two-character escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # remaining C0/C1 controls (not \t \n)
)


def cap(text: str, limit: int = MESSAGE_LIMIT) -> str:
    if not isinstance(text, str):
        text = str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 80, 2)
    head, tail = text[:keep * 3 // 4], text[len(text) - keep // 4:]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters left out ...]\n{tail}"


def terminal(text: str) -> str:
    return _ESCAPES.sub("", str(text))


def markup(text: str) -> str:
    from rich.markup import escape

    return escape(terminal(text))


def web_link(url) -> str | None:
    """`url` when it is an http(s) URL (shown as a link), else None (shown as text)."""
    if isinstance(url, str) and re.match(r"https?://[^\s\"'<>]+$", url.strip(), re.IGNORECASE):
        return url.strip()
    return None


def capped_record(rec: dict) -> dict:
    """A record whose free-text fields are bounded (reason, message, repro, diagnosis text)."""
    out = dict(rec)
    for key, limit in (("reason", REASON_LIMIT), ("message", MESSAGE_LIMIT), ("repro", MESSAGE_LIMIT),
                       ("version", 200), ("device", 200)):
        if isinstance(out.get(key), str) and len(out[key]) > limit:
            out[key] = cap(out[key], limit)
    return out
