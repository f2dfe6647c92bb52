"""The package's shape: no import cycles anywhere (imports inside functions included), and nothing under the
plain packages (`gcrp_assets/lib`, the trainer) imports Dagster: only `gcrp_assets/defs` and the code
location wire them up."""

import ast
from graphlib import CycleError, TopologicalSorter

import pytest

from gcrp_assets.lib.code_closure import PACKAGE_ROOT, _imports, _module_name

def _modules(root):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


MODULES = _modules(PACKAGE_ROOT)


def import_order(root=PACKAGE_ROOT) -> list[str]:
    """The package's modules in an order where each comes after what it imports; CycleError if none exists."""
    graph = {}
    for path in _modules(root):
        name = _module_name(path, root)
        # A module's own package `__init__` runs before it: not a dependency that can form a cycle with it.
        graph[name] = {m for m in _imports(path, root) if m != name and not name.startswith(m + ".")}
    return list(TopologicalSorter(graph).static_order())


def test_the_package_has_no_import_cycle():
    try:
        order = import_order()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert order.index("gcrp_assets.lib.ingest.contract") < order.index("gcrp_assets.lib.ingest.sillytavern")


def test_plain_packages_never_import_dagster():
    plain = [p for p in MODULES if p.relative_to(PACKAGE_ROOT).parts[0] in ("lib", "trainer")]
    assert len(plain) > 40
    for path in plain:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] != "dagster", f"{path.relative_to(PACKAGE_ROOT)} imports {name}"


def test_a_lazy_import_cycle_is_found(tmp_path):
    """The check itself, on a package where one module imports the other inside a function (as `dumps` and
    the importers did before)."""
    root = tmp_path / "gcrp_assets"
    (root / "lib").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "lib" / "__init__.py").write_text("")
    (root / "lib" / "dumps.py").write_text("def read():\n    from gcrp_assets.lib import importer\n")
    (root / "lib" / "importer.py").write_text("from gcrp_assets.lib.dumps import read\n")
    with pytest.raises(CycleError):
        import_order(root)
