"""The import rule of ARCHITECTURE.md, read from the code: a module imports only from its own
package or from packages of a lower layer. A new back-edge fails here; the known ones are
listed and must shrink, not grow."""

from __future__ import annotations

import ast
from pathlib import Path

import mrcnn_batch

ROOT = Path(mrcnn_batch.__file__).parent

LAYERS = [
    {"lazy"},  # a module imported at first use (arrays names pyarrow through it)
    {"config", "errors", "schemas", "datasets", "webpage", "arrays", "memory"},  # leaves
    {"read", "write", "ray_session"},
    {"plan", "models"},
    {"predict"},
    {"encode"},
    {"run"},
    {"evaluate", "export", "render", "inspect"},
    {"report"},
    {"api"},
    {"demo"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# (module, imported package): back-edges known today, to be removed (see ARCHITECTURE.md)
KNOWN = {
    ("__init__.py", "run"),  # the lazy top-level API (open_run), imported only when asked for
}


def _package(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def imports() -> list[tuple[str, str, str]]:
    """(module path, its package, the mrcnn_batch package it imports) for every import."""
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT)
        pkg = _package(rel)
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "mrcnn_batch" and len(parts) > 1 and parts[1] != pkg:
                    out.append((rel.as_posix(), pkg, parts[1]))
    return out


def test_every_package_has_a_layer():
    packages = {_package(f.relative_to(ROOT)) for f in ROOT.rglob("*.py")} - {"__init__"}
    assert packages <= set(RANK), f"give these a layer in tests/test_layers.py and ARCHITECTURE.md: {packages - set(RANK)}"


def test_imports_only_run_down():
    back = sorted({(mod, target) for mod, pkg, target in imports()
                   if (mod, target) not in KNOWN and RANK.get(target, -1) >= RANK.get(pkg, len(LAYERS))})
    assert not back, f"imports that run up or sideways (module, package imported): {back}"


def test_the_known_exceptions_still_exist():
    """When one is removed, remove it from KNOWN too, so it cannot come back unnoticed."""
    found = {(mod, target) for mod, _, target in imports()}
    assert KNOWN <= found, f"no longer imported, drop from KNOWN: {KNOWN - found}"


def test_every_package_is_installed():
    """Each package of the source tree is listed in pyproject.toml's packages (a wheel or a
    non-editable install would leave out one that is not)."""
    import tomllib

    pyproject = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {".".join(("mrcnn_batch", *f.parent.relative_to(ROOT).parts)) for f in ROOT.rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
