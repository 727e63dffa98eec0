#!/usr/bin/env bash
# `make run`: the local provider simulator in the background, the daemon in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-router.toml}"
BIN=.venv/bin
$BIN/sms-router check-config "$CONFIG"
$BIN/sms-router http-sim --port 8780 &
SIM=$!
$BIN/sms-router smsc-sim --port 2775 --http-port 8781 &
SMSC=$!
trap 'kill $SIM $SMSC 2>/dev/null || true' EXIT
echo "SMSC simulator on 127.0.0.1:2775, HTTP provider simulator on http://127.0.0.1:8780; daemon starting."
echo "In another terminal:  $BIN/sms-router send --to +447911123456 --text 'hello'"
echo "                      $BIN/sms-router log"
$BIN/sms-router run -c "$CONFIG"
