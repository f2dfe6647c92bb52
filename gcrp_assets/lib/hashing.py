"""Content hashes used as Dagster data versions and artifact folder names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(value: Any) -> str:
    return sha256_text(canonical_json(value))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path, patterns: Iterable[str] = ("**/*",), inside: Path | None = None) -> str:
    """Hash of every file under `root` (relative names and contents), in sorted order.

    Linked folders are not descended into (`Path.glob`); linked files are hashed by their content. With
    `inside` (a folder), a file that resolves outside it through a link raises `ValueError` naming it
    instead of being read: a dump in the inbox must not fingerprint (or read) files elsewhere on the
    machine. Without it links are followed wherever they go (a Hugging Face snapshot links into its
    blob store).
    """
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    boundary = Path(os.path.realpath(inside)) if inside is not None else None
    for path in files:
        name = path.relative_to(root).as_posix()
        if boundary is not None:
            real = Path(os.path.realpath(path))
            if real != boundary and not real.is_relative_to(boundary):
                raise ValueError(f"{root.name}/{name}: a symbolic link to a place outside "
                                 f"{boundary.name!r}; refused")
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def short(digest: str, n: int = 16) -> str:
    return digest[:n]
