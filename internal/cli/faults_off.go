//go:build !faults

package cli

import (
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/vigilha/vigil/internal/agent"
)

// The product binary injects no faults: see faults_on.go.

type faultOpts struct{}

func (faultOpts) addFlags(*pflag.FlagSet) {}

func (faultOpts) faults(*slog.Logger) agent.Faults { return agent.Faults{} }
