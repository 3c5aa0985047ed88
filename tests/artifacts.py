"""Artifacts directories for tests: the session's demo model is trained once (conftest's
`artifacts_dir`) and never written after; a test that adds or changes models works on a copy."""

from __future__ import annotations

import shutil
from pathlib import Path

from shared.models.store import DEFAULT_FILE

DEMO = "breast-cancer"


def copy_demo(artifacts_dir: Path, root: Path) -> Path:
    """root as an artifacts directory with a copy of the session's demo model alone."""
    shutil.copytree(artifacts_dir / DEMO, root / DEMO)
    return root


def model_files(root: Path) -> list[str]:
    """Every file of every model under root, with its size and modification time (not the
    recorded default a server may write on its first request)."""
    return sorted(f"{p.relative_to(root)} ({p.stat().st_size} B, {p.stat().st_mtime_ns})"
                  for p in root.rglob("*")
                  if p.is_file() and p.name != DEFAULT_FILE and not p.name.startswith("."))
