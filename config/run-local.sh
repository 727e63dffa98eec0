#!/usr/bin/env bash
# `make run`: the local provider simulator in the background, the daemon in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-router.toml}"
BIN=.venv/bin
$BIN/sms-router check-config "$CONFIG"
$BIN/sms-router http-sim --port 8780 >/dev/null &
SIM=$!
trap 'kill $SIM 2>/dev/null || true' EXIT
echo "provider simulator on http://127.0.0.1:8780 (pid $SIM); daemon starting."
echo "In another terminal:  $BIN/sms-router send --to +447911123456 --text 'hello'"
echo "                      $BIN/sms-router log"
$BIN/sms-router run -c "$CONFIG"
