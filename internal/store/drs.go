package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DRS automation levels.
const (
	DRSManual  = "manual"
	DRSPartial = "partial"
	DRSFull    = "full"
)

// DRS keys live outside the state prefix: recommendations change every
// pass and must not wake every controller.
const (
	drsRecommendationsKey = Root + "drs/recommendations"
	drsHistoryPfx         = Root + "drs/history/"
	// drsHistoryKeep bounds the history kept in etcd.
	drsHistoryKeep = 500
)

// DRSMove is a load-balancing move, recommended or made, with why.
type DRSMove struct {
	ID   string `json:"id"`
	VM   string `json:"vm"`
	From string `json:"from"`
	To   string `json:"to"`
	// ImbalanceBefore and ImbalanceAfter are the cluster's imbalance
	// before and after the move; Gain their difference, Cost the move's
	// expected cost in the same units.
	ImbalanceBefore float64 `json:"imbalanceBefore"`
	ImbalanceAfter  float64 `json:"imbalanceAfter"`
	Gain            float64 `json:"gain"`
	Cost            float64 `json:"cost"`
	// Rules says which placement rules were considered.
	Rules string `json:"rules"`
	// Why is the move in words (demand of the VM and the two hosts).
	Why string    `json:"why"`
	At  time.Time `json:"at"`
	// By is who made it: drs (full automation), or the operator who
	// applied a recommendation. Empty on a recommendation.
	By string `json:"by,omitempty"`
}

// PutDRSRecommendations replaces the current recommendations (guarded: a
// leader's only).
func (s *Store) PutDRSRecommendations(ctx context.Context, recs []DRSMove) error {
	ctx, cancel := op(ctx)
	defer cancel()
	if recs == nil {
		recs = []DRSMove{}
	}
	resp, err := s.c.Txn(ctx).If(s.guard...).Then(clientv3.OpPut(drsRecommendationsKey, mustJSON(recs))).Commit()
	if err != nil {
		return fmt.Errorf("drs recommendations: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("drs recommendations: %w", ErrNotLeader)
	}
	return nil
}

// DRSRecommendations returns the current recommendations.
func (s *Store) DRSRecommendations(ctx context.Context) ([]DRSMove, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, drsRecommendationsKey)
	if err != nil {
		return nil, fmt.Errorf("drs recommendations: %w", err)
	}
	out := []DRSMove{}
	if len(resp.Kvs) == 1 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &out); err != nil {
			return nil, fmt.Errorf("drs recommendations: %w", err)
		}
	}
	return out, nil
}

// TakeDRSRecommendation removes the recommendation id and returns it, in
// one compare-and-swap: two operators applying it at once move the VM once.
func (s *Store) TakeDRSRecommendation(ctx context.Context, id string) (DRSMove, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, drsRecommendationsKey)
	if err != nil {
		return DRSMove{}, fmt.Errorf("drs recommendation %s: %w", id, err)
	}
	var recs []DRSMove
	var rev int64
	if len(resp.Kvs) == 1 {
		rev = resp.Kvs[0].ModRevision
		if err := json.Unmarshal(resp.Kvs[0].Value, &recs); err != nil {
			return DRSMove{}, fmt.Errorf("drs recommendations: %w", err)
		}
	}
	for i, r := range recs {
		if r.ID != id {
			continue
		}
		rest := append(append([]DRSMove{}, recs[:i]...), recs[i+1:]...)
		t, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(drsRecommendationsKey), "=", rev)).
			Then(clientv3.OpPut(drsRecommendationsKey, mustJSON(rest))).Commit()
		if err != nil {
			return DRSMove{}, fmt.Errorf("drs recommendation %s: %w", id, err)
		}
		if !t.Succeeded {
			return DRSMove{}, fmt.Errorf("drs recommendation %s: %w", id, ErrConflict)
		}
		return r, nil
	}
	return DRSMove{}, fmt.Errorf("drs recommendation %s: %w", id, ErrNotFound)
}

// AddDRSHistory records a move made, and keeps the history bounded.
func (s *Store) AddDRSHistory(ctx context.Context, m DRSMove) error {
	ctx, cancel := op(ctx)
	defer cancel()
	k := fmt.Sprintf("%s%020d-%s", drsHistoryPfx, m.At.UnixNano(), m.VM)
	if _, err := s.c.Put(ctx, k, mustJSON(m)); err != nil {
		return fmt.Errorf("drs history: %w", err)
	}
	resp, err := s.c.Get(ctx, drsHistoryPfx, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithCountOnly())
	if err == nil && resp.Count > drsHistoryKeep {
		old, err := s.c.Get(ctx, drsHistoryPfx, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(resp.Count-drsHistoryKeep))
		if err == nil {
			for _, kv := range old.Kvs {
				_, _ = s.c.Delete(ctx, string(kv.Key))
			}
		}
	}
	return nil
}

// DRSHistory returns the moves made since since, oldest first.
func (s *Store) DRSHistory(ctx context.Context, since time.Time) ([]DRSMove, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	from := fmt.Sprintf("%s%020d", drsHistoryPfx, max(since.UnixNano(), 0))
	resp, err := s.c.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(drsHistoryPfx)))
	if err != nil {
		return nil, fmt.Errorf("drs history: %w", err)
	}
	out := []DRSMove{}
	for _, kv := range resp.Kvs {
		var m DRSMove
		if err := json.Unmarshal(kv.Value, &m); err == nil {
			out = append(out, m)
		}
	}
	return out, nil
}
