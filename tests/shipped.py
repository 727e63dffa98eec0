"""The shipped router.toml, ready to load outside the repository.

Its API tokens are `file:var/...` secrets that config/run-local.sh creates on the first
`make run`; a fresh clone has none. `shipped_config` copies the file into a folder and
writes those secrets there as run-local.sh does, so a test loads the file as shipped.
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET = re.compile(r'"file:(var/[A-Za-z0-9._-]+)"')


def shipped_config(folder: Path) -> Path:
    """`folder`/router.toml, a copy of the shipped file, with its `file:var/...`
    secrets created beside it (random, mode 600)."""
    config = folder / "router.toml"
    shutil.copyfile(ROOT / "router.toml", config)
    for relative in sorted(set(SECRET.findall(config.read_text()))):
        secret = folder / relative
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(secrets.token_urlsafe(32) + "\n")
        secret.chmod(0o600)
    return config
