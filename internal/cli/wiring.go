package cli

import (
	"crypto/tls"
	ftctl "github.com/vigilha/vigil/internal/controller/ft"
	"log/slog"
	"sync"

	"github.com/vigilha/vigil/internal/controller"
	"github.com/vigilha/vigil/internal/controller/ha"
	"github.com/vigilha/vigil/internal/controller/lifecycle"
	"github.com/vigilha/vigil/internal/controller/migration"
	"github.com/vigilha/vigil/internal/controller/replication"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/shared"
	"github.com/vigilha/vigil/internal/store"
)

// controllers builds the leader's reconcilers.
//
// The leader reaches shared datastores' storage servers with tlsConf (its
// host certificate), to fence hosts there.
func controllers(st store.Writer, log *slog.Logger, tlsConf *tls.Config) []controller.Reconciler {
	var mu sync.Mutex
	clients := map[string]*shared.Client{}
	arbiter := func(ds *store.Datastore) storage.Arbiter {
		mu.Lock()
		defer mu.Unlock()
		c, ok := clients[ds.Server]
		if !ok {
			c = shared.NewClient(ds.Server, tlsConf)
			clients[ds.Server] = c
		}
		return c
	}
	return []controller.Reconciler{
		lifecycle.New(st, log),
		ha.New(st, log, ha.DefaultConfig(), arbiter),
		migration.New(st, log),
		replication.New(st, log),
		ftctl.New(st, log),
	}
}
