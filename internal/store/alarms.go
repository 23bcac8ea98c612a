package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/alarm"
)

// Alarm keys live outside the state prefix: an alarm's state changes must
// not wake every controller, and its definitions are read by the alarm
// controller alone.
const (
	alarmDefsPfx      = Root + "alarms/defs/"
	alarmInstancesPfx = Root + "alarms/instances/"
	alarmsSeededKey   = Root + "alarms/seeded"
)

// PutAlarm creates or replaces an alarm definition.
func (s *Store) PutAlarm(ctx context.Context, d *alarm.Definition) error {
	return s.put(ctx, alarmDefsPfx+d.Name(), d, "alarm "+d.Name())
}

// CreateAlarm adds an alarm definition; ErrExists if one has the name.
func (s *Store) CreateAlarm(ctx context.Context, d *alarm.Definition) error {
	ctx, cancel := op(ctx)
	defer cancel()
	k := alarmDefsPfx + d.Name()
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, mustJSON(d))).Commit()
	if err != nil {
		return fmt.Errorf("create alarm %s: %w", d.Name(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("alarm %s: %w", d.Name(), ErrExists)
	}
	return nil
}

// DeleteAlarm removes an alarm definition and its instances.
func (s *Store) DeleteAlarm(ctx context.Context, name string) error {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Txn(ctx).If(s.guard...).Then(
		clientv3.OpDelete(alarmDefsPfx+name),
		clientv3.OpDelete(alarmInstancesPfx+name+"/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return fmt.Errorf("delete alarm %s: %w", name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("delete alarm %s: %w", name, ErrNotLeader)
	}
	if resp.Responses[0].GetResponseDeleteRange().Deleted == 0 {
		return fmt.Errorf("alarm %s: %w", name, ErrNotFound)
	}
	return nil
}

// Alarms returns every alarm definition, by name.
func (s *Store) Alarms(ctx context.Context) (map[string]*alarm.Definition, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, alarmDefsPfx, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read alarms: %w", err)
	}
	out := map[string]*alarm.Definition{}
	for _, kv := range resp.Kvs {
		var d alarm.Definition
		if err := json.Unmarshal(kv.Value, &d); err != nil {
			return nil, fmt.Errorf("alarm %s: %w", kv.Key, err)
		}
		out[d.Name()] = &d
	}
	return out, nil
}

// SeedAlarms writes the default alarms once per cluster: a later leader
// finds the mark and writes nothing, so a default an operator deleted
// stays deleted. It reports whether it wrote them.
func (s *Store) SeedAlarms(ctx context.Context, defs []*alarm.Definition) (bool, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	ops := []clientv3.Op{clientv3.OpPut(alarmsSeededKey, "1")}
	for _, d := range defs {
		ops = append(ops, clientv3.OpPut(alarmDefsPfx+d.Name(), mustJSON(d)))
	}
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(alarmsSeededKey), "=", 0)}, s.guard...)
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("seed default alarms: %w", err)
	}
	return resp.Succeeded, nil
}

// AlarmInstances returns every alarm instance (an alarm's state for one
// target), with its revision.
func (s *Store) AlarmInstances(ctx context.Context) ([]*alarm.Instance, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, alarmInstancesPfx, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read alarm states: %w", err)
	}
	var out []*alarm.Instance
	for _, kv := range resp.Kvs {
		var in alarm.Instance
		if err := json.Unmarshal(kv.Value, &in); err != nil {
			return nil, fmt.Errorf("alarm state %s: %w", kv.Key, err)
		}
		in.Rev = kv.ModRevision
		out = append(out, &in)
	}
	return out, nil
}

// CASAlarmInstance writes an instance if its record is still at rev (0:
// absent), or deletes it when in is nil; it returns the new revision. A
// lost compare is ErrConflict (an operator acknowledged it meanwhile, say).
func (s *Store) CASAlarmInstance(ctx context.Context, key string, rev int64, in *alarm.Instance) (int64, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	k := alarmInstancesPfx + key
	op := clientv3.OpDelete(k)
	if in != nil {
		op = clientv3.OpPut(k, mustJSON(in))
	}
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", rev)}, s.guard...)
	resp, err := s.c.Txn(ctx).If(cmps...).Then(op).Commit()
	if err != nil {
		return 0, fmt.Errorf("alarm state %s: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("alarm state %s: %w", key, ErrConflict)
	}
	return resp.Header.Revision, nil
}
