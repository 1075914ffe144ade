"""Text from a run, made safe for where it is shown: a terminal line or a Markdown file.

Labels, run ids, task names and errors come from someone else's run directory: printed raw,
a terminal escape retitles or clears the terminal; written raw into Markdown, a ``<img
onerror>`` is HTML on any site that renders it and a ``|`` opens a table cell. Every command
that prints or writes such text passes it through here (the HTML report escapes with
``html.escape`` in ``report/html.py``).
"""

from __future__ import annotations

from typing import Any

# Escaped in Markdown: the backslash first (so an escape cannot be undone), the cell
# separator, what would make raw HTML, and the characters that open code spans, emphasis,
# links and images.
_MARKDOWN_ESCAPES = {"\\": "\\\\", "|": "\\|", "&": "&amp;", "<": "&lt;", ">": "&gt;",
                     "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "!": "\\!"}


def plain_text(value: Any) -> str:
    """One line: control characters (line breaks, terminal escapes) become spaces."""
    return "".join(" " if ord(ch) < 32 or 127 <= ord(ch) < 160 or ch in "\u2028\u2029"
                   else ch for ch in str(value))


def markdown_text(value: Any) -> str:
    """Text for a Markdown line or table cell: shown as written, never HTML or a new cell."""
    return "".join(_MARKDOWN_ESCAPES.get(ch, ch) for ch in plain_text(value))


def longest_backticks(text: str) -> int:
    """The longest run of backticks in ``text`` (a fence must be longer to hold it)."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


def markdown_code(value: Any) -> str:
    """Text in a Markdown code span that it cannot close: fenced by more backticks than it
    holds in a row, on one line."""
    text = plain_text(value)
    fence = "`" * (longest_backticks(text) + 1)
    return f"{fence} {text} {fence}"
