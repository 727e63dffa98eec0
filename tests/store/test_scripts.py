"""Every Lua script the router runs is a file in ``router/store/lua/``: none is hidden
in a Python string, every file is loaded by some module, and the package ships them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from router.store import scripts

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "router" / "store" / "lua"
# What only Lua says: a Redis call, or a local binding at the start of a line.
_LUA_TEXT = re.compile(r"redis\.call\(|redis\.pcall\(|^\s*local \w+ = ", re.MULTILINE)
_LOADED = re.compile(r"""(?:source|with_common)\(\s*["']([a-z_]+)["']""")


def _python_files() -> list[Path]:
    return sorted((ROOT / "router").rglob("*.py"))


def test_no_lua_in_python_strings() -> None:
    found = [
        str(path.relative_to(ROOT))
        for path in _python_files()
        if _LUA_TEXT.search(path.read_text())
    ]
    assert found == []


def test_every_script_file_is_loaded_and_every_load_has_its_file() -> None:
    files = {path.stem for path in LUA.glob("*.lua")}
    loaded = {name for path in _python_files() for name in _LOADED.findall(path.read_text())}
    loaded.add("common")  # prepended by `scripts.with_common`
    assert {"ack", "inbound_publish", "lease_renew", "list_change"} <= files
    assert loaded - files == set(), "a script is loaded that has no file"
    assert files - loaded == set(), "a script file nothing loads"
    for name in files:
        assert scripts.source(name).strip(), name


def test_the_package_ships_the_scripts() -> None:
    """The wheel's package data covers every script where `scripts.source` reads it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]
    shipped: set[Path] = set()
    for package, patterns in data.items():
        base = ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            shipped |= set(base.glob(pattern))
    missing = sorted(p.name for p in LUA.glob("*.lua") if p not in shipped)
    assert missing == []
