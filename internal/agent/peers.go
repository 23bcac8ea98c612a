package agent

import (
	"context"
	"net/http"
	"sync"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/endpoint"
)

// runPeerProbe records when a majority of hosts (counting this one) last
// answered on the management network. A host that cannot reach a majority
// is isolated; one that can but has no etcd leader sees a control-plane
// outage, which must not kill its VMs.
func (a *Agent) runPeerProbe(ctx context.Context) {
	a.probePeers(ctx)
	every(ctx, a.cfg.Fence.PeerInterval, func() { a.probePeers(ctx) })
}

// probePeers is one round of runPeerProbe.
func (a *Agent) probePeers(ctx context.Context) {
	hosts := a.fence.Peers()
	if len(hosts) == 0 {
		return // no snapshot yet: unknown peers count as unreachable
	}
	start := boottime.Now()
	var mu sync.Mutex
	reached := 1 // this host
	var wg sync.WaitGroup
	for _, url := range hosts {
		ep, err := endpoint.Parse(url)
		if err != nil || ep.Network != "tcp" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, a.cfg.Fence.PeerInterval)
			defer cancel()
			req, _ := http.NewRequestWithContext(pctx, http.MethodGet, ep.BaseURL()+"/healthz", nil)
			resp, err := a.peerHTTP.Do(req)
			if err == nil {
				resp.Body.Close()
				mu.Lock()
				reached++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if reached*2 > len(hosts)+1 {
		a.fence.PeersReached(start)
	}
}
