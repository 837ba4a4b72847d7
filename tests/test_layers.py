"""The import layers of docs/architecture.md, checked: a module imports only its own layer and
those below it. Function-level (lazy) imports obey the same rule, except the few listed in
``UPWARD`` with the reason each is needed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SRC = Path(__file__).resolve().parent.parent / "src" / "polyproc"

#: Layer of each top-level module or package of polyproc (higher imports lower).
LAYERS: dict[str, int] = {
    # public faces (and the tools built on them)
    "__init__": 6, "__main__": 6, "context": 6, "pool": 6, "futures": 6, "managers": 6,
    "queues": 6, "synchronize": 6, "sharedctypes": 6, "shared_memory": 6, "heap": 6,
    "dummy": 6, "joblib": 6, "_install": 6, "_cli": 6, "testing": 6,
    "_backends": 5,
    "_engine": 4, "_managers": 4,
    "_spawn": 3, "_resources": 3, "_wire": 3, "connection": 3,
    "process": 2, "reduction": 2, "util": 2, "_stdlib_compat": 2, "_spawning": 2,
    "_exceptions": 1,
    # A package whose __init__ is a face of its own: the dask context.
    "_backends.dask": 6,
}

#: Lazy imports that go up a layer on purpose: (importing module, imported module): why.
UPWARD: dict[tuple[str, str], str] = {
    ("polyproc._spawn.bootstrap", "polyproc.context"):
        "a spawned child makes its default context the start method that started it",
    ("polyproc.process", "polyproc.context"):
        "a started child makes its default context the start method that started it",
    ("polyproc.process", "polyproc._spawn"):
        "a child that fails notes its error for its parent with the start method's reporter",
    ("polyproc.process", "polyproc.connection"):
        "waiting for a process (is_alive, join) waits on its sentinel with connection.wait",
    ("polyproc.reduction", "polyproc._resources"):
        "an fd pickled outside a process start is handed over by the fd sharer",
    ("polyproc.util", "polyproc._spawn"):
        "util._cleanup_tests (the stdlib's test hook) stops the fork server",
}


def _layer(module: str) -> int:
    if module.count(".") >= 1 and module == "polyproc." + ".".join(module.split(".")[1:3]) \
            and ".".join(module.split(".")[1:3]) in LAYERS:
        return LAYERS[".".join(module.split(".")[1:3])]  # e.g. the _backends.dask face
    top = module.split(".")[1] if "." in module else "__init__"
    try:
        return LAYERS[top]
    except KeyError:
        pytest.fail(f"{module}: its top-level name {top!r} has no layer in LAYERS "
                    "(add it here and to docs/architecture.md)")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported polyproc module, at module level?, line) for each import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if node.module:
                targets = [".".join([*base, node.module])]
            else:
                targets = [".".join([*base, a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polyproc"):
            targets = [node.module]  # type: ignore[list-item]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("polyproc")]
        for target in targets:
            found.append((target, id(node) in top_level, node.lineno))
    return found


def test_every_module_has_a_layer() -> None:
    for name, _ in _modules():
        _layer(name)


def test_imports_go_down_the_layers() -> None:
    wrong, used = [], set()
    for name, path in _modules():
        mine = _layer(name)
        for target, top, line in _imports(name, path):
            if target == "polyproc" or _layer(target) <= mine:
                continue
            owner = ".".join(target.split(".")[:2])
            if not top and (name, owner) in UPWARD:
                used.add((name, owner))
                continue
            wrong.append(f"{path.relative_to(SRC.parent)}:{line} imports {target} "
                         f"(layer {_layer(target)} above {mine}{'' if top else ', lazily'})")
    assert not wrong, "imports against docs/architecture.md's layers:\n" + "\n".join(wrong)
    assert set(UPWARD) == used, f"UPWARD lists imports that no longer exist: {set(UPWARD) - used}"


def test_the_exceptions_and_spawning_state_are_leaves() -> None:
    for leaf in ("_exceptions", "_spawning"):
        imports = [t for t, _, _ in _imports(f"polyproc.{leaf}", SRC / f"{leaf}.py")]
        assert all(_layer(t) < LAYERS[leaf] or t.endswith("_stdlib_compat") for t in imports)
