#!/usr/bin/env bash
# The single-host demo (scripts/demo.sh --single): `vigil up` with two VMs from
# examples/guest.yaml, serving. Expects bin/vigil and the guest image (demo.sh builds them).
#   scripts/demo-single.sh --down   stop its VMs and Vigil, and remove its network namespace
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=/var/lib/vigil/demo
V=bin/vigil
unset VIGIL_ADDR
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "${1:-}" = "--down" ]; then
  for vm in $("$V" vm list -o json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)))'); do
    "$V" vm delete "$vm" --wait 90s || true
  done
  [ -f "$DATA/up.pid" ] && kill "$(cat "$DATA/up.pid")" 2>/dev/null || true
  ip netns del vigil 2>/dev/null || true
  echo "demo stopped"
  exit 0
fi


say "start vigil up (log: $DATA/up.log)"
mkdir -p "$DATA"
if ! "$V" host list >/dev/null 2>&1; then
  setsid "$V" up --data-dir "$DATA" >>"$DATA/up.log" 2>&1 < /dev/null &
  echo $! >"$DATA/up.pid"
  for _ in $(seq 1 100); do "$V" host list >/dev/null 2>&1 && break; sleep 0.2; done
fi
"$V" host list

say "create two VMs from examples/guest.yaml"
for vm in guest1 guest2; do
  "$V" vm show "$vm" >/dev/null 2>&1 || "$V" vm create -f examples/guest.yaml --name "$vm"
done
"$V" vm start guest1 guest2 --wait 60s >/dev/null

say "wait for the guests' HTTP service (TCG boot takes a few seconds)"
for vm in guest1 guest2; do
  ip=$("$V" vm show "$vm" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
  for _ in $(seq 1 120); do ip netns exec vigil curl -sf -m 1 "http://$ip/healthz" >/dev/null && break; sleep 0.5; done
  printf '%s (%s): ' "$vm" "$ip"; ip netns exec vigil curl -s "http://$ip/"; echo
  printf '  ledger append: '; ip netns exec vigil curl -s -XPOST -d "hello from the demo" "http://$ip/ledger"; echo
done

say "vigil vm list"
"$V" vm list
say "vigil events"
"$V" events --limit 20
cat <<MSG

Vigil is running in the background (pid $(cat "$DATA/up.pid" 2>/dev/null || echo '?'), log $DATA/up.log).
Try:  bin/vigil vm console guest1 | tail
      ip netns exec vigil curl http://10.77.0.10/
      bin/vigil vm stop guest1 --wait 60s
Stop: scripts/demo-single.sh --down
MSG
