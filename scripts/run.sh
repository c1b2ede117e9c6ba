#!/usr/bin/env bash
# Installs what is missing, builds the hub in release mode and runs it (extra arguments are
# passed to `hub`; see `hub --help` and docs/configuration.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages "${HUB_PACKAGES[@]}"
swift build -c release --product hub
exec .build/release/hub "$@"
