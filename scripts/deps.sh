# Installs the Debian packages the hub needs when they are missing. Sourced by run.sh and test.sh.
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# libev and lws's libev plugin carry the service loop (epoll); libwebsockets-dev pulls them in, named
# here because the hub links libev itself and lws loads the plugin when a context starts.
HUB_PACKAGES=(libwebsockets-dev libwebsockets-evlib-ev libev-dev libhiredis-dev libssl-dev libsqlite3-dev pkg-config redis-server openssl espeak-ng curl ffmpeg)
# What only the tests need: Node for clients/js's tests; mkfs.ext4 and e2fsck for the read-only
# data disk in test_faults.py; Chromium for the dashboard's browser test (optional: where it
# cannot be installed that test skips, saying so).
TEST_PACKAGES=(nodejs e2fsprogs)
BROWSER_PACKAGES=(chromium)
