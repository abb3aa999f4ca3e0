#!/bin/sh
# Make sure `promtool` (and the `prometheus` server) are installed: Debian's
# `prometheus` package. Used by tests/deploy/test_prometheus.py; safe to run
# again (does nothing when promtool is already on PATH). Needs root and
# apt-get; fails with a message saying what to do otherwise.
set -eu

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: promtool is not installed and apt-get is not available;" \
         "install Prometheus (it ships promtool) and put promtool on PATH" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-prometheus: promtool is not installed and installing it needs root:" \
             "run 'apt-get install -y prometheus' as root" >&2
        exit 1
    fi
else
    SUDO=""
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or old on a fresh machine: refresh once.
$SUDO apt-get update -qq </dev/null
$SUDO apt-get install -y -qq --no-install-recommends prometheus </dev/null >/dev/null

if ! command -v promtool >/dev/null 2>&1; then
    echo "ensure-prometheus: apt-get installed 'prometheus' but promtool is not on PATH" >&2
    exit 1
fi
