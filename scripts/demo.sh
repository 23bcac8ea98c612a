#!/usr/bin/env bash
# README command (a): install what is missing, build Vigil and the guest image, bring up a
# real 3-host cluster on this machine (network namespaces as hosts, `vigil lab up`), protect two
# VMs with HA, live-migrate one and shrink its memory live, blip the management network of the other's host (nothing moves),
# crash that host, hang the agent of the first one's host (its watchdog resets the host before HA
# restarts the VM), restart a host's agent as systemd would (its VMs keep running), print the failover timelines, show a replicated disk through two crashes and a live migration, then a
# an FT guest whose primary's host crashes under a client's open TCP connection (the secondary takes over:
# same connection, same boot), a CPU alarm that live-migrates a burning guest away, and the audit trail; then a second lab whose control
# plane is an external etcd, whose etcd leader and a VM's host crash together. The lab is made with `vigil init`
# and `vigil join`, TLS on every link; QEMU runs unprivileged, confined by Landlock.
#   scripts/demo.sh            the HA demo (the lab keeps running; `bin/vigil lab down` removes it)
#   scripts/demo.sh --single   a single-host `vigil up` with two VMs instead
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
V="$PWD/bin/vigil"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

scripts/setup.sh
say "build"
scripts/build-ui.sh   # the web UI, which vigil embeds
go build -o bin/vigil ./cmd/vigil
CGO_ENABLED=0 go build -ldflags="-s -w" -o bin/vigil-guest ./cmd/vigil-guest
say "guest image"
"$V" image build --guest-binary bin/vigil-guest

if [ "${1:-}" = "--single" ]; then
  exec scripts/demo-single.sh
fi

say "bring up a 3-host lab (host1-3 run agent+server; a storage namespace serves the shared datastore)"
"$V" lab down >/dev/null 2>&1 || true
"$V" lab up --hosts 3
eval "$("$V" lab env)"
"$V" host list

say "create two HA-protected VMs from examples/ha-guest.yaml"
"$V" vm create -f examples/ha-guest.yaml --name ha-guest1 --wait 90s
# ha-guest2 has room for disks and NICs added live (spec.hotplugDevices; docs/drs.md)
sed 's/^spec:$/spec:\n  hotplugDevices: true/' examples/ha-guest.yaml > /tmp/vigil-demo-hotplug.yaml
"$V" vm create -f /tmp/vigil-demo-hotplug.yaml --name ha-guest2 --wait 90s
"$V" vm list

guest() { "$V" vm show "$1" -o json | json 'd["'"$2"'"]'; }
# event_ms VM TYPE START_NS: milliseconds from START_NS to the VM's first event of TYPE after it, from the
# event log's own timestamps (not from this script's polling).
event_ms() {
  "$V" events --vm "$1" --type "$2" --since 5m -o json | python3 -c '
import json, sys, datetime
start = int(sys.argv[1]) / 1e9
def ts(t):
    t = t.replace("Z", "+00:00")
    head, _, tz = t.partition("+")
    if "." in head:
        a, b = head.split(".")
        head = a + "." + b[:6]
    return datetime.datetime.fromisoformat(head + "+" + tz).timestamp()
times = sorted(ts(e["time"]) for e in json.load(sys.stdin) if ts(e["time"]) >= start)
print(round((times[0] - start) * 1000) if times else "?")' "$3"
}
ip1=$(guest ha-guest1 ip); host1=$(guest ha-guest1 host)
other=host1; [ "$host1" = host1 ] && other=host2
say "wait for the guests to boot (TCG emulation: a few seconds), then write to ha-guest1's ledger"
for vm in ha-guest1 ha-guest2; do
  ip=$(guest "$vm" ip)
  for _ in $(seq 1 120); do "$V" lab exec "$other" -- curl -sf -m 1 "http://$ip/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
  printf '%s (%s on %s): ' "$vm" "$ip" "$(guest "$vm" host)"; "$V" lab exec "$other" -- curl -s "http://$ip/"; echo
