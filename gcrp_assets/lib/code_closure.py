"""What code (and packaged data) a module runs: the transitive closure of its imports inside the package.

A cached artifact may be reused only if it was built by the same code, so a stage's code version must cover
every project module the stage can execute, not a hand-kept list. `module_closure` follows every `import`
and `from … import …` statement (module level and inside functions, since some modules import lazily) that
names a module of this package, parents' `__init__` included. Packaged data folders (`templates/`,
`formats/`) join the closure when a module in it names the folder (`gcrp_assets.templates`, `"formats"`).
The closure over-approximates (a module imported for one function brings all of its code), which can only
cause a recompute, never a stale reuse.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

from gcrp_assets.lib.hashing import sha256_json, short

PACKAGE = "gcrp_assets"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DATA_FOLDERS = ("templates", "formats")  # read by the code; dumps (the sample corpus) are inputs, hashed as such


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of a dotted module name inside the package (at `root`), or None if it is not one."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _imports(path: Path, root: Path) -> set[str]:
    """Dotted names of the package modules `path` imports (`from a import b` tries `a.b`, then `a`)."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    own = _module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = set()
    for name in found:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a module's parents' __init__ run first
            if _module_file(".".join(parts[:i]), root) is not None:
                modules.add(".".join(parts[:i]))
    return modules


def _data_files(source: str, root: Path) -> list[Path]:
    files = []
    for folder in DATA_FOLDERS:
        if f"{PACKAGE}.{folder}" in source or f'"{folder}"' in source or f"'{folder}'" in source:
            files += sorted(p for p in (root / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


@lru_cache(maxsize=None)
def module_closure(*roots: str, root: Path = PACKAGE_ROOT) -> tuple[Path, ...]:
    """Every file (modules and packaged data) that importing `roots` can run or read, sorted; `root` is the
    package folder (another copy of the package, in tests)."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            raise ValueError(f"{name!r} is not a module of {PACKAGE}")
        seen[name] = path
        todo.extend(_imports(path, root) - seen.keys())
    files = set(seen.values())
    for path in list(files):
        files.update(_data_files(path.read_text("utf-8"), root))
    return tuple(sorted(files))


def code_version(*roots: str, root: Path = PACKAGE_ROOT) -> str:
    """The code version of a stage that runs `roots`: a hash of every file in their closure (names and bytes)."""
    files = module_closure(*roots, root=root)
    return short(sha256_json({f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                              for f in files}), 12)
