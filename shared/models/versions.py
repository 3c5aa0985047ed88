"""Versions of the libraries a pickled model depends on."""

from __future__ import annotations

import logging
import platform
from importlib import import_module

logger = logging.getLogger(__name__)

TRACKED = ("sklearn", "xgboost", "pandas", "numpy")
_NAMES = {"sklearn": "scikit-learn"}


def library_versions() -> dict[str, str | None]:
    """The Python version and the versions of scikit-learn, xgboost, pandas and numpy."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for module in TRACKED:
        try:
            versions[_NAMES.get(module, module)] = import_module(module).__version__
        except ImportError:
            versions[_NAMES.get(module, module)] = None
    return versions


def version_mismatches(recorded: dict[str, str | None]) -> list[str]:
    """Human-readable differences between recorded and installed library versions."""
    current = library_versions()
    out = []
    for lib in ("scikit-learn", "xgboost"):
        want, have = recorded.get(lib), current.get(lib)
        if want and have and want != have:
            out.append(f"{lib} {want} at training, {have} installed")
    return out