done
for i in 1 2 3; do "$V" lab exec "$other" -- curl -s -XPOST -d "order $i" "http://$ip1/ledger"; echo; done

ip2=$(guest ha-guest2 ip)
say "security: the lab came up with vigil init and vigil join (one-time join tokens pinning the cluster CA); every link is TLS, every QEMU runs unprivileged and confined to its VM's files"
"$V" token list
printf 'an anonymous GET %s/api/v1/vms from this shell (the root namespace has a management-network address): HTTP ' "$VIGIL_API_URL"
curl -s -o /dev/null -w '%{http_code}\n' --cacert "$VIGIL_CA" "$VIGIL_API_URL/api/v1/vms"
viewer=$("$V" token create --role viewer --name demo-viewer)
{ VIGIL_TOKEN=$viewer "$V" vm stop ha-guest1 2>&1 || true; } | sed 's/^/a viewer token stops ha-guest1: /'
ps -o user=,pid=,args= -C qemu-system-x86_64 | cut -c1-110
# A host's certificate is its identity: it reports only on the VMs placed on it (and in etcd, a host that
# is not a member writes only its own keys).
owner=$(guest ha-guest1 host); writer=host1; [ "$owner" = host1 ] && writer=host2
wpki=/var/lib/vigil/lab/$writer/pki
printf '%s, with its certificate, reports a status of ha-guest1 as %s: ' "$writer" "$owner"
"$V" lab exec "$writer" -- curl -s -m 5 --cacert "$VIGIL_CA" --cert "$wpki/host.crt" --key "$wpki/host.key" -X PUT \
  -d '{"placementRev":1,"status":{"state":"stopped"}}' "$VIGIL_API_URL/api/v1/hosts/$owner/vms/ha-guest1/status" | grep error

say "deployment: each host runs from its config file (/etc/vigil/vigil.yaml on a real host), and a restart of its agent's service (what systemctl restart vigil does) keeps its VMs: each QEMU runs in a cgroup of its own"
lab=/var/lib/vigil/lab
"$V" config validate "$lab/host1/vigil.yaml"
ps -o args= -C vigil | grep -E '^[^ ]+ (agent|watchdog) --config' | sort | head -6
"$V" member list
owner=$(guest ha-guest1 host)
before=$("$V" lab exec "$other" -- curl -s "http://$ip1/")
"$V" lab restart-service "$owner"
for _ in $(seq 1 60); do "$V" events --type vm.reattached --since 1m 2>/dev/null | grep -q ha-guest1 && break; sleep 0.5; done
echo "ha-guest1 on $owner: before the restart $before; after it $("$V" lab exec "$other" -- curl -s "http://$ip1/") (same boot id, counter going on)"
"$V" cluster backup /tmp/vigil-demo-backup.tar.gz

say "live-migrate ha-guest2 off $(guest ha-guest2 host) (the placement pipeline picks the target; the stream is TLS, from the source host's certificate only); its counter keeps counting"
printf 'before: '; "$V" lab exec "$other" -- curl -s "http://$ip2/"; echo
"$V" vm migrate ha-guest2
printf 'after (on %s): ' "$(guest ha-guest2 host)"; "$V" lab exec "$other" -- curl -s "http://$ip2/"; echo

say "take 64Mi back from ha-guest2 live (the balloon; growing needs spec.maxMemory, docs/drs.md): its own mem_total_kib drops, same boot id"
memkib() { "$V" lab exec "$other" -- curl -s "http://$ip2/" | json 'd["mem_total_kib"]'; }
before=$(memkib)
"$V" vm resize ha-guest2 --memory 192Mi
for _ in $(seq 1 30); do [ "$(memkib)" -lt "$before" ] && break; sleep 0.5; done
printf 'mem_total_kib before: %s; after the resize: ' "$before"; "$V" lab exec "$other" -- curl -s "http://$ip2/"; echo

