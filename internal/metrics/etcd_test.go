package metrics

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"
)

// Every unary call through the interceptor is timed under its short
// method name, failed calls too, and the call's error is passed on.
func TestEtcdRequestsTimesEachCall(t *testing.T) {
	e := NewEtcdRequests()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	boom := errors.New("unavailable")
	fail := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return boom }
	for range 2 {
		if err := e.Intercept(context.Background(), "/etcdserverpb.KV/Range", nil, nil, nil, ok); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Intercept(context.Background(), "/etcdserverpb.KV/Txn", nil, nil, nil, fail); !errors.Is(err, boom) {
		t.Fatalf("error %v, want the call's", err)
	}
	got := map[string]uint64{}
	for _, mf := range gather(t, e) {
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
		}
	}
	if got["KV/Range"] != 2 || got["KV/Txn"] != 1 || len(got) != 2 {
		t.Fatalf("calls by method %v, want KV/Range 2, KV/Txn 1", got)
	}
}
