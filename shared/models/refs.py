"""Model references: NAME (the live version), NAME:VERSION (pinned), NAME@ALIAS."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from shared.errors import ValidationError
from shared.models.aliases import check_alias

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
VERSION_RE = re.compile(r"[0-9]{1,9}")


class ModelRef(NamedTuple):
    """A parsed model reference: a name with a version, an alias, or neither."""

    name: str
    version: int | None = None
    alias: str | None = None


class Target(NamedTuple):
    """What a reference resolved to: a version, and the alias it was reached through (`live`
    for a bare NAME; None when the version was pinned)."""

    name: str
    version: int
    alias: str | None


@lru_cache(maxsize=1024)  # every request parses its reference; most name the same few
def parse_ref(ref: str) -> ModelRef:
    """Split 'NAME', 'NAME:VERSION' or 'NAME@ALIAS'; a 422 naming what is wrong."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        check_name(name)
        return ModelRef(name, None, check_alias(alias))
    name, _, version = ref.partition(":")
    check_name(name)
    if not version:
        return ModelRef(name)
    if not VERSION_RE.fullmatch(version):
        raise ValidationError(f"invalid model version {version!r}: must be a positive integer")
    return ModelRef(name, int(version))


def check_name(name: str) -> None:
    """A 422 unless `name` is a model name."""
    if not NAME_RE.fullmatch(name):
        raise ValidationError(f"invalid model name {name!r}")
