// Actions, each behind a confirmation, shown only to the roles the API
// allows them (the API refuses the others anyway).

import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { call } from "./api";
import type { Host, VM } from "./types";

export type Role = "viewer" | "operator" | "admin";

export const canOperate = (r: Role | null) => r === "operator" || r === "admin";

interface MigrationTarget { host: string; feasible: boolean; reason?: string }

// Confirm is a modal dialog: the action runs only on its confirm button;
// Escape or Cancel close it. Errors show inside it.
function Confirm({ title, children, confirm, onClose, run, disabled }: {
  title: string; children?: ComponentChildren; confirm: string; onClose: () => void; run: () => Promise<unknown>; disabled?: boolean;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const [err, setErr] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  const go = async () => {
    setBusy(true);
    setErr("");
    try {
      await run();
      onClose();
    } catch (e) {
      setErr((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <dialog ref={ref} onClose={onClose} aria-labelledby="dlg-title">
      <h2 id="dlg-title">{title}</h2>
      {children}
      {err && <p role="alert" class="error">{err}</p>}
      <div class="buttons">
        <button type="button" onClick={() => ref.current?.close()}>Cancel</button>
        <button type="button" class="primary" onClick={go} disabled={busy || disabled}>{busy ? "…" : confirm}</button>
      </div>
    </dialog>
  );
}

type Dialog = null | "start" | "stop" | "delete" | "migrate" | "test-failover" | "ft-test-failover" | "ft-test-restart-secondary" | "resize";

const vmPath = (name: string) => "/api/v1/vms/" + encodeURIComponent(name);

export function VMActions({ vm }: { vm: VM }) {
  const [open, setOpen] = useState<Dialog>(null);
  const close = () => setOpen(null);
  const simple = (what: string, method: string, path: string, text: string) =>
    open === what && <Confirm title={text} confirm={text} onClose={close} run={() => call(method, path)} />;
  const running = vm.state === "running";
  return (
    <div class="actions" role="group" aria-label={"Actions on " + vm.name}>
      {vm.power !== "running" && <button type="button" onClick={() => setOpen("start")}>Start</button>}
      {vm.power === "running" && <button type="button" onClick={() => setOpen("stop")}>Stop</button>}
      {running && <button type="button" onClick={() => setOpen("migrate")}>Migrate…</button>}
      {running && <button type="button" onClick={() => setOpen("resize")}>Resize…</button>}
      {running && vm.ha && <button type="button" onClick={() => setOpen("test-failover")}>HA test failover</button>}
      {vm.ft && <button type="button" onClick={() => setOpen("ft-test-failover")}>FT test failover</button>}
      {vm.ft && <button type="button" onClick={() => setOpen("ft-test-restart-secondary")}>FT test restart secondary</button>}
      <button type="button" class="danger" onClick={() => setOpen("delete")}>Delete</button>
      {simple("start", "POST", vmPath(vm.name) + "/start", `Start ${vm.name}`)}
      {simple("stop", "POST", vmPath(vm.name) + "/stop", `Stop ${vm.name}`)}
      {simple("test-failover", "POST", vmPath(vm.name) + "/test-failover", `Kill ${vm.name}'s QEMU to test HA`)}
      {simple("ft-test-failover", "POST", vmPath(vm.name) + "/ft/test-failover", `Fail ${vm.name} over to its FT secondary`)}
      {simple("ft-test-restart-secondary", "POST", vmPath(vm.name) + "/ft/test-restart-secondary", `Restart ${vm.name}'s FT secondary`)}
      {open === "delete" && (
        <Confirm title={`Delete ${vm.name}`} confirm="Delete" onClose={close} run={() => call("DELETE", vmPath(vm.name))}>
          <p>The VM is stopped and its disks are deleted.</p>
        </Confirm>
      )}
      {open === "migrate" && <MigrateDialog vm={vm} onClose={close} />}
      {open === "resize" && <ResizeDialog vm={vm} onClose={close} />}
    </div>
  );
}

function MigrateDialog({ vm, onClose }: { vm: VM; onClose: () => void }) {
  const [targets, setTargets] = useState<MigrationTarget[] | null>(null);
  const [to, setTo] = useState("");
  const [err, setErr] = useState("");
  useEffect(() => {
    call<MigrationTarget[]>("GET", vmPath(vm.name) + "/migration/targets")
      .then((ts) => {
        setTargets(ts);
        const first = ts.find((t) => t.feasible);
        if (first) setTo(first.host);
      })
      .catch((e) => setErr((e as Error).message));
  }, [vm.name]);
  return (
    <Confirm title={`Live-migrate ${vm.name} from ${vm.host}`} confirm="Migrate" onClose={onClose} disabled={!to}
      run={() => call("POST", vmPath(vm.name) + "/migrate", { to })}>
      {err && <p class="error">{err}</p>}
      {!targets ? <p>Reading the hosts…</p> : (
        <fieldset>
          <legend>Destination</legend>
          {targets.map((t) => (
            <div key={t.host}>
              <label>
                <input type="radio" name="target" value={t.host} checked={to === t.host} disabled={!t.feasible} onChange={() => setTo(t.host)} />
                {t.host}
              </label>
              {!t.feasible && <span class="reason"> — {t.reason}</span>}
            </div>
          ))}
        </fieldset>
      )}
    </Confirm>
  );
}

function ResizeDialog({ vm, onClose }: { vm: VM; onClose: () => void }) {
  const [cpus, setCpus] = useState(vm.cpus);
  const [mib, setMib] = useState(Math.round(vm.memory / 2 ** 20));
  return (
    <Confirm title={`Resize ${vm.name} live`} confirm="Resize" onClose={onClose}
      run={() => call("POST", vmPath(vm.name) + "/resize", { cpus, memory: mib * 2 ** 20 })}>
      <label>vCPUs <input type="number" min={1} value={cpus} onInput={(e) => setCpus(Number((e.target as HTMLInputElement).value))} /></label>
      <label>Memory (MiB) <input type="number" min={64} step={64} value={mib} onInput={(e) => setMib(Number((e.target as HTMLInputElement).value))} /></label>
    </Confirm>
  );
}

export function HostActions({ host }: { host: Host }) {
  const [open, setOpen] = useState(false);
  const enter = !host.maintenance;
  const path = "/api/v1/hosts/" + encodeURIComponent(host.name) + "/maintenance";
  return (
    <>
      <button type="button" onClick={() => setOpen(true)}>{enter ? "Enter maintenance" : "Exit maintenance"}</button>
      {open && (
        <Confirm title={`${enter ? "Enter" : "Exit"} maintenance on ${host.name}`} confirm={enter ? "Enter maintenance" : "Exit maintenance"}
          onClose={() => setOpen(false)} run={() => call(enter ? "POST" : "DELETE", path)}>
          {enter && <p>Its {host.vms.length} VM(s) are live-migrated away first; the host's VM count shows the evacuation's progress.</p>}
        </Confirm>
      )}
    </>
  );
}

export function AckButton({ alarm, target }: { alarm: string; target: string }) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <button type="button" onClick={() => setOpen(true)}>Acknowledge</button>
      {open && (
        <Confirm title={`Acknowledge ${alarm} on ${target}`} confirm="Acknowledge" onClose={() => setOpen(false)}
          run={() => call("POST", "/api/v1/alarms/" + encodeURIComponent(alarm) + "/ack", { target })} />
      )}
    </>
  );
}

export function ApplyButton({ id, what }: { id: string; what: string }) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <button type="button" onClick={() => setOpen(true)}>Apply</button>
      {open && (
        <Confirm title={`Apply: ${what}`} confirm="Apply" onClose={() => setOpen(false)}
          run={() => call("POST", "/api/v1/drs/recommendations/" + encodeURIComponent(id) + "/apply")} />
      )}
    </>
  );
}
