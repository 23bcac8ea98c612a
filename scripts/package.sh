#!/usr/bin/env bash
# Builds the Debian package dist/vigil_VERSION_amd64.deb with dpkg-deb (no
# debhelper needed): /usr/bin/vigil (with its web UI embedded), the systemd units, the commented default
# config /etc/vigil/vigil.yaml (a conffile), bash and zsh completion, and the
# man pages generated from the CLI. docs/install.md installs it.
#
#   scripts/package.sh                  # version 0.1.0+gitDATE.SHA
#   VIGIL_VERSION=1.2.3 scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

commit_time=$(git log -1 --format=%ct 2>/dev/null || date +%s)
version=${VIGIL_VERSION:-0.1.0+git$(date -u -d "@$commit_time" +%Y%m%d).$(git rev-parse --short=8 HEAD 2>/dev/null || echo local)}
export SOURCE_DATE_EPOCH=$commit_time
arch=amd64
root=dist/pkgroot
rm -rf "$root" && mkdir -p "$root/DEBIAN" dist

echo "package: building vigil $version" >&2
scripts/build-ui.sh >&2   # the web UI, which vigil embeds
CGO_ENABLED=1 go build -buildmode=pie -trimpath -ldflags "-s -w -X github.com/vigilha/vigil/internal/cli.Version=$version" -o "$root/usr/bin/vigil" ./cmd/vigil

install -D -m 0644 deploy/debian/vigil.service "$root/lib/systemd/system/vigil.service"
install -D -m 0644 deploy/debian/vigil-watchdog.service "$root/lib/systemd/system/vigil-watchdog.service"
install -D -m 0644 deploy/debian/vigil.slice "$root/lib/systemd/system/vigil.slice"
install -D -m 0644 deploy/debian/vigil.yaml "$root/etc/vigil/vigil.yaml"
mkdir -p "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions"
"$root/usr/bin/vigil" completion bash >"$root/usr/share/bash-completion/completions/vigil"
"$root/usr/bin/vigil" completion zsh >"$root/usr/share/zsh/vendor-completions/_vigil"
mkdir -p "$root/usr/share/man/man1"
"$root/usr/bin/vigil" man "$root/usr/share/man/man1"
gzip -9n "$root"/usr/share/man/man1/*.1
install -D -m 0644 deploy/debian/copyright "$root/usr/share/doc/vigil/copyright"
sed "s/@VERSION@/$version/; s/@DATE@/$(date -u -R -d "@$commit_time")/" deploy/debian/changelog \
  | gzip -9n >"$root/usr/share/doc/vigil/changelog.gz"
chmod 0644 "$root/usr/share/doc/vigil/changelog.gz"

echo /etc/vigil/vigil.yaml >"$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "deploy/debian/$s" "$root/DEBIAN/$s"; done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed "s/@VERSION@/$version/; s/@ARCH@/$arch/; s/@SIZE@/$size/" deploy/debian/control >"$root/DEBIAN/control"
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$commit_time" {} +

out="dist/vigil_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >&2
rm -rf "$root"
echo "$out"
