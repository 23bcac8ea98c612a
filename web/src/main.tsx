import { render } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { call, setToken, takeTokenFromFragment, token, watch, type StreamStatus } from "./api";
import { group, type Row } from "./timeline";
import type { AlarmStatus, Host, Migration, VigilEvent, VM, WatchState } from "./types";
import { AckButton, ApplyButton, HostActions, VMActions, canOperate, type Role } from "./actions";
import { ConsoleLog, VMCharts } from "./charts";
import "./style.css";

// The event log the UI keeps in memory (newest last).
const keepEvents = 2000;

function App() {
  const [authed, setAuthed] = useState(() => {
    takeTokenFromFragment();
    return token() !== null;
  });
  if (!authed) return <Login onDone={() => setAuthed(true)} />;
  return <Console onLogout={() => { setToken(null); setAuthed(false); }} />;
}

function Login({ onDone }: { onDone: () => void }) {
  const [value, setValue] = useState("");
  const [err, setErr] = useState("");
  const submit = async (e: Event) => {
    e.preventDefault();
    setToken(value);
    try {
      await call("GET", "/api/v1/cluster");
      onDone();
    } catch (x) {
      setToken(null);
      setErr(String((x as Error).message));
    }
  };
  return (
    <main class="login">
      <h1>Vigil</h1>
      <form onSubmit={submit}>
        <label for="token">API token</label>
        <input id="token" type="password" autocomplete="off" value={value} onInput={(e) => setValue((e.target as HTMLInputElement).value)} required />
        <button type="submit">Log in</button>
        {err && <p role="alert" class="error">{err}</p>}
        <p class="hint">Create one with <code>vigil token create NAME --role viewer|operator|admin</code>.</p>
      </form>
    </main>
  );
}

