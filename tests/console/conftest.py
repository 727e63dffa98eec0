"""The console tests' shared fixtures (defined in site.py and browser.py), offered to
every test module here: `data`, `settings` and `http` (the console's HTTP application
over a real Redis; a module changes the configuration with its own `data`), `browser`
(Chromium), `smpp_data` (a daemon's configuration over SMPP to the SMSC simulator),
`shots` (where screenshots go) and `daemon_from` (a daemon started from a configuration file)."""

from ..daemon.test_reload import daemon_from
from .browser import browser, shots, smpp_data
from .site import data, http, settings

__all__ = ["browser", "daemon_from", "data", "http", "settings", "shots", "smpp_data"]
