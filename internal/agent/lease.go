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
	"golang.org/x/sys/unix"
)

// boottime reads CLOCK_BOOTTIME, which keeps counting while the machine
// is suspended (Go's monotonic clock does not), so a host that slept
// through its lease expiry knows it.
func boottime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic(fmt.Sprintf("CLOCK_BOOTTIME: %v", err)) // present on every Linux since 2.6.39
	}
	return time.Duration(ts.Nano())
}

// leaseKeeper holds the host's etcd lease with its own KeepAliveOnce loop.
// etcd's KeepAlive helper hides when each renewal was sent; self-fencing
// needs exactly that: the lease is surely valid until sendTime + TTL of the
// last acknowledged renewal, measured on this host's clock.
type leaseKeeper struct {
	c        *clientv3.Client
	ttl      time.Duration
	interval time.Duration
	idFile   string
	log      *slog.Logger

	mu sync.Mutex
	id clientv3.LeaseID
	// lastAckSend is the boottime at which the last acknowledged renewal
	// (or the grant) was sent.
	lastAckSend time.Duration
	// lost is set when etcd said the lease no longer exists.
	lost bool
}

func newLeaseKeeper(c *clientv3.Client, ttl, interval time.Duration, idFile string, log *slog.Logger) *leaseKeeper {
	return &leaseKeeper{c: c, ttl: ttl, interval: interval, idFile: idFile, log: log}
}

// acquire resumes the lease recorded by a previous agent process if etcd
// still has it (an agent restart must not look like a host failure), or
// grants a new one.
func (k *leaseKeeper) acquire(ctx context.Context) (clientv3.LeaseID, error) {
	if b, err := os.ReadFile(k.idFile); err == nil {
		if id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && id != 0 {
			sent := boottime()
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := k.c.KeepAliveOnce(rctx, clientv3.LeaseID(id))
			cancel()
			if err == nil && resp.TTL > 0 {
				k.set(clientv3.LeaseID(id), sent)
				k.log.Info("resumed host lease", "lease", fmt.Sprintf("%x", id), "ttl", resp.TTL)
				return clientv3.LeaseID(id), nil
			}
		}
	}
	sent := boottime()
	resp, err := k.c.Grant(ctx, int64(k.ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant host lease: %w", err)
	}
	k.set(resp.ID, sent)
	if err := os.WriteFile(k.idFile, []byte(strconv.FormatInt(int64(resp.ID), 10)), 0o640); err != nil {
		return 0, fmt.Errorf("record lease id: %w", err)
	}
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

// sinceAck is how long ago the last acknowledged renewal was sent.
func (k *leaseKeeper) sinceAck() time.Duration {
	_, sent, _ := k.state()
	return boottime() - sent
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
		sent := boottime()
		rctx, cancel := context.WithTimeout(ctx, k.interval)
		resp, err := k.c.KeepAliveOnce(rctx, id)
		cancel()
		switch {
		case err == nil && resp.TTL > 0:
			k.mu.Lock()
			if k.id == id && sent > k.lastAckSend {
				k.lastAckSend = sent
			}
			k.mu.Unlock()
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0):
			k.mu.Lock()
			if k.id == id {
				k.lost = true
			}
			k.mu.Unlock()
			k.log.Warn("host lease expired in etcd", "lease", fmt.Sprintf("%x", int64(id)))
		case ctx.Err() == nil:
			k.log.Debug("lease renewal failed", "err", err, "since_ack", boottime()-k.lastAck())
		}
	}
}

func (k *leaseKeeper) lastAck() time.Duration {
	_, sent, _ := k.state()
	return sent
}
