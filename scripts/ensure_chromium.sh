#!/usr/bin/env bash
# Make sure a headless Chromium is on PATH for the report-rendering test
# (tests/test_analysis_report.py). Installs Debian's `chromium` when none of
# chromium / chromium-browser / google-chrome is found. Never fails the build:
# on any failure it prints one line saying the rendering test will skip.
set -u

for browser in chromium chromium-browser google-chrome; do
    if command -v "$browser" >/dev/null 2>&1; then
        exit 0
    fi
done

skip() {
    echo "ensure_chromium: could not install chromium ($1); the report-rendering test will skip"
    exit 0
}

command -v apt-get >/dev/null 2>&1 || skip "no apt-get"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    skip "not root and no password-less sudo"
fi

install() {
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends \
        chromium >/dev/null 2>&1
}

if ! install; then
    # the package lists may be missing or stale: refresh them once and retry
    "${SUDO[@]}" apt-get update >/dev/null 2>&1 || skip "apt-get update failed"
    install || skip "apt-get install chromium failed"
fi
command -v chromium >/dev/null 2>&1 || skip "installed, but no chromium on PATH"
echo "ensure_chromium: installed $(chromium --version 2>/dev/null || echo chromium)"
