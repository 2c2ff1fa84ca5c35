"""The package's layers, as its folders show them, hold: music <- model <- live, ports <- live,
music <- sound <- live, and nothing imports the CLI. Read from the source (every import, also those inside
functions)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "improviser"

# What each layer may import (besides itself and the standard library or third-party packages).
ALLOWED = {
    "music": {"errors"},
    "model": {"errors", "music"},
    "ports": {"errors"},
    "sound": {"errors", "music"},  # the synth: a sink of the live engine, and offline rendering
    "live": {"errors", "music", "model", "ports", "sound"},
    "errors": set(),
}


def layer_of(module: str) -> str:
    """'improviser.live.engine' -> 'live'; top-level modules are their own layer ('cli', 'plot', ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "improviser"


def imported_modules(path: Path) -> list[str]:
    """Every improviser module ``path`` imports, as absolute dotted names."""
    module = "improviser." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("improviser"):
                found += [name] if node.module else [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("improviser")]
    return found


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_layer_imports_only_the_layers_below_it():
    wrong = []
    for path in modules():
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue  # the top: cli, plot, doctor, the package's own API
        here = rel.parts[0]
        for name in imported_modules(path):
            there = layer_of(name)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_cli():
    # testing.py, the rig the tests share, runs the CLI as the tests do.
    users = [str(p.relative_to(PACKAGE)) for p in modules() if p.name not in ("cli.py", "__main__.py", "testing.py")
             and any(name.startswith("improviser.cli") for name in imported_modules(p))]
    assert not users


def test_the_layer_check_sees_relative_imports_inside_functions():
    # The checker itself: it must resolve a relative import in a function body to its module.
    names = imported_modules(PACKAGE / "live" / "engine.py")
    assert "improviser.live.clock" in names and "improviser.model.generator" in names