say "add a 16Mi disk and a NIC to ha-guest2 live (vm apply of its spec with one more of each; it was created with hotplugDevices): the guest sees both at once, same boot id"
"$V" vm show ha-guest2 -o json | python3 -c '
import json, sys
vm = json.load(sys.stdin)["spec"]
s = vm["spec"]
s["disks"].append({"name": "scratch", "size": "16Mi", "datastore": s["disks"][0].get("datastore", "local")})
s["nics"].append({"network": s["nics"][0]["network"]})
print(json.dumps(vm))' > /tmp/vigil-demo-ha-guest2.json
"$V" vm apply -f /tmp/vigil-demo-ha-guest2.json
devices() { "$V" lab exec "$other" -- curl -s "http://$ip2/" | json 'len(d["disks"]), len(d["nics"])'; }
for _ in $(seq 1 30); do [ "$(devices)" = "(2, 2)" ] && break; sleep 0.5; done
printf 'the guest now: '; "$V" lab exec "$other" -- curl -s "http://$ip2/"; echo

say "a 2 s management-network blip on $host1 (its storage path stays up): its lease expires, but the storage still hears it, so HA waits the isolation timeout (5 s) and nothing moves"
pid1=$(guest ha-guest1 pid)
"$V" lab partition "$host1"; sleep 2; "$V" lab heal "$host1"
sleep 8
"$V" events --since 12s | grep -e lease-expired -e isolated -e host.up -e fenced -e restart -e self-fence || true
echo "ha-guest1's QEMU before the blip: pid $pid1; after: pid $(guest ha-guest1 pid) on $(guest ha-guest1 host)"

say "crash $host1 (SIGKILL of every process of the host, QEMU included; links down)"
start=$(date +%s%N)
"$V" lab crash "$host1"
for _ in $(seq 1 600); do
  h=$(guest ha-guest1 host 2>/dev/null || true); s=$(guest ha-guest1 state 2>/dev/null || true)
  [ -n "$h" ] && [ "$h" != "$host1" ] && [ "$s" = running ] && break
  sleep 0.1
done
for _ in $(seq 1 600); do "$V" lab exec "$other" -- curl -sf -m 1 "http://$ip1/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
answered=$(date +%s%N)
echo "ha-guest1 runs on $(guest ha-guest1 host): QEMU started there $(event_ms ha-guest1 vm.running "$start") ms after the crash (the agent's vm.running event)"
echo "its service answered again $(( (answered - start) / 1000000 )) ms after the crash (polled with curl every 0.1 s; most of it is the guest booting under TCG); its ledger kept every acknowledged write:"
"$V" lab exec "$other" -- curl -s "http://$ip1/ledger"; echo

# Two hosts down at once would take etcd's majority with them (3 members): bring host1 back first.
"$V" lab heal "$host1"
for _ in $(seq 1 300); do "$V" host list 2>/dev/null | grep -q "^$host1 *up" && break; sleep 0.2; done

host2=$(guest ha-guest2 host); watcher=$other; [ "$watcher" = "$host2" ] && watcher=$(for h in host1 host2 host3; do [ "$h" != "$host2" ] && [ "$h" != "$host1" ] && echo "$h"; done | head -1)
say "hang only the agent of $host2 (SIGSTOP-like freeze; ha-guest2's QEMU keeps running): its watchdog must reset the host before HA restarts the VM elsewhere, so a client never hears two instances"
"$V" host list | sed -n "1p;/^$host2 /p"
start=$(date +%s%N)
"$V" lab freeze "$host2" --process agent
for _ in $(seq 1 600); do
  h=$(guest ha-guest2 host 2>/dev/null || true); s=$(guest ha-guest2 state 2>/dev/null || true)
  [ -n "$h" ] && [ "$h" != "$host2" ] && [ "$s" = running ] && break
  sleep 0.1
