#!/usr/bin/env bash
# Builds the Debian package and checks it (scripts/test.sh runs this): its
# contents, lintian (no errors), systemd-analyze verify on its units, and the
# shipped config (as shipped and with every example uncommented) through
# `vigil config validate`.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(scripts/package.sh)
echo "package: $deb"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/vigil ./etc/vigil/vigil.yaml ./lib/systemd/system/vigil.service ./lib/systemd/system/vigil-watchdog.service \
  ./lib/systemd/system/vigil.slice ./usr/share/bash-completion/completions/vigil ./usr/share/zsh/vendor-completions/_vigil \
  ./usr/share/man/man1/vigil.1.gz ./usr/share/man/man1/vigil-agent.1.gz ./usr/share/doc/vigil/copyright; do
  grep -q " $f\$" <<<"$contents" || { echo "package lacks $f" >&2; exit 1; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/vigil/vigil.yaml || { echo "/etc/vigil/vigil.yaml is not a conffile" >&2; exit 1; }
dpkg-deb -f "$deb" Depends | grep -q 'qemu-system-x86 (>= 1:10.0)' || { echo "the package does not depend on qemu-system-x86 (>= 1:10.0)" >&2; exit 1; }

echo "== lintian"
lintian --fail-on error --allow-root "$deb"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
echo "== systemd-analyze verify"
# Against the package's own tree (--root), beside this machine's targets and
# slices, so that ExecStart= is checked against the packaged binary.
for u in /lib/systemd/system/*.target /lib/systemd/system/*.slice; do
  [ -e "$root/lib/systemd/system/$(basename "$u")" ] || cp -a "$u" "$root/lib/systemd/system/"
done
out=$(systemd-analyze verify --man=no --root="$root" /lib/systemd/system/vigil.service \
  /lib/systemd/system/vigil-watchdog.service /lib/systemd/system/vigil.slice 2>&1) || { echo "$out" >&2; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze verify: $out" >&2; exit 1; }

echo "== shipped config"
"$root/usr/bin/vigil" config validate "$root/etc/vigil/vigil.yaml"
# Every example in it, uncommented, must be valid too (keys start at
# column 1 after '#', nested lines after '#  ').
sed -E 's/^#([a-z]|  )/\1/' "$root/etc/vigil/vigil.yaml" >"$root/uncommented.yaml"
"$root/usr/bin/vigil" config validate "$root/uncommented.yaml"
"$root/usr/bin/vigil" --version
