package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// EtcdRequests times a member's requests to etcd, by gRPC method, from
// inside its etcd client: every read, write and lease call the member
// makes (streams, such as watches and lease keep-alives, are not
// requests and are not timed).
type EtcdRequests struct {
	*prometheus.HistogramVec
}

// NewEtcdRequests returns the histogram; pass Intercept to the etcd
// client's dial options and register the value with the member's metrics.
func NewEtcdRequests() *EtcdRequests {
	return &EtcdRequests{prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: EtcdRequestSeconds.Name, Help: EtcdRequestSeconds.Help,
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms to 4 s
	}, EtcdRequestSeconds.Labels)}
}

// Intercept is a gRPC unary client interceptor that observes each call.
func (e *EtcdRequests) Intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	start := time.Now()
	err := invoker(ctx, method, req, reply, cc, opts...)
	e.WithLabelValues(etcdMethod(method)).Observe(time.Since(start).Seconds())
	return err
}

// etcdMethod shortens a gRPC method name ("/etcdserverpb.KV/Range") to
// the service and call ("KV/Range").
func etcdMethod(full string) string {
	full = strings.TrimPrefix(full, "/")
	if _, after, ok := strings.Cut(full, "."); ok {
		return after
	}
	return full
}