done
echo "ha-guest2 runs on $(guest ha-guest2 host): QEMU started there $(event_ms ha-guest2 vm.running "$start") ms after the hang; $host2's board watchdog: $("$V" lab status | awk -v n="h${host2#host}" '$1==n {for (i=6; i<NF; i++) printf "%s ", $i}')"

say "the failover timelines (vigil events)"
"$V" events --since 2m | grep -v -e vm.created -e vm.placed -e host.up -e leader.elected -e watchdog-armed || true

say "heal $host2 (reset by its watchdog): it boots empty and rejoins"
"$V" lab heal "$host2"
sleep 3
"$V" host list
"$V" vm list

say "a replicated disk (no SAN): rep-guest1's ledger lives on its host and, synchronously, on a replica host"
"$V" vm create -f examples/replicated-guest.yaml --wait 90s
replica() { "$V" vm show rep-guest1 -o json | json '[x["replica"] for x in d.get("disks",[]) if x.get("replica")][0]["'"$1"'"]'; }
for _ in $(seq 1 240); do [ "$(replica state 2>/dev/null)" = UpToDate ] && break; sleep 0.5; done
"$V" vm show rep-guest1 | grep -e '^Host' -e '^Replica'
ip3=$(guest rep-guest1 ip); host3=$(guest rep-guest1 host); rhost=$(replica host)
watcher=$(for h in host1 host2 host3; do if [ "$h" != "$host3" ] && [ "$h" != "$rhost" ]; then echo "$h"; fi; done | head -1)
for _ in $(seq 1 120); do "$V" lab exec "$watcher" -- curl -sf -m 1 "http://$ip3/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
for i in 1 2 3; do "$V" lab exec "$watcher" -- curl -s -XPOST -d "payment $i" "http://$ip3/ledger"; echo; done
say "crash the replica's host $rhost: rep-guest1 goes on alone (replica recorded Outdated first), then resyncs only what it missed"
"$V" lab crash "$rhost"
for _ in $(seq 1 120); do [ "$(replica state 2>/dev/null)" = Outdated ] && break; sleep 0.5; done
for i in 4 5 6; do "$V" lab exec "$watcher" -- curl -s -XPOST -d "payment $i" "http://$ip3/ledger"; echo; done
"$V" vm show rep-guest1 | grep '^Replica'
"$V" lab heal "$rhost"
for _ in $(seq 1 240); do [ "$(replica state 2>/dev/null)" = UpToDate ] && break; sleep 0.5; done
"$V" vm show rep-guest1 | grep -e '^Replica' -e '^Last sync'
say "live-migrate rep-guest1 to its replica's host $rhost: no disk is copied, the copies swap roles at the cut-over"
"$V" vm migrate rep-guest1
"$V" vm show rep-guest1 | grep -e '^Host' -e '^Replica'
old=$host3; host3=$rhost; rhost=$old
say "crash rep-guest1's host $host3: HA restarts it on $rhost, from the replica etcd records UpToDate"
start=$(date +%s%N)
"$V" lab crash "$host3"
for _ in $(seq 1 600); do [ "$(guest rep-guest1 host)" = "$rhost" ] && "$V" lab exec "$watcher" -- curl -sf -m 1 "http://$ip3/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "rep-guest1 answers on $(guest rep-guest1 host) $(( ($(date +%s%N) - start) / 1000000 )) ms after the crash; its ledger:"
"$V" lab exec "$watcher" -- curl -s "http://$ip3/ledger"; echo
"$V" lab heal "$host3"
for _ in $(seq 1 240); do [ "$(replica state 2>/dev/null)" = UpToDate ] && break; sleep 0.5; done
echo "$host3 rejoined; its stale copy became the replica and was resynced in full: $("$V" vm show rep-guest1 | grep '^Replica')"
say "FT: ft-guest1 gets a live secondary on another host (examples/ft-guest.yaml); its primary's host crashes under a client's open TCP connection"
"$V" vm create -f examples/ft-guest.yaml --wait 90s
ft() { "$V" vm show ft-guest1 -o json | json '(d.get("ft") or {}).get("'"$1"'","")'; }
for _ in $(seq 1 360); do [ "$(ft state)" = Protected ] && break; sleep 0.5; done
"$V" vm show ft-guest1 | grep -e '^Host' -e '^FT'
fh=$(guest ft-guest1 host); fs=$(ft secondaryHost); fip=$(guest ft-guest1 ip)
fc=$(for h in host1 host2 host3; do [ "$h" != "$fh" ] && [ "$h" != "$fs" ] && echo "$h"; done | head -1)
for _ in $(seq 1 240); do "$V" lab exec "$fc" -- curl -sf -m 1 "http://$fip/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
cat > /tmp/vigil-demo-ft.py <<'PY'
# One persistent HTTP/1.1 connection: GET / (the guest's counter) every 0.1 s for 15 s, never reconnecting.
import http.client, json, sys, time
c = http.client.HTTPConnection(sys.argv[1], 80, timeout=30)
t0 = time.monotonic()
while time.monotonic() - t0 < 15:
    c.request("GET", "/"); d = json.loads(c.getresponse().read())
    print("%d %s %d" % ((time.monotonic() - t0) * 1000, d["boot_id"], d["counter"]), flush=True)
    time.sleep(0.1)
PY
"$V" lab exec "$fc" -- python3 /tmp/vigil-demo-ft.py "$fip" > /tmp/vigil-demo-ft.log 2>&1 &
fp=$!
sleep 4
echo "crash $fh (primary); the secondary on $fs takes over from its last checkpoint"
"$V" lab crash "$fh"
wait "$fp" || echo "the client's connection broke: $(tail -1 /tmp/vigil-demo-ft.log)"
python3 - /tmp/vigil-demo-ft.log <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 3]
gap = max(int(b[0]) - int(a[0]) for a, b in zip(rows, rows[1:]))
back = sum(int(b[2]) <= int(a[2]) for a, b in zip(rows, rows[1:]))
print("one TCP connection, %d answers, %d boot(s), counter went back %d times, longest silence %d ms" % (len(rows), len({r[1] for r in rows}), back, gap))
PY
"$V" events --vm ft-guest1 --since 2m | grep -e 'ft\.' -e alarm.ft || true
"$V" lab heal "$fh"
for _ in $(seq 1 360); do [ "$(ft state)" = Protected ] && break; sleep 0.5; done
"$V" vm show ft-guest1 | grep -e '^Host' -e '^FT'
"$V" vm delete ft-guest1 --wait 60s >/dev/null
say "alarms: ha-guest2 burns its vCPU; an alarm on vm.cpu fires (a webhook would be told) and live-migrates it off its host"
cat > /tmp/vigil-demo-alarm.yaml <<'YAML'
apiVersion: vigil/v1
kind: Alarm
metadata: {name: ha-guest2-hot}
spec:
  metric: vm.cpu
  operator: ">"
  threshold: 0.5
  for: 10s
  clearFor: 10s
  severity: warning
  scope: {vms: [ha-guest2]}
  actions: [{type: migrate-away}]
