#!/usr/bin/env bash
# Installs what Vigil needs on a Debian 12 machine, only where it is missing:
# QEMU 10.x from bookworm-backports (7.2 corrupts busy guests in TCG live migration),
# qemu-utils, nftables, iproute2, ethtool, python3/curl for the acceptance checks, and Debian's
# prometheus (promtool checks the shipped alert rules), tmux (the test of vigil top), and lintian,
# systemd-analyze and gcc (the Debian package: scripts/package.sh, scripts/check-package.sh), and
# Node.js with npm (they build the web UI: scripts/build-ui.sh) and chromium (the UI's browser tests).
# Fails loudly when QEMU 10.x cannot be installed.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: FATAL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (Vigil manages QEMU, taps, bridges and namespaces)"
export DEBIAN_FRONTEND=noninteractive

qemu_major() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo 0; return; }
  qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'
}

# add_backports writes an apt entry for bookworm-backports derived from the machine's own
# Debian entry, so that no mirror host is hard-coded here.
add_backports() {
  local deb822=/etc/apt/sources.list.d/debian.sources out822=/etc/apt/sources.list.d/vigil-backports.sources
  local out1=/etc/apt/sources.list.d/vigil-backports.list
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then return; fi
  if [ -f "$deb822" ]; then
    # First stanza only (up to the first blank line), with Suites replaced.
    awk 'BEGIN{s=0} /^[[:space:]]*$/{if(s)exit; next} {s=1; print}' "$deb822" \
      | sed -e 's/^Suites:.*/Suites: bookworm-backports/' >"$out822"
    log "added $out822"
  elif [ -f /etc/apt/sources.list ]; then
    local line
    line=$(grep -E '^deb[[:space:]]+[^[:space:]]+[[:space:]]+bookworm[[:space:]]' /etc/apt/sources.list | head -1 || true)
    [ -n "$line" ] || die "no bookworm entry in /etc/apt/sources.list to derive backports from"
    echo "$line" | sed -E 's/[[:space:]]bookworm[[:space:]]/ bookworm-backports /' >"$out1"
    log "added $out1"
  else
    die "no Debian apt source found to derive bookworm-backports from"
  fi
}

need=()
for pair in ip:iproute2 nft:nftables ethtool:ethtool python3:python3 curl:curl dpkg-deb:dpkg cpio:cpio promtool:prometheus tmux:tmux lintian:lintian systemd-analyze:systemd gcc:gcc node:nodejs npm:npm chromium:chromium; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done

updated=0
apt_update() { [ "$updated" = 1 ] || { apt-get update -qq >&2 || die "apt-get update failed"; updated=1; }; }

if [ "$(qemu_major)" -lt 10 ] || ! command -v qemu-img >/dev/null || ! command -v qemu-storage-daemon >/dev/null; then
  add_backports
  apt_update
  log "installing QEMU 10.x from bookworm-backports"
  apt-get install -y -qq -t bookworm-backports --no-install-recommends \
    qemu-system-x86 qemu-utils qemu-block-extra >&2 \
    || die "could not install QEMU from bookworm-backports"
fi
[ "$(qemu_major)" -ge 10 ] || die "QEMU $(qemu-system-x86_64 --version | head -1) installed; Vigil needs 10.x"

if [ "${#need[@]}" -gt 0 ]; then
  apt_update
  log "installing ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || die "could not install ${need[*]}"
  if [[ " ${need[*]} " == *" prometheus "* ]]; then
    # Only promtool and the prometheus binary are wanted (CI checks the shipped rules, and tests
    # start their own Prometheus): the package's own daemon on :9090 is stopped.
    { systemctl stop prometheus && systemctl disable prometheus; } >/dev/null 2>&1 \
      || service prometheus stop >/dev/null 2>&1 || true
  fi
fi

command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || die "Go 1.26 is required (not found)"
log "ok: $(qemu-system-x86_64 --version | head -1)"
