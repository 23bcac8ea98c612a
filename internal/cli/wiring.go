package cli

import (
	"context"
	"log/slog"
	"sync"

	"github.com/vigilha/vigil/internal/agent"
	"github.com/vigilha/vigil/internal/controller"
	"github.com/vigilha/vigil/internal/controller/ha"
	"github.com/vigilha/vigil/internal/controller/lifecycle"
	"github.com/vigilha/vigil/internal/controller/migration"
	"github.com/vigilha/vigil/internal/storage/shared"
	"github.com/vigilha/vigil/internal/store"
)

// agentArbiter adapts a shared datastore's client to the agent's
// datastore-heartbeat interface.
type agentArbiter struct{ c *shared.Client }

func (a agentArbiter) Heartbeat(ctx context.Context, host string, lease int64, vms []agent.ArbiterVM) (map[string]int64, error) {
	hv := make([]shared.HeartbeatVM, len(vms))
	for i, v := range vms {
		hv[i] = shared.HeartbeatVM{Name: v.Name, Epoch: v.Epoch, LeaveRunning: v.LeaveRunning}
	}
	return a.c.Heartbeat(ctx, host, lease, hv)
}

// haArbiter adapts a shared datastore's client to the HA controller.
type haArbiter struct{ c *shared.Client }

func (a haArbiter) Fence(ctx context.Context, host string, vms map[string]int64) error {
	return a.c.Fence(ctx, host, vms)
}

func (a haArbiter) Heartbeats(ctx context.Context) (map[string]ha.Heartbeat, error) {
	hbs, err := a.c.Heartbeats(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]ha.Heartbeat, len(hbs))
	for host, hb := range hbs {
		h := ha.Heartbeat{Age: hb.Age}
		for _, v := range hb.VMs {
			h.VMs = append(h.VMs, ha.HeartbeatVM{Name: v.Name, Epoch: v.Epoch, LeaveRunning: v.LeaveRunning})
		}
		out[host] = h
	}
	return out, nil
}

// controllers builds the leader's reconcilers.
func controllers(st *store.Store, log *slog.Logger) []controller.Reconciler {
	var mu sync.Mutex
	clients := map[string]*shared.Client{}
	arbiter := func(ds *store.Datastore) ha.Arbiter {
		mu.Lock()
		defer mu.Unlock()
		c, ok := clients[ds.Server]
		if !ok {
			c = shared.NewClient(ds.Server)
			clients[ds.Server] = c
		}
		return haArbiter{c}
	}
	return []controller.Reconciler{
		lifecycle.New(st, log),
		ha.New(st, log, ha.DefaultConfig(), arbiter),
		migration.New(st, log, func(ds *store.Datastore) migration.Fencer { return arbiter(ds) }),
	}
}
