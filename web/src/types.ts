// The API's JSON, as internal/apis/v1 defines it (only what the UI reads).

export interface Resources { cpus: number; memory: number }

export interface Watchdog { device: string; timeoutMS?: number; armed: boolean; usable: boolean; problem?: string }

export interface Host {
  name: string;
  state: string; // up, down, maintenance
  alive: boolean;
  maintenance: boolean;
  capacity: Resources;
  used: Resources;
  vms: string[];
  qemu: string;
  accel: string;
  dirtyTracking?: string;
  datastores: string[] | null;
  mgmtIP?: string;
  startedAt: string;
  fencing: { watchdog?: Watchdog; summary: string; warning?: string };
}

export interface Replica {
  host: string;
  state: string;
  replication: string;
  syncPercent: number;
  reason?: string;
  primary: string;
  generation: number;
  blocked?: string;
}

export interface Disk { name: string; datastore: string; size?: number; replica?: Replica }

export interface FT {
  state: string;
  secondaryHost?: string;
  generation: number;
  epoch: number;
  lastCheckpointMs: number;
  pauseP99Ms?: number;
  epochsPerSecond?: number;
  runPercent?: number;
  seedPercent?: number;
  message?: string;
}

export interface NIC { network: string; ip: string; prefix: number; mac: string }

export interface VM {
  name: string;
  state: string;
  host: string;
  ip: string;
  power: string;
  epoch: number;
  cpus: number;
  memory: number;
  memoryText: string;
  accel?: string;
  ha: boolean;
  priority?: string;
  reason?: string;
  message?: string;
  nics?: NIC[];
  createdAt: string;
  startedAt?: string;
  disks?: Disk[];
  ft?: FT;
}

export interface MigrationProgress { transferred: number; remaining: number; total: number; mbps: number; diskDone?: number; diskTotal?: number }

export interface Migration {
  id: string;
  vm: string;
  phase: string;
  source: string;
  target: string;
  reason: string;
  step?: string;
  progress: MigrationProgress;
  error?: string;
  startedAt?: string;
  finishedAt?: string;
}

export interface AlarmInstance { alarm: string; state: string; target: string; host?: string; value: number; firedAt?: string; ackedBy?: string }

export interface AlarmStatus { alarm: string; severity: string; metric: string; state: string; condition: string; instances: AlarmInstance[] }

export interface WatchState { revision: number; vms: VM[]; hosts: Host[]; migrations: Migration[]; alarms: AlarmStatus[] }

export interface VigilEvent { time: string; type: string; vm: string; host: string; message: string; actor?: string }
