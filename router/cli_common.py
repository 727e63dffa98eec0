"""What every command line module shares: the consoles, the ``-c`` option and loading
the configuration (exit 1 naming every problem and, for a missing file, where it was
looked for)."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from router.config import (
    DEFAULT_PATH,
    ENV_PATH,
    ConfigError,
    Settings,
    load_settings,
    resolve_config_path,
)

__all__ = ["config_option", "err", "load_or_exit", "out"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    metavar="PATH",
    help="Configuration file (default: $SMS_ROUTER_CONFIG, else ./router.toml).",
)


def load_or_exit(path: str | None, *, secrets: bool = True) -> Settings:
    """The configuration, or exit 1 listing its problems. ``secrets=False`` for commands
    that only reach Redis: a provider/API/webhook secret this shell cannot resolve (the
    daemon's come from systemd credentials or its EnvironmentFile) does not stop them;
    ``[router] redis_password`` is still resolved, everything else checked as usual."""
    file = resolve_config_path(path)
    try:
        return load_settings(file, resolve_secrets=secrets)
    except ConfigError as exc:
        err.print("[bold red]configuration error[/]", markup=True)
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False)
        if not file.exists():
            err.print(f"  {_where_config(path)}", markup=False)
        sys.exit(1)


def _where_config(path: str | None) -> str:
    """Where the missing file was looked for and how to name another one."""
    if path:
        return "(given with -c PATH)"
    if os.environ.get(ENV_PATH):
        return f"(named by ${ENV_PATH}; give another with -c PATH)"
    return (
        f"(looked for {DEFAULT_PATH} in {os.getcwd()}: give the file with -c PATH "
        f"or set ${ENV_PATH})"
    )
