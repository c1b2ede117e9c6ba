#!/usr/bin/env bash
# The whole test suite: unit tests (swift test), then integration tests that start the real
# hub binary and drive it over real sockets (pytest, in a virtual environment made here).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages "${HUB_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
python3 -m venv --help >/dev/null 2>&1 || ensure_packages python3-venv
ensure_packages "${TEST_PACKAGES[@]}"
ensure_packages "${BROWSER_PACKAGES[@]}" || echo "chromium could not be installed: the dashboard browser test will be skipped" >&2

swift build --build-tests
# A deadline, so a hung test fails the run instead of eating the CI budget.
timeout --kill-after=30 900 swift test --skip-build --disable-swift-testing

# libFuzzer on every parser, bounded (HUB_FUZZ_SECONDS per target; longer runs: docs/security.md).
timeout --kill-after=30 420 ./scripts/fuzz.sh "${HUB_FUZZ_SECONDS:-12}"

# The JavaScript client (clients/js) against a real hub subprocess.
HUB_BINARY="$PWD/.build/debug/hub" timeout --kill-after=10 300 node --test clients/js/test/*.test.js

VENV=.venv-test
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sys" 2>/dev/null; then
    python3 -m venv "$VENV" || { ensure_packages python3-venv && python3 -m venv "$VENV"; }
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r Tests/integration/requirements.txt
# The Python helpers and workers (clients/python), so their console scripts are tested as installed.
"$VENV/bin/pip" install -q --disable-pip-version-check './clients/python[stt]'
mkdir -p test-artifacts
HUB_BINARY="$PWD/.build/debug/hub" "$VENV/bin/python" -m pytest Tests/integration -q -p no:cacheprovider "$@"
