#!/usr/bin/env bash
# `make run`: the local SMSC and provider simulators in the background, the daemon in
# the foreground, on router.toml (or the file given).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-router.toml}"
BIN=.venv/bin
# The simulators' ports; router.toml names the same ones (change both together).
SMSC_PORT="${SMSC_PORT:-2775}"
SMSC_HTTP_PORT="${SMSC_HTTP_PORT:-8781}"
HTTP_SIM_PORT="${HTTP_SIM_PORT:-8780}"

# The configuration's `file:var/...` secrets (API tokens): made once, random, readable
# by this user only, kept across runs so clients keep working.
CONFIG_DIR="$(dirname "$CONFIG")"
for secret in $(grep -o '"file:var/[A-Za-z0-9._-]*"' "$CONFIG" | sort -u | sed 's/^"file://; s/"$//'); do
  if [ ! -s "$CONFIG_DIR/$secret" ]; then
    mkdir -p "$(dirname "$CONFIG_DIR/$secret")"
    (umask 077 && $BIN/python -c 'import secrets; print(secrets.token_urlsafe(32))' >"$CONFIG_DIR/$secret")
    echo "created $CONFIG_DIR/$secret"
  fi
done

$BIN/sms-router check-config "$CONFIG"
$BIN/sms-router http-sim --port "$HTTP_SIM_PORT" &
SIM=$!
$BIN/sms-router smsc-sim --port "$SMSC_PORT" --http-port "$SMSC_HTTP_PORT" &
SMSC=$!
trap 'kill $SIM $SMSC 2>/dev/null || true' EXIT
echo "SMSC simulator on 127.0.0.1:$SMSC_PORT (control API http://127.0.0.1:$SMSC_HTTP_PORT), HTTP provider simulator on http://127.0.0.1:$HTTP_SIM_PORT; daemon starting."
echo "In another terminal:  $BIN/sms-router send --to +14155550123 --text 'hello'"
echo "                      $BIN/sms-router log"
echo "                      curl -s -H \"Authorization: Bearer \$(cat var/api-token)\" http://127.0.0.1:8080/v1/profiles"
$BIN/sms-router run -c "$CONFIG"
