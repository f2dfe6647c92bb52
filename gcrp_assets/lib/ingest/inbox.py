"""The inbox is a boundary: a partition key is the name of one dump in it, and nothing else.

Partition keys can come from outside the pipeline (anyone with the Dagster UI can add one), so a key is
validated before it is used as a path (`validate_dump_name`), and a dump is reached only through
`resolve_dump`, which refuses anything that would read outside the inbox: a name with a path in it, and
a symbolic link (the dump itself, or any file or folder inside a dump folder) that resolves outside the
inbox. A link that stays inside the inbox (`latest.jsonl -> 2024-05.jsonl`) is fine.

Hard links cannot be told from ordinary files and are not checked; whoever can write into the inbox can
hand the pipeline any content anyway. What this guards against is a *name* reaching a file the inbox's
writers did not put there. Plain module: no Dagster import.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

MAX_NAME_BYTES = 255  # a file name on every common file system


class InboxError(ValueError):
    """A partition key that is not a safe dump name, or a dump that reaches outside the inbox."""


class DumpNotInInbox(InboxError, FileNotFoundError):
    """A valid name that names nothing in the inbox (a dump that left it)."""


def validate_dump_name(name: object) -> str:
    """`name` itself when it is a plain entry name of the inbox, else `InboxError` saying why.

    Refused: not a string, empty, longer than 255 bytes, a path separator (`/`, `\\`), a NUL or other
    control character (a newline would forge log lines), `.`/`..`, and hidden names (a leading `.`, which
    `find_dumps` never lists either). The message shows the name with `repr`, so it cannot inject anything.
    """
    if not isinstance(name, str):
        raise InboxError(f"a dump name must be a string, got {type(name).__name__}")
    shown = repr(name[:80]) + ("..." if len(name) > 80 else "")
    if not name:
        raise InboxError("a dump name must not be empty")
    if "\0" in name:
        raise InboxError(f"dump name {shown} contains a NUL character")
    if "/" in name or "\\" in name or (os.sep in name) or (os.altsep and os.altsep in name):
        raise InboxError(f"dump name {shown} contains a path separator: a dump is a name in the inbox, not a path")
    if name in (".", ".."):
        raise InboxError(f"dump name {shown} is not a name in the inbox ('..' leaves it)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InboxError(f"dump name {shown} contains a control character")
    if name.startswith("."):
        raise InboxError(f"dump name {shown} is hidden (starts with '.'); hidden entries are not dumps")
    if name == "__pycache__":
        raise InboxError(f"dump name {shown} is not a dump")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InboxError(f"dump name {shown} is longer than {MAX_NAME_BYTES} bytes")
    if os.path.isabs(name) or Path(name).name != name:
        raise InboxError(f"dump name {shown} is not a plain name")
    return name


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def inbox_root(inbox: Path) -> Path:
    """The inbox folder, links resolved (the boundary everything is checked against)."""
    root = _real(Path(inbox).expanduser())
    if not root.is_dir():
        raise InboxError(f"inbox folder {Path(inbox).name!r} does not exist or is not a folder")
    return root


def outside_link(path: Path, root: Path) -> bool:
    """Whether `path` (a link, or anything under a link) resolves outside `root` (already resolved)."""
    return not _inside(_real(path), root)


def dump_files(folder: Path, inbox: Path | None = None) -> Iterator[Path]:
    """Every regular file under a dump folder, as paths under `folder` (sorted by relative path), never
    through a link that leaves `inbox` (default: the folder's parent, i.e. the inbox the dump sits in).

    Linked folders inside the inbox are not descended into (as `Path.rglob`), so nothing is listed twice
    and no link cycle is followed. Raises `InboxError` naming the first entry that resolves outside the
    inbox: reading a dump must not silently drop part of it either. Hidden entries are listed too; the
    caller decides what to skip.
    """
    folder = Path(folder)
    root = inbox_root(inbox if inbox is not None else folder.absolute().parent)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            entry = base / name
            if entry.is_symlink() and outside_link(entry, root):
                raise InboxError(f"{entry.relative_to(folder.parent).as_posix()}: a symbolic link to a place "
                                 "outside the inbox; refused (dumps are read from the inbox only)")
        for name in filenames:
            entry = base / name
            try:
                mode = entry.stat().st_mode  # follows a link (checked above to stay inside)
            except OSError:
                continue  # a dangling link: nothing to read
            if stat.S_ISREG(mode):
                found.append((entry.relative_to(folder).as_posix(), entry))
    return iter([path for _, path in sorted(found)])


def check_inside(path: Path, inbox: Path) -> Path:
    """`path` (an entry of the inbox) when neither it nor, for a folder, anything inside it leads out of the
    inbox through a link; `InboxError` otherwise. Returns the path as given (not resolved), so a dump is
    still named by its own name."""
    root = inbox_root(inbox)
    if outside_link(path, root):
        raise InboxError(f"dump {path.name!r} is a symbolic link to a place outside the inbox; refused "
                         "(dumps are read from the inbox only)")
    if path.is_dir():
        for _ in dump_files(path, root):
            pass
    return path


def resolve_dump(inbox: Path, name: str, allow_outside_links: bool = False) -> Path:
    """The path of dump `name` in `inbox`, checked: `name` is a plain dump name (`validate_dump_name`), the
    entry exists, is a regular file or a folder (not a FIFO or a device, which would hang or never end),
    and neither it nor any file inside it is a link resolving outside the inbox (unless
    `allow_outside_links`, for an operator who links big dumps in from another disk on purpose).

    Raises `DumpNotInInbox` when there is no such dump, `InboxError` for everything else.
    """
    validate_dump_name(name)
    root = inbox_root(inbox)
    path = Path(inbox).expanduser() / name
    if not os.path.lexists(path):
        raise DumpNotInInbox(f"dump {name!r} is not in the inbox")
    if not allow_outside_links:
        check_inside(path, root)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DumpNotInInbox(f"dump {name!r} cannot be reached: {exc.strerror or type(exc).__name__}") from exc
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InboxError(f"dump {name!r} is neither a file nor a folder")
    return path
