// A VM's CPU, memory, disk and network over the last minutes, from the
// API's readings of the agents' metrics (GET /api/v1/stats), read every 5 s
// while the VM's page is open.

import { useEffect, useState } from "preact/hooks";
import { call, text } from "./api";

interface VMStats {
  name: string; cpus: number; cpuSeconds: number; rssBytes: number; guestUsedBytes: number;
  diskReadBytes: number; diskWriteBytes: number; netReceiveBytes: number; netTransmitBytes: number;
}
interface Stats { time: string; vms: VMStats[] }

interface Point { t: number; cpu: number; mem: number; disk: number; net: number }

const every = 5000;
const keep = 72; // six minutes

export function VMCharts({ name }: { name: string }) {
  const [points, setPoints] = useState<Point[]>([]);
  const [err, setErr] = useState("");
  useEffect(() => {
    let prev: { t: number; s: VMStats } | null = null;
    let stop = false;
    const read = async () => {
      try {
        const st = await call<Stats>("GET", "/api/v1/stats");
        const s = st.vms.find((v) => v.name === name);
        const t = Date.parse(st.time);
        if (s && prev && t > prev.t) {
          const dt = (t - prev.t) / 1000;
          const p: Point = {
            t,
            cpu: Math.max(0, (s.cpuSeconds - prev.s.cpuSeconds) / dt / Math.max(1, s.cpus)) * 100,
            mem: s.guestUsedBytes || s.rssBytes,
            disk: Math.max(0, (s.diskReadBytes + s.diskWriteBytes - prev.s.diskReadBytes - prev.s.diskWriteBytes) / dt),
            net: Math.max(0, (s.netReceiveBytes + s.netTransmitBytes - prev.s.netReceiveBytes - prev.s.netTransmitBytes) / dt),
          };
          setPoints((cur) => cur.concat(p).slice(-keep));
        }
        if (s) prev = { t, s };
        setErr("");
      } catch (e) {
        setErr((e as Error).message);
      }
      if (!stop) timer = setTimeout(read, every);
    };
    let timer = setTimeout(read, 0);
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [name]);
  const mib = (b: number) => (b / 2 ** 20).toFixed(1) + " MiB";
  const rate = (b: number) => (b < 2 ** 20 ? (b / 1024).toFixed(1) + " KiB/s" : (b / 2 ** 20).toFixed(1) + " MiB/s");
  return (
    <section aria-labelledby="charts-h">
      <h3 id="charts-h">Load <small>(every {every / 1000} s)</small></h3>
      {err && <p class="error">{err}</p>}
      {points.length < 2 ? <p>Collecting readings…</p> : (
        <div class="charts">
          <Spark label="CPU" values={points.map((p) => p.cpu)} fmt={(v) => v.toFixed(0) + " %"} />
          <Spark label="Memory" values={points.map((p) => p.mem)} fmt={mib} />
          <Spark label="Disk I/O" values={points.map((p) => p.disk)} fmt={rate} />
          <Spark label="Network" values={points.map((p) => p.net)} fmt={rate} />
        </div>
      )}
    </section>
  );
}

function Spark({ label, values, fmt }: { label: string; values: number[]; fmt: (v: number) => string }) {
  const w = 220, h = 50;
  const max = Math.max(...values, 1e-9);
  const pts = values.map((v, i) => `${((i / (values.length - 1)) * w).toFixed(1)},${(h - (v / max) * (h - 2) - 1).toFixed(1)}`).join(" ");
  const last = values[values.length - 1];
  return (
    <figure class="spark">
      <figcaption>{label}: <strong>{fmt(last)}</strong> <small>(max {fmt(max)})</small></figcaption>
      <svg viewBox={`0 0 ${w} ${h}`} width={w} height={h} role="img" aria-label={`${label} over the last ${values.length} readings, now ${fmt(last)}`}>
        <polyline points={pts} fill="none" stroke="#0b5cad" stroke-width="1.5" />
      </svg>
    </figure>
  );
}

// ConsoleLog shows the tail of the VM's serial console (operators: it may
// show logins), read when asked.
export function ConsoleLog({ name }: { name: string }) {
  const [log, setLog] = useState<string | null>(null);
  const [err, setErr] = useState("");
  const read = () =>
    text("/api/v1/vms/" + encodeURIComponent(name) + "/console?bytes=16384").then(setLog).catch((e) => setErr((e as Error).message));
  return (
    <section aria-labelledby="console-h">
      <h3 id="console-h">Console log</h3>
      <button type="button" onClick={read}>{log === null ? "Show" : "Read again"}</button>
      {err && <p class="error">{err}</p>}
      {log !== null && <pre class="console" tabIndex={0}>{log}</pre>}
    </section>
  );
}
