"""The house's rules, checked on the source: each room opens with a docstring saying what it holds, and
imports run one way (entry points on top, capabilities in the middle, config and helpers at the ground)."""

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

GROUND = ("pipeline.config", "pipeline.environment", "pipeline.metadata")
# What each room may import of the project, besides itself and the ground. The DAG's own modules
# (pipeline.pipeline, pipeline.runner, ...) are the middle's top: they wire components and record runs.
ALLOWED = {
    "components": (),
    "schema": ("components",),
    "registry": ("components",),
    "serving": ("components",),
    "pipeline": ("components", "registry", "schema"),
    "kubeflow": ("components", "pipeline"),
    "cli": ("components", "pipeline", "schema", "registry", "serving", "kubeflow"),
}
ROOMS = tuple(ALLOWED)


def _modules():
    for room in ROOMS:
        for path in sorted((PROJECT_ROOT / room).rglob("*.py")):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            yield ".".join(p for p in parts if p != "__init__"), path


def _project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in ROOMS}


def _allowed(importer: str, imported: str) -> bool:
    room = importer.split(".")[0]
    if importer in GROUND:
        return imported.startswith(GROUND)
    target = imported.split(".")[0]
    return imported.startswith(GROUND) or target == room or target in ALLOWED[room]


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_run_one_way(module, path):
    wrong = sorted(i for i in _project_imports(path) if not _allowed(module, i))
    may = "nothing of the project" if module in GROUND else f"{ALLOWED[module.split('.')[0]] or ()} and the ground"
    assert not wrong, f"{module} reaches {wrong}: it may import {may}"


def test_nothing_imports_the_console_script_but_the_entry_points():
    outside = [(m, p) for m, p in _modules() if m.split(".")[0] != "cli"]
    importers = [m for m, p in outside if any(i.startswith("cli") for i in _project_imports(p))]
    assert importers == []


@pytest.mark.parametrize("room", [*ROOMS, "components.data_gate", "components.pusher"])
def test_each_room_opens_with_what_it_holds(room):
    init = PROJECT_ROOT.joinpath(*room.split(".")) / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc) > 40, f"{init} needs a docstring saying what {room}/ holds and may import"


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_modules_are_small_enough_to_read_in_one_sitting(module, path):
    assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path} opens without a docstring"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600, f"{path} is over 600 lines"
