package conslog

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"
	"time"
)

func TestHandler(t *testing.T) {
	tests := []struct {
		name string
		log  func(l *slog.Logger)
		want string
	}{
		{
			name: "ready line",
			log:  func(l *slog.Logger) { l.Info("ready", "ip", "10.77.0.10", "boot_id", "abc") },
			want: "vigil-guest: ready ip=10.77.0.10 boot_id=abc\n",
		},
		{
			name: "warn with quoting",
			log:  func(l *slog.Logger) { l.Warn("ledger unavailable", "err", errors.New("no such file")) },
			want: "vigil-guest: WARN: ledger unavailable err=\"no such file\"\n",
		},
		{
			name: "debug dropped",
			log:  func(l *slog.Logger) { l.Debug("noise") },
			want: "",
		},
		{
			name: "with attrs and group",
			log: func(l *slog.Logger) {
				l.With("m", "kmod").WithGroup("g").Info("loaded", "took", 1500*time.Microsecond, slog.Group("x", "y", 1))
			},
			want: "vigil-guest: loaded m=kmod g.took=2ms g.x.y=1\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tt.log(slog.New(New(&buf, nil)))
			if got := buf.String(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
