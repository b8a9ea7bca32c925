"""Seccomp policies: Kafel files in `policies/`, chosen by name, or a user's own file by path."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ValidationError

SEARCH_PATH = (
    Path(__file__).resolve().parent.parent / "policies",  # a source checkout or editable install
    Path(sys.prefix) / "share" / "isolate" / "policies",  # a regular install (pyproject data-files)
)


def available() -> list[str]:
    return sorted({p.stem for folder in SEARCH_PATH if folder.is_dir() for p in folder.glob("*.kafel")})


def load(name_or_path: str) -> str:
    """The Kafel text of a policy: a bare name looks in `policies/`, anything with a '/' is a file."""
    if "/" in name_or_path:
        path = Path(name_or_path)
    else:
        path = next((folder / f"{name_or_path}.kafel" for folder in SEARCH_PATH if (folder / f"{name_or_path}.kafel").is_file()), Path())
    if not path.is_file():
        raise ValidationError(f"unknown seccomp policy {name_or_path!r} (available: {', '.join(available())})")
    return path.read_text()
