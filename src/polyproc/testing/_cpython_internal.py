"""CPython test-suite tests that assert CPython's private internals.

Each entry: (suite, fnmatch pattern on ``Class.test_method``, why). Built by reading the
failing tests' source: an entry names the private attribute/module the test needs. Such a
test, when it fails, is reported as "internal" and not counted as a failure; when it passes it
counts as passed (then the entry may go).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

INTERNAL: list[tuple[str, str, str]] = [
]


def internal_reason(suite: str, short_id: str) -> str | None:
    for s, pattern, why in INTERNAL:
        if s == suite and fnmatchcase(short_id, pattern):
            return why
    return None