function useRoute(): string {
  const [h, setH] = useState(location.hash || "#/");
  useEffect(() => {
    const on = () => setH(location.hash || "#/");
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return h;
}

function Console({ onLogout }: { onLogout: () => void }) {
  const [state, setState] = useState<WatchState | null>(null);
  const [events, setEvents] = useState<VigilEvent[]>([]);
  const [status, setStatus] = useState<StreamStatus>("connecting");
  const [me, setMe] = useState<{ name: string; role: Role } | null>(null);
  const route = useRoute();
  useEffect(() => {
    call<{ name: string; role: Role }>("GET", "/api/v1/whoami").then(setMe).catch(() => {});
    // The log so far, then the stream's new events after it.
    call<VigilEvent[]>("GET", "/api/v1/events?limit=500").then((evs) => setEvents((cur) => merge(evs, cur))).catch(() => {});
    return watch({
      state: setState,
      event: (e) => setEvents((cur) => merge(cur, [e])),
      status: (s) => {
        setStatus(s);
        if (s === "unauthorized") onLogout();
      },
    });
  }, []);
  let view;
  const role = me?.role ?? null;
  const m = /^#\/vms\/(.+)$/.exec(route);
  if (m) view = <VMView name={decodeURIComponent(m[1])} state={state} events={events} role={role} />;
  else if (route.startsWith("#/events")) view = <Events events={events} />;
  else if (route.startsWith("#/alarms")) view = <Alarms alarms={state?.alarms ?? []} role={role} />;
  else if (route.startsWith("#/drs")) view = <DRS revision={state?.revision ?? 0} role={role} />;
  else if (route.startsWith("#/rules")) view = <Rules revision={state?.revision ?? 0} />;
  else view = <Overview state={state} events={events} role={role} />;
  const nav = (href: string, label: string) => (
    <a href={href} aria-current={(href === "#/" ? route === "#/" || route === "" : route.startsWith(href)) ? "page" : undefined}>{label}</a>
  );
  return (
    <>
      <header>
        <h1 class="brand"><a href="#/">Vigil</a></h1>
        <nav aria-label="Views">
          {nav("#/", "Overview")}
          {nav("#/events", "Events")}
          {nav("#/alarms", "Alarms")}
          {nav("#/drs", "DRS")}
          {nav("#/rules", "Rules")}
        </nav>
        <span class={"stream " + status} role="status" aria-live="polite">{status === "live" ? "live" : status}</span>
        {me && <span class="me">{me.name} ({me.role})</span>}
        <button type="button" onClick={onLogout}>Log out</button>
      </header>
      <main>{state ? view : <p>Loading the cluster…</p>}</main>
    </>
  );
}

// merge appends events not already held (the stream may repeat what the
// first read returned), keeping the newest keepEvents.
function merge(a: VigilEvent[], b: VigilEvent[]): VigilEvent[] {
  const key = (e: VigilEvent) => e.time + "|" + e.type + "|" + e.vm + "|" + e.host + "|" + e.message;
  const seen = new Set(a.map(key));
  const out = a.concat(b.filter((e) => !seen.has(key(e))));
  out.sort((x, y) => Date.parse(x.time) - Date.parse(y.time));
  return out.slice(-keepEvents);
}

const gib = (b: number) => (b / 2 ** 30).toFixed(1) + " GiB";

function Bar({ value, max, label }: { value: number; max: number; label: string }) {
  const pct = max > 0 ? Math.min(100, (100 * value) / max) : 0;
  return (
    <div class="bar" role="meter" aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(pct)} aria-label={label}>
      <span style={{ width: pct + "%" }} />
      <em>{label}</em>
    </div>
  );
}

function protection(v: VM): string {
  const parts: string[] = [];
  if (v.ha) parts.push("HA " + (v.priority || ""));
  if (v.ft) parts.push("FT " + v.ft.state + (v.ft.secondaryHost ? " → " + v.ft.secondaryHost : ""));
  for (const d of v.disks ?? []) if (d.replica) parts.push(`replica ${d.replica.state} on ${d.replica.host || "none"}`);
  return parts.join(", ") || "none";
}

function Overview({ state, events, role }: { state: WatchState | null; events: VigilEvent[]; role: Role | null }) {
  if (!state) return null;
  const running = state.migrations.filter((m) => !["completed", "failed", "cancelled"].includes(m.phase));
  const firing = state.alarms.filter((a) => a.state === "firing");
  const byState = new Map<string, number>();
  for (const v of state.vms) byState.set(v.state, (byState.get(v.state) ?? 0) + 1);
  return (
    <>
      <section aria-labelledby="hosts-h">
        <h2 id="hosts-h">Hosts</h2>
        <div class="scroll" tabIndex={0} role="region" aria-label="Hosts table">
          <table>
            <thead><tr><th scope="col">Host</th><th scope="col">State</th><th scope="col">Fencing</th><th scope="col">CPU</th><th scope="col">Memory</th><th scope="col">VMs</th>{canOperate(role) && <th scope="col">Actions</th>}</tr></thead>
            <tbody>
              {state.hosts.map((h: Host) => (
                <tr key={h.name}>
                  <th scope="row">{h.name}</th>
                  <td><span class={"pill " + h.state}>{h.state}</span></td>
                  <td>{h.fencing.summary}{h.fencing.warning && <span class="warn" title={h.fencing.warning}> ⚠</span>}</td>
                  <td><Bar value={h.used.cpus} max={h.capacity.cpus} label={`${h.used.cpus}/${h.capacity.cpus} vCPU`} /></td>
                  <td><Bar value={h.used.memory} max={h.capacity.memory} label={`${gib(h.used.memory)}/${gib(h.capacity.memory)}`} /></td>
                  <td>{h.vms.length}</td>
                  {canOperate(role) && <td><HostActions host={h} /></td>}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section aria-labelledby="vms-h">
        <h2 id="vms-h">VMs <small>{[...byState].map(([s, n]) => `${n} ${s}`).join(", ")}</small></h2>
        <div class="scroll" tabIndex={0} role="region" aria-label="VMs table">
          <table>
            <thead><tr><th scope="col">VM</th><th scope="col">State</th><th scope="col">Host</th><th scope="col">IP</th><th scope="col">Protection</th></tr></thead>
            <tbody>
              {state.vms.map((v) => (
                <tr key={v.name}>
                  <th scope="row"><a href={"#/vms/" + encodeURIComponent(v.name)}>{v.name}</a></th>
                  <td><span class={"pill " + v.state}>{v.state}</span></td>
                  <td>{v.host || "–"}</td>
                  <td>{v.ip || "–"}</td>
                  <td>{protection(v)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section aria-labelledby="mig-h">
        <h2 id="mig-h">Migrations in progress</h2>
        {running.length === 0 ? <p>None.</p> : <Migrations list={running} />}
      </section>
      <section aria-labelledby="alarms-h">
        <h2 id="alarms-h">Alarms firing</h2>
        {firing.length === 0 ? <p>None.</p> : <ul>{firing.map((a) => <li key={a.alarm}><a href="#/alarms">{a.alarm}</a> ({a.severity}): {a.instances.filter((i) => i.state === "firing").map((i) => i.target).join(", ")}</li>)}</ul>}
      </section>
      <section aria-labelledby="recent-h">
        <h2 id="recent-h">Recent events</h2>
        <Timeline rows={group(events).slice(0, 15)} />
      </section>
    </>
  );
}

function Migrations({ list }: { list: Migration[] }) {
  return (
    <ul class="migrations">
      {list.map((m) => {
        const p = m.progress;
        const total = p.total + (p.diskTotal ?? 0);
        const done = p.transferred + (p.diskDone ?? 0);
        return (
          <li key={m.id}>
            <a href={"#/vms/" + encodeURIComponent(m.vm)}>{m.vm}</a> {m.source} → {m.target}: {m.phase}{m.step ? ` (${m.step})` : ""}
            <Bar value={done} max={total} label={total > 0 ? `${Math.round((100 * done) / total)}%` : m.phase} />
          </li>
        );
      })}
    </ul>
  );
}

function Timeline({ rows }: { rows: Row[] }) {
  if (rows.length === 0) return <p>No events.</p>;
  const line = (e: VigilEvent, t0?: number) => (
    <>
      <time dateTime={e.time}>{t0 === undefined ? new Date(e.time).toLocaleTimeString() : `+${((Date.parse(e.time) - t0) / 1000).toFixed(2)} s`}</time>
      <code>{e.type}</code> <span class="who">{[e.host, e.vm].filter(Boolean).join(" / ")}</span> {e.message}
    </>
  );
  return (
    <ol class="timeline">
      {rows.map((r, i) =>
        "group" in r ? (
          <li key={"g" + i} class="group">
            <details>
              <summary><time dateTime={new Date(r.group.start).toISOString()}>{new Date(r.group.start).toLocaleTimeString()}</time> <strong>{r.group.title}</strong></summary>
              <ol>{r.group.steps.map((s, j) => <li key={j}>{line(s, r.group.start)}</li>)}</ol>
            </details>
          </li>
        ) : (
          <li key={"e" + i}>{line(r.event)}</li>
        ),
      )}
    </ol>
  );
}

function Events({ events }: { events: VigilEvent[] }) {
  const [vm, setVM] = useState("");
  const [host, setHost] = useState("");
  const [typ, setTyp] = useState("");
  const rows = useMemo(
    () => group(events.filter((e) => (!vm || e.vm === vm) && (!host || e.host === host) && (!typ || e.type === typ || e.type.startsWith(typ + ".")))),
    [events, vm, host, typ],
  );
  return (
    <section aria-labelledby="ev-h">
      <h2 id="ev-h">Event timeline</h2>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>VM <input value={vm} onInput={(e) => setVM((e.target as HTMLInputElement).value)} /></label>
        <label>Host <input value={host} onInput={(e) => setHost((e.target as HTMLInputElement).value)} /></label>
        <label>Type <input value={typ} placeholder="e.g. ft or vm.running" onInput={(e) => setTyp((e.target as HTMLInputElement).value)} /></label>
      </form>
      <Timeline rows={rows} />
    </section>
  );
}

function VMView({ name, state, events, role }: { name: string; state: WatchState | null; events: VigilEvent[]; role: Role | null }) {
  const v = state?.vms.find((x) => x.name === name);
  const mig = state?.migrations.find((m) => m.vm === name && !["completed", "failed", "cancelled"].includes(m.phase));
  const rows = useMemo(() => group(events.filter((e) => e.vm === name)), [events, name]);
  if (!v) return <p>No VM named {name}.</p>;
  return (
    <>
      <h2>{v.name} <span class={"pill " + v.state}>{v.state}</span></h2>
      {canOperate(role) && <VMActions vm={v} />}
      <dl class="facts">
        <dt>Host</dt><dd>{v.host || "–"}</dd>
        <dt>IP</dt><dd>{v.ip || "–"}</dd>
        <dt>Size</dt><dd>{v.cpus} vCPU, {v.memoryText}</dd>
        <dt>HA</dt><dd>{v.ha ? `on, priority ${v.priority}` : "off"}</dd>
        {v.ft && (<><dt>FT</dt><dd>{v.ft.state}{v.ft.secondaryHost ? `, secondary on ${v.ft.secondaryHost}` : ""} (generation {v.ft.generation}, checkpoint {v.ft.epoch}, pause {v.ft.lastCheckpointMs.toFixed(0)} ms){v.ft.seedPercent ? `, seeding ${v.ft.seedPercent.toFixed(0)}%` : ""}{v.ft.message ? ` — ${v.ft.message}` : ""}</dd></>)}
        {v.message && (<><dt>Status</dt><dd>{v.message}</dd></>)}
      </dl>
      {mig && (<section aria-labelledby="vm-mig-h"><h3 id="vm-mig-h">Migration</h3><Migrations list={[mig]} /></section>)}
      <section aria-labelledby="disks-h">
        <h3 id="disks-h">Disks</h3>
        <div class="scroll" tabIndex={0} role="region" aria-label="Disks table">
          <table>
            <thead><tr><th scope="col">Disk</th><th scope="col">Datastore</th><th scope="col">Replica</th></tr></thead>
            <tbody>
              {(v.disks ?? []).map((d) => (
                <tr key={d.name}>
                  <th scope="row">{d.name}</th>
                  <td>{d.datastore}</td>
                  <td>{d.replica ? <>{d.replica.state}/{d.replica.replication} on {d.replica.host || "none"}{d.replica.replication.startsWith("Sync") && <Bar value={d.replica.syncPercent} max={100} label={`${d.replica.syncPercent.toFixed(0)}%`} />}</> : "–"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <VMCharts name={v.name} />
      <section aria-labelledby="vm-ev-h">
        <h3 id="vm-ev-h">Events</h3>
        <Timeline rows={rows} />
      </section>
      {canOperate(role) && <ConsoleLog name={v.name} />}
    </>
  );
}

function Alarms({ alarms, role }: { alarms: AlarmStatus[]; role: Role | null }) {
  if (alarms.length === 0) return <p>No alarms are defined (<code>vigil alarm create</code>).</p>;
  return (
    <section aria-labelledby="al-h">
      <h2 id="al-h">Alarms</h2>
      <div class="scroll" tabIndex={0} role="region" aria-label="Alarms table">
        <table>
          <thead><tr><th scope="col">Alarm</th><th scope="col">Severity</th><th scope="col">Condition</th><th scope="col">State</th><th scope="col">Instances</th></tr></thead>
          <tbody>
            {alarms.map((a) => (
              <tr key={a.alarm}>
                <th scope="row">{a.alarm}</th>
                <td>{a.severity}</td>
                <td>{a.metric} {a.condition}</td>
                <td><span class={"pill " + a.state}>{a.state}</span></td>
                <td>
                  {a.instances.length === 0 ? "–" : (
                    <ul class="plain">
                      {a.instances.map((i) => (
                        <li key={i.target}>
                          {i.target}: {i.state}{i.ackedBy ? ` (acknowledged by ${i.ackedBy})` : ""}{" "}
                          {canOperate(role) && i.state === "firing" && !i.ackedBy && <AckButton alarm={a.alarm} target={i.target} />}
                        </li>
                      ))}
                    </ul>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

interface DRSMove { id: string; vm: string; from: string; to: string; gain: number; why: string; at: string; by?: string }

// DRS shows the recommendations (read again whenever the cluster changes)
// and the moves made.
function DRS({ revision, role }: { revision: number; role: Role | null }) {
  const [recs, setRecs] = useState<DRSMove[] | null>(null);
  const [hist, setHist] = useState<DRSMove[]>([]);
  const [err, setErr] = useState("");
  useEffect(() => {
    call<DRSMove[]>("GET", "/api/v1/drs/recommendations").then(setRecs).catch((e) => setErr((e as Error).message));
    call<DRSMove[]>("GET", "/api/v1/drs/history").then(setHist).catch(() => {});
  }, [revision]);
  return (
    <>
      <section aria-labelledby="drs-h">
        <h2 id="drs-h">DRS recommendations</h2>
        {err && <p class="error">{err}</p>}
        {recs && recs.length === 0 && <p>None: the hosts' load is balanced, or DRS is off.</p>}
        {recs && recs.length > 0 && (
          <ul class="plain">
            {recs.map((r) => (
              <li key={r.id}>
                Move <a href={"#/vms/" + encodeURIComponent(r.vm)}>{r.vm}</a> {r.from} → {r.to}: {r.why} (gain {r.gain.toFixed(3)}){" "}
                {canOperate(role) && <ApplyButton id={r.id} what={`move ${r.vm} to ${r.to}`} />}
              </li>
            ))}
          </ul>
        )}
      </section>
      <section aria-labelledby="drsh-h">
        <h2 id="drsh-h">Moves made</h2>
        {hist.length === 0 ? <p>None.</p> : (
          <ul class="plain">{hist.map((r) => <li key={r.id + r.at}>{new Date(r.at).toLocaleString()}: {r.vm} {r.from} → {r.to} by {r.by || "drs"}</li>)}</ul>
        )}
      </section>
    </>
  );
}

interface Rule { name: string; kind: string; strength: string; vms: string[] }

function Rules({ revision }: { revision: number }) {
  const [rules, setRules] = useState<Rule[] | null>(null);
  useEffect(() => {
    call<Rule[]>("GET", "/api/v1/rules").then(setRules).catch(() => setRules([]));
  }, [revision]);
  return (
    <section aria-labelledby="rules-h">
      <h2 id="rules-h">Placement rules</h2>
      {rules && rules.length === 0 && <p>No rules (<code>vigil rule create</code>).</p>}
      {rules && rules.length > 0 && (
        <div class="scroll" tabIndex={0} role="region" aria-label="Rules table">
          <table>
            <thead><tr><th scope="col">Rule</th><th scope="col">Kind</th><th scope="col">Strength</th><th scope="col">VMs</th></tr></thead>
            <tbody>{rules.map((r) => <tr key={r.name}><th scope="row">{r.name}</th><td>{r.kind}</td><td>{r.strength}</td><td>{r.vms.join(", ")}</td></tr>)}</tbody>
          </table>
        </div>
      )}
    </section>
  );
}

render(<App />, document.getElementById("app")!);
