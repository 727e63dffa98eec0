"""The layout's import rules, read from the source (every import, also those inside
functions): `binds` is a transport layer that knows nothing of the router or the
simulators; `store` (Redis) knows nothing of the loops, the HTTP surface or the
daemon; the daemon's package never loads a simulator; and no module imports one that
imports it back, directly or through others."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "binds", "sims")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> Iterator[str]:
    """The project modules `name` imports (a `from package import module` names the
    module; a `from module import thing`, the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            yield from (base for base in bases if base in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                module = f"{base}.{alias.name}"
                yield module if module in MODULES else base


GRAPH = {
    name: {dep for dep in _imported(name, path) if dep in MODULES and dep != name}
    for name, path in MODULES.items()
}


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_layout_is_read() -> None:
    """The rules below look at real modules (a broken walk would pass them all)."""
    assert {"router.store.ledger", "router.engine.worker", "binds.smpp.session"} <= set(GRAPH)
    assert "router.store.ledger" in GRAPH["router.engine.pipeline"]


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        (("binds",), ("router", "sims")),
        (("router.store",), ("router.engine", "router.api", "router.daemon", "router.cli")),
        (("router.policy",), ("router.engine", "router.api", "router.daemon", "router.cli")),
        (("router.engine",), ("router.api", "router.daemon", "router.cli")),
        # The SMPP server is a door: it uses policy, store, the client and binds' PDUs;
        # the daemon starts it; nothing below it knows it.
        (("router.smpp_server",), ("router.engine", "router.api", "router.daemon", "router.cli")),
        (("router.store", "router.policy", "router.engine"), ("router.smpp_server",)),
        # The web console is a door like the API: it reads Redis (store), the rules
        # (policy) and uses the API's shared parts; the API application registers it;
        # nothing below it knows it.
        (
            ("router.store", "router.policy", "router.engine", "router.daemon"),
            ("router.console",),
        ),
        (("router.console",), ("router.engine", "router.daemon", "router.cli")),
    ],
)
def test_imports_point_one_way(importer: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{module} imports {dep}"
        for module, deps in GRAPH.items()
        if _under(module, *importer)
        for dep in deps
        if _under(dep, *forbidden)
    )
    assert wrong == []


def test_only_the_cli_loads_a_simulator() -> None:
    """`sms-router demo`, `smsc-sim` and `http-sim` load `sims` when run; nothing the
    daemon runs does."""
    wrong = sorted(
        f"{module} imports {dep}"
        for module, deps in GRAPH.items()
        if _under(module, "router") and module != "router.cli"
        for dep in deps
        if _under(dep, "sims")
    )
    assert wrong == []


def test_no_import_cycles() -> None:
    """No module reaches itself through its imports (Tarjan's strongly connected
    components: any with more than one module is a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for dep in sorted(GRAPH[module]):
            if dep not in index:
                visit(dep)
                low[module] = min(low[module], low[dep])
            elif dep in stack:
                low[module] = min(low[module], index[dep])
        if low[module] == index[module]:
            component: list[str] = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []
