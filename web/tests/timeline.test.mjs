// Unit tests of the timeline's grouping (npm run test:unit): the source
// is TypeScript, bundled first by esbuild into .build/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { group } from "../.build/timeline.mjs";

let clock = Date.parse("2026-12-06T12:00:00Z");
const ev = (type, host, vm = "", afterMs = 100) => {
  clock += afterMs;
  return { time: new Date(clock).toISOString(), type, host, vm, message: `${type} ${host} ${vm}` };
};
const groups = (rows) => rows.filter((r) => "group" in r).map((r) => r.group);

test("a host's lease lapsing at start-up is no failover; the crash after it is one group", () => {
  const events = [
    ev("host.lease-expired", "h2"),
    ev("host.up", "h2"),
    ev("vm.placed", "h1", "web", 5000),
    ev("vm.running", "h1", "web"),
    ev("host.lease-expired", "h1", "", 10_000),
    ev("vm.fenced", "h1", "web"),
    ev("vm.restart-placed", "h3", "web"),
    ev("vm.starting", "h3", "web"),
    ev("vm.running", "h3", "web"),
    ev("vm.running", "h2", "other"),
  ];
  const rows = group(events);
  const gs = groups(rows);
  assert.equal(gs.length, 1);
  assert.deepEqual(gs[0].steps.map((s) => s.type), ["host.lease-expired", "vm.fenced", "vm.restart-placed", "vm.starting", "vm.running"]);
  assert.match(gs[0].title, /^Failover: host h1 lost — web, running on h3 \(5 steps/);
  assert.equal(rows.length, events.length - 5 + 1);
  // Newest first.
  assert.equal(rows[0].event.vm, "other");
});

test("a lapse of the same host before it, with nothing moved, stays out of the group", () => {
  const events = [
    ev("host.lease-expired", "h1", "", 1000),
    ev("host.lease-expired", "h1", "", 5000),
    ev("vm.fenced", "h1", "db"),
    ev("vm.restart-placed", "h2", "db"),
  ];
  const gs = groups(group(events));
  assert.equal(gs.length, 1);
  assert.equal(gs[0].start, Date.parse(events[1].time));
  assert.equal(gs[0].steps.length, 3);
});

test("an FT takeover is one group", () => {
  const events = [ev("ft.primary-lost", "h2", "ft1", 1000), ev("ft.takeover", "h2", "ft1"), ev("ft.resumed", "h2", "ft1")];
  const gs = groups(group(events));
  assert.equal(gs.length, 1);
  assert.match(gs[0].title, /^FT failover of ft1 from h2 — ft1, running on h2/);
});
