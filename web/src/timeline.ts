// Grouping of the event log for the timeline: a failover (a host's lease
// expired and its VMs were fenced and placed elsewhere, or an FT primary
// was lost and its secondary took over) and what followed from it become
// one group, with each step's time from the start.

import type { VigilEvent } from "./types";

export interface Group {
  kind: "failover";
  title: string;
  start: number; // ms since the epoch
  steps: VigilEvent[];
  host: string;
  vms: string[];
}

export type Row = { event: VigilEvent } | { group: Group };

// How long after its start a failover still gathers steps.
const window = 60_000;

const starters = new Set(["host.lease-expired", "host.down", "ft.primary-lost"]);
// Steps that make a failover of what would otherwise be a host's lease
// lapsing (a join, a blip the isolation timeout rode out).
const actions = new Set(["vm.fenced", "vm.restart-placed", "ft.takeover", "ft.resumed"]);
// Steps of the failed host itself.
const hostSteps = new Set(["host.isolated", "host.self-fence", "host.watchdog-reset"]);
// Steps of a VM the failover moved.
const vmSteps = new Set(["vm.killed", "vm.placed", "vm.starting", "vm.running", "vm.restarted", "vm.unplaceable", "ft.takeover",
  "ft.resumed", "alarm.ft-unprotected", "ft.secondary-chosen", "alarm.no-capacity"]);

// group turns the events (oldest first) into timeline rows, newest first.
export function group(events: VigilEvent[]): Row[] {
  const rows: (Row & { t: number })[] = [];
  const groups: Group[] = [];
  const open: Group[] = [];
  // The newest open group that pred accepts.
  const find = (pred: (g: Group) => unknown) => {
    for (let i = open.length - 1; i >= 0; i--) if (pred(open[i])) return open[i];
    return undefined;
  };
  for (const e of events) {
    const t = Date.parse(e.time);
    for (let i = open.length - 1; i >= 0; i--) if (t - open[i].start > window) open.splice(i, 1);
    const add = (g: Group) => {
      g.steps.push(e);
      if (e.vm && !g.vms.includes(e.vm)) g.vms.push(e.vm);
    };
    let g: Group | undefined;
    if (e.type === "host.up") {
      // The host is back: its failover, if any, is over.
      for (let i = open.length - 1; i >= 0; i--) if (open[i].host === e.host) open.splice(i, 1);
    }
    if (starters.has(e.type)) {
      // One failover goes on (the lease expired, then the host was found
      // down); a lapse that moved nothing is over, and a new one begins.
      g = find((g) => ((e.host && g.host === e.host) || (e.vm && g.vms.includes(e.vm))) && g.steps.some((s) => actions.has(s.type)));
      if (!g) {
        g = { kind: "failover", title: "", start: t, steps: [], host: e.type === "ft.primary-lost" ? "" : e.host, vms: [] };
        open.push(g);
        groups.push(g);
      }
      add(g);
      continue;
    }
    if (e.type === "vm.fenced") g = find((g) => g.host && g.host === e.host);
    else if (hostSteps.has(e.type)) g = find((g) => g.host && g.host === e.host);
    else if (vmSteps.has(e.type) || e.type === "vm.restart-placed") g = find((g) => e.vm && g.vms.includes(e.vm));
    if (g) {
      add(g);
      continue;
    }
    rows.push({ event: e, t });
  }
  // A group with no fence, restart or takeover was no failover: its
  // events stand alone.
  for (const g of groups) {
    if (g.steps.some((s) => actions.has(s.type))) {
      g.title = titleOf(g);
      rows.push({ group: g, t: g.start });
    } else {
      for (const s of g.steps) rows.push({ event: s, t: Date.parse(s.time) });
    }
  }
  rows.sort((a, b) => b.t - a.t);
  return rows.map((r) => ("group" in r ? { group: r.group } : { event: r.event }));
}

function titleOf(g: Group): string {
  const first = g.steps[0];
  const lastRun = [...g.steps].reverse().find((s) => s.type === "vm.running" || s.type === "ft.resumed");
  const what = first.type === "ft.primary-lost" ? `FT failover of ${first.vm} from ${first.host || "its primary"}` : `Failover: host ${g.host} lost`;
  const took = (Date.parse(g.steps[g.steps.length - 1].time) - g.start) / 1000;
  const vms = g.vms.length ? ` — ${g.vms.join(", ")}` : "";
  const end = lastRun ? `, running on ${lastRun.host}` : "";
  return `${what}${vms}${end} (${g.steps.length} steps, ${took.toFixed(1)} s)`;
}