YAML
"$V" alarm delete ha-guest2-hot >/dev/null 2>&1 || true
"$V" alarm create -f /tmp/vigil-demo-alarm.yaml
from=$(guest ha-guest2 host)
"$V" lab exec "$other" -- curl -s -XPOST "http://$ip2/burn?seconds=300"; echo
for _ in $(seq 1 180); do [ "$(guest ha-guest2 host)" != "$from" ] && [ "$(guest ha-guest2 state)" = running ] && break; sleep 1; done
"$V" alarm status | grep -e '^ALARM' -e ha-guest2-hot
echo "ha-guest2 moved $from -> $(guest ha-guest2 host); its counter goes on: $("$V" lab exec "$other" -- curl -s "http://$ip2/")"
"$V" lab exec "$other" -- curl -s -XPOST "http://$ip2/burn?seconds=0"; echo
alarm_state() { "$V" alarm status -o json | json '[a["state"] for a in d if a["alarm"]=="ha-guest2-hot"][0]'; }
for _ in $(seq 1 120); do [ "$(alarm_state)" = resolved ] && break; sleep 1; done
"$V" events --type alarm --since 5m
say "metrics: vigil top (two refreshes; GUEST USES is the guest's own view, from its balloon driver), and a few of host1's Prometheus series"
"$V" top -n 2 --interval 3s | python3 -c "import sys; print(sys.stdin.read().split('\x1b[H\x1b[2J')[-1].rstrip())"
url=$("$V" host show host1 -o json | json 'd["metricsURL"]')
"$V" lab exec host1 -- curl -s --cacert "$VIGIL_CA" -H "Authorization: Bearer $VIGIL_TOKEN" "$url" | grep -E '^vigil_(vm_guest_memory_available_bytes|vm_restarts_total|host_scrape_stale_vms|host_cpu_seconds_total)' | head -8
say "the audit trail: every change, who made it (here root over the API's unix socket) and how it ended"
"$V" events --type audit --since 30m --limit 8
say "external etcd: a second, 2-host lab whose control plane is an external 3-member etcd cluster with its own CA, trusting the cluster CA (docs/install.md, section 10); its etcd leader and a VM's host crash together"
go build -o bin/etcd ./test/tools/etcd   # etcd's own server, at the version Vigil is built against
xdir=/tmp/vigil-demo-external-etcd
"$V" lab down --lab-dir "$xdir" >/dev/null 2>&1 || true
(
  "$V" lab up --hosts 2 --lab-dir "$xdir" --external-etcd bin/etcd >/dev/null
  eval "$("$V" lab env --lab-dir "$xdir")"
  "$V" member list
  "$V" vm create -f examples/ha-guest.yaml --name ext-guest --wait 90s
  xh=$(guest ext-guest host); xip=$(guest ext-guest ip); xo=host1; [ "$xh" = host1 ] && xo=host2
  for _ in $(seq 1 300); do "$V" lab exec "$xo" --lab-dir "$xdir" -- curl -sf -m 1 "http://$xip/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  leader=$("$V" member list -o json | json 'd["etcdLeader"]')
  start=$(date +%s%N)
  "$V" lab etcd kill "$leader" --lab-dir "$xdir"
  "$V" lab crash "$xh" --lab-dir "$xdir"
  for _ in $(seq 1 600); do
    h=$(guest ext-guest host 2>/dev/null || true); s=$(guest ext-guest state 2>/dev/null || true)
    [ -n "$h" ] && [ "$h" != "$xh" ] && [ "$s" = running ] && break
    sleep 0.2
  done
  for _ in $(seq 1 600); do "$V" lab exec "$xo" --lab-dir "$xdir" -- curl -sf -m 1 "http://$xip/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "ext-guest runs on $(guest ext-guest host) and answers again $(( ($(date +%s%N) - start) / 1000000 )) ms after etcd member $leader and host $xh crashed"
  "$V" lab etcd start "$leader" --lab-dir "$xdir"
  for _ in $(seq 1 100); do [ "$("$V" member list -o json | json 'sum(m.get("reachable", False) for m in d["members"])')" = 3 ] && break; sleep 0.3; done
  "$V" member list
)
"$V" lab down --lab-dir "$xdir" >/dev/null

eval "$("$V" lab env)"
cat <<MSG

The lab keeps running. Try:
  eval "\$(bin/vigil lab env)"; bin/vigil ha drill host2; bin/vigil lab freeze host3; bin/vigil events -f
The web UI (docs/ui.md), live: open this in a browser on this machine (the lab's management network
is reachable from it; its certificate is from the lab's CA, $VIGIL_CA, so accept it or import the CA):
  $VIGIL_API_URL/ui/#token=$VIGIL_TOKEN
or, without a browser here: bin/vigil vm list -w  (the same live stream)
Remove it with: bin/vigil lab down
MSG
