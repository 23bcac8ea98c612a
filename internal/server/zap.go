package server

import "go.uber.org/zap"

// quietZap keeps the etcd client's internal retries out of Vigil's logs;
// Vigil reports the errors that matter itself.
func quietZap() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	cfg.OutputPaths = []string{"stderr"}
	l, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l
}
