"""Limits on a JSON body: nesting depth and the length of a number.

Depth is checked on the parsed body, level by level (a C-level type scan per container, so a
body of flat rows costs little). Number length matters only to the lenient parser that reads
what orjson refuses (NaN literals, integers past 64 bits): it turns digits into an int at a
cost that grows with their count, so such a body is checked on its bytes first.
"""

from __future__ import annotations

import re
from typing import Any

from shared.errors import InvalidJSONError

_CONTAINERS = frozenset({dict, list})


def check_json_depth(body: Any, max_depth: int) -> None:
    """400 for JSON that nests arrays and objects deeper than max_depth levels."""
    level, depth = [body], 0
    while level:
        level = [node for node in level if type(node) in _CONTAINERS]
        if not level:
            return
        depth += 1
        if depth > max_depth:
            raise InvalidJSONError(
                "request body nests arrays and objects too deeply: more than "
                f"{max_depth} levels (TABSERVE_MAX_JSON_DEPTH)")
        below: list[Any] = []
        for node in level:
            values = node.values() if type(node) is dict else node
            if not _CONTAINERS.isdisjoint(map(type, values)):
                below.extend(values)
        level = below


def check_number_length(raw: bytes, max_chars: int) -> None:
    """400 for a number (outside strings) longer than max_chars characters."""
    number = re.compile(rb"[-+0-9.eE]{%d,}" % (max_chars + 1))
    if number.search(raw) and number.search(_outside_strings(raw)):
        raise InvalidJSONError(
            f"request body has a number longer than {max_chars} characters "
            "(TABSERVE_MAX_JSON_NUMBER_CHARS)")


def _outside_strings(raw: bytes) -> bytes:
    """The text between string literals: escapes dropped, then every other piece between
    quotes."""
    return b"".join(raw.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
