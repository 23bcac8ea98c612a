package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/boottime"
)

// leaseKeeper holds the host's etcd lease with its own KeepAliveOnce loop.
// etcd's KeepAlive helper hides when each renewal was sent; self-fencing
// needs exactly that: the lease is surely valid until sendTime + TTL of the
// last acknowledged renewal, measured on this host's clock.
type leaseKeeper struct {
	c        *clientv3.Client
	ttl      time.Duration
	interval time.Duration
	idFile   string
	bootID   string
	log      *slog.Logger

	mu sync.Mutex
	id clientv3.LeaseID
	// lastAckSend is the boottime at which the last acknowledged renewal
	// (or the grant) was sent.
	lastAckSend time.Duration
	// lost is set when etcd said the lease no longer exists.
	lost bool
	// lastLatency is how long the last acknowledged renewal took.
	lastLatency time.Duration
	// onHedge is told when a renewal had to be sent twice.
	onHedge func()
}

func newLeaseKeeper(c *clientv3.Client, ttl, interval time.Duration, idFile, bootID string, log *slog.Logger) *leaseKeeper {
	return &leaseKeeper{c: c, ttl: ttl, interval: interval, idFile: idFile, bootID: bootID, log: log}
}

// load restores the lease and the send time of its last acknowledged
// renewal as the previous agent process recorded them. CLOCK_BOOTTIME is
// system-wide, so the recorded time is still meaningful: the VMs that
// process left running are covered until that time + T - margin, exactly
// as they were before the restart, and no longer.
func (k *leaseKeeper) load() {
	b, err := os.ReadFile(k.idFile)
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[2] != k.bootID {
		return // from another boot of the host: its times mean nothing now
	}
	id, err1 := strconv.ParseInt(f[0], 10, 64)
	sent, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || id == 0 || sent <= 0 || time.Duration(sent) > boottime.Now() {
		return // unreadable, or recorded before this machine booted
	}
	k.set(clientv3.LeaseID(id), time.Duration(sent))
}

// persist records the lease and its last acknowledged send time for a
// restarted agent (see load). A failed write leaves the previous record,
// which only makes a restarted agent fence sooner.
func (k *leaseKeeper) persist() {
	id, sent, _ := k.state()
	_ = atomicfile.Write(k.idFile, []byte(fmt.Sprintf("%d %d %s\n", int64(id), int64(sent), k.bootID)), 0o640)
}

// acquire resumes the lease recorded by a previous agent process if etcd
// still has it (an agent restart must not look like a host failure), or
// grants a new one. The resume is retried with short attempts while the
// old lease can still be alive: right after a restart the first endpoint
// tried may be this host's own etcd member, still starting, or the cluster
// may be electing a leader, and a single long attempt would spend the VMs'
// whole self-fencing deadline waiting on it.
func (k *leaseKeeper) acquire(ctx context.Context) (clientv3.LeaseID, error) {
	if id, recorded, lost := k.state(); id != 0 && !lost {
		// etcd can keep a lease past sendTime + TTL (a new etcd leader
		// extends every lease by TTL; without quorum nothing expires at
		// all), never before; a second TTL covers an election on top.
		// Past that, one attempt still asks: if etcd has the lease, nobody
		// can have failed this host over.
		for attempt := 0; ctx.Err() == nil && (attempt == 0 || boottime.Now() < recorded+2*k.ttl); attempt++ {
			sent := boottime.Now()
			rctx, cancel := context.WithTimeout(ctx, k.interval*2)
			resp, err := k.c.KeepAliveOnce(rctx, id)
			cancel()
			if err == nil && resp.TTL > 0 {
				k.set(id, sent)
				k.persist()
				k.log.Info("resumed host lease", "lease", fmt.Sprintf("%x", int64(id)), "ttl", resp.TTL,
					"since_last_renewal", (sent - recorded).Round(time.Millisecond))
				return id, nil
			}
			if errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0) {
				k.log.Info("the previous host lease expired; granting a new one", "lease", fmt.Sprintf("%x", int64(id)))
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(k.interval / 4):
			}
		}
	}
	sent := boottime.Now()
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	resp, err := k.c.Grant(gctx, int64(k.ttl/time.Second))
	cancel()
	if err != nil {
		return 0, fmt.Errorf("grant host lease: %w", err)
	}
	k.set(resp.ID, sent)
	k.persist()
	k.log.Info("granted host lease", "lease", fmt.Sprintf("%x", int64(resp.ID)), "ttl", k.ttl)
	return resp.ID, nil
}

func (k *leaseKeeper) set(id clientv3.LeaseID, sent time.Duration) {
	k.mu.Lock()
	k.id, k.lastAckSend, k.lost = id, sent, false
	k.mu.Unlock()
}

// state returns the lease, the boottime its validity is counted from, and
// whether etcd has declared it gone.
func (k *leaseKeeper) state() (clientv3.LeaseID, time.Duration, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.id, k.lastAckSend, k.lost
}

// run renews the lease every interval until ctx ends. Each renewal gets at
// most one interval to answer, so a slow etcd shows up as missed renewals
// rather than as one long hidden wait.
func (k *leaseKeeper) run(ctx context.Context) {
	t := time.NewTicker(k.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id, _, lost := k.state()
		if lost {
			continue // the agent re-acquires; nothing to renew
		}
		rctx, cancel := context.WithTimeout(ctx, k.interval)
		sent, resp, err := k.renew(rctx, id)
		cancel()
		switch {
		case err == nil && resp.TTL > 0:
			k.mu.Lock()
			if k.id == id && sent > k.lastAckSend {
				k.lastAckSend = sent
				k.lastLatency = boottime.Now() - sent
			}
			k.mu.Unlock()
			k.persist()
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0):
			k.mu.Lock()
			if k.id == id {
				k.lost = true
			}
			k.mu.Unlock()
			k.log.Warn("host lease expired in etcd", "lease", fmt.Sprintf("%x", int64(id)))
		case ctx.Err() == nil:
			k.log.Debug("lease renewal failed", "err", err, "since_ack", boottime.Now()-k.lastAck())
		}
	}
}

// renew sends one renewal, hedged so that a request stuck on a dead etcd
// member does not cost the host its lease: a renewal is idempotent. It
// returns the send time of the renewal that was acknowledged, which is
// what bounds the lease's validity.
func (k *leaseKeeper) renew(ctx context.Context, id clientv3.LeaseID) (time.Duration, *clientv3.LeaseKeepAliveResponse, error) {
	type renewal struct {
		sent time.Duration
		resp *clientv3.LeaseKeepAliveResponse
	}
	r, err := hedged(ctx, hedgeAfter, k.onHedge, func(ctx context.Context) (renewal, error) {
		sent := boottime.Now()
		resp, err := k.c.KeepAliveOnce(ctx, id)
		return renewal{sent, resp}, err
	})
	return r.sent, r.resp, err
}

// latency returns how long the last acknowledged renewal took, and the
// lease's TTL, the deadline it must beat.
func (k *leaseKeeper) latency() (last, ttl time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastLatency, k.ttl
}

func (k *leaseKeeper) lastAck() time.Duration {
	_, sent, _ := k.state()
	return sent
}
