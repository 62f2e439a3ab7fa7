"""The package's import graph: no circle, and no import up the layers.

Every import of an ``sktransfer`` module counts, at module level or inside a
function. The layers are the map in CONTRIBUTING.md; a new module must be
placed in one (``test_every_module_has_a_layer``). Run alone with
``python -m pytest tests/test_imports.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sktransfer

ROOT = Path(sktransfer.__file__).parent

#: Lowest first: a module imports only from its own layer or those below.
#: A name stands for the module and, if it is a package, everything in it
#: (its modules may be placed apart: the longest name that fits counts).
LAYERS = [
    # leaves: no sktransfer imports but these
    ["sktransfer.exceptions", "sktransfer._version", "sktransfer._common",
     "sktransfer._memo", "sktransfer._preprocess", "sktransfer._families"],
    # the machine: devices, identities, decoding, running a network
    ["sktransfer._device", "sktransfer._identity", "sktransfer._images.decode",
     "sktransfer._engine", "sktransfer._runtime.fusion", "sktransfer._dask",
     "sktransfer._training"],
    # where inputs and models come from, and the embedding cache
    ["sktransfer._images", "sktransfer._text", "sktransfer._cache",
     "sktransfer._sources"],
    # networks cut at layers, int8, shared networks, pickling
    ["sktransfer._runtime", "sktransfer._network", "sktransfer._persist"],
    ["sktransfer._base"],
    ["sktransfer._extractor", "sktransfer._finetune", "sktransfer._word_vectors",
     "sktransfer._text_extractor", "sktransfer._text_finetune"],
    # workflows over the estimators
    ["sktransfer._embed", "sktransfer._probe", "sktransfer._share",
     "sktransfer._text_probe"],
    # the front: the package's namespace and the command line
    ["sktransfer", "sktransfer.cli", "sktransfer._cli"],
]  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The sktransfer modules ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # ``from package import module`` imports that module
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("sktransfer") and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int | None:
    best, level = "", None
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if (name == entry or name.startswith(entry + ".")) and len(entry) > len(
                best
            ):
                best, level = entry, index
    return level


def test_every_module_has_a_layer():
    """A new module is placed in the map (here and in CONTRIBUTING.md)."""
    assert [name for name in MODULES if _layer(name) is None] == []


def test_no_import_runs_up_the_layers():
    """No module imports one of a higher layer (the package's namespace
    included: a module needing an estimator imports the estimator's module)."""
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if _layer(target) is not None
        and _layer(name) is not None
        and _layer(target) > _layer(name)
    ]
    assert upward == []


def _cycle() -> list[str] | None:
    """A circle of imports, if there is one (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name):
        state[name] = "open"
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(GRAPH):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_no_import_circle():
    """No circle of imports, module-level or inside functions."""
    assert _cycle() is None


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            "from sktransfer._sources import checkpoints",
            {"sktransfer._sources.checkpoints"},
        ),
        ("from sktransfer._sources import load_backbone", {"sktransfer._sources"}),
        ("from . import base", {"sktransfer._sources.base"}),
        ("def f():\n    import sktransfer\n", {"sktransfer"}),
    ],
)  # fmt: skip
def test_the_walk_sees_every_kind_of_import(tmp_path, source, expected):
    """The checks above can fail: each kind of import is an edge."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports("sktransfer._sources.probe", path) == expected
