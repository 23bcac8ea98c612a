package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"

	"go.uber.org/zap"
)

// TestEtcdLogsReachTheSameSink: etcd's zap entries come out of Vigil's
// slog handler, with component=etcd and their fields, filtered by level.
func TestEtcdLogsReachTheSameSink(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	lg := etcdLogger(log, slog.LevelWarn).With(zap.String("member", "host1"))
	lg.Info("chatty")
	lg.Warn("slow fdatasync", zap.Duration("took", 1500000000), zap.Int("n", 3))
	var got map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &got); err != nil {
		t.Fatalf("want exactly one JSON line (the info entry filtered out): %q: %v", buf.String(), err)
	}
	if got["msg"] != "slow fdatasync" || got["component"] != "etcd" || got["member"] != "host1" || got["level"] != "WARN" || got["n"] != float64(3) {
		t.Fatalf("entry %v", got)
	}
}
