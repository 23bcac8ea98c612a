#!/usr/bin/env bash
# Builds the web UI (web/, TypeScript and Preact, by Vite) into internal/ui/dist/app, which
# `go build` then embeds into vigil (docs/ui.md). Its packages come from npm at the versions
# web/package-lock.json pins (npm ci). Needs Node.js 18 or later and npm (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../web"
command -v npm >/dev/null 2>&1 || { echo "build-ui: npm is missing (scripts/setup.sh installs it)" >&2; exit 1; }
# npm ci is skipped when the lockfile's packages are installed already (a rebuild).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
