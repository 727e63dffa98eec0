"""`python -m router` is the `sms-router` command."""

from .cli import main

main()
