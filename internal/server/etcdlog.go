package server

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The embedded etcd logs with zap. slogCore hands its entries to Vigil's
// own slog handler, tagged component=etcd, so that one sink in one format
// (--log-format) carries both. It is the few lines of zapcore.Core; zap has
// no slog sink of its own (its exp/zapslog goes the other way).

// etcdLogger returns a zap logger writing to log at level and above.
func etcdLogger(log *slog.Logger, level slog.Level) *zap.Logger {
	return zap.New(&slogCore{log: log.With("component", "etcd"), level: level})
}

type slogCore struct {
	log   *slog.Logger
	level slog.Level
	// fields are those added by With, already converted.
	fields []any
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return slogLevel(l) >= c.level }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, level: c.level, fields: append(append([]any(nil), c.fields...), attrs(fs)...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	args := append(append([]any(nil), c.fields...), attrs(fs)...)
	if e.LoggerName != "" {
		args = append(args, "logger", e.LoggerName)
	}
	c.log.Log(context.Background(), slogLevel(e.Level), e.Message, args...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

// attrs turns zap fields into slog key-value pairs through zap's own map
// encoder, so every zap field type renders as zap would render it.
func attrs(fs []zapcore.Field) []any {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fs {
		f.AddTo(enc)
	}
	out := make([]any, 0, 2*len(enc.Fields))
	for k, v := range enc.Fields {
		out = append(out, k, v)
	}
	return out
}
