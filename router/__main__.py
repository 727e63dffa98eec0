"""`python -m router` is the `sms-router` command."""

from router.cli import main

main()
