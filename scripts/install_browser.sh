#!/bin/sh
# Installs Debian's Chromium for the browser tests (tests/browser) unless /usr/bin/chromium
# is already there. Idempotent and quiet: apt's output is shown only when it fails.
# Needs root (or sudo).
set -eu

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install_browser.sh: $CHROMIUM is missing; as root run: apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

OUTPUT=$(mktemp)
trap 'rm -f "$OUTPUT"' EXIT
if ! $SUDO env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium' \
    >"$OUTPUT" 2>&1; then
    cat "$OUTPUT" >&2
    echo "install_browser.sh: installing chromium failed" >&2
    exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
    cat "$OUTPUT" >&2
    echo "install_browser.sh: chromium was installed but $CHROMIUM is missing" >&2
    exit 1
fi
