//go:build faults

package cli

import (
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/vigilha/vigil/internal/agent"
)

// A binary built with `-tags faults` (scripts/test.sh builds bin/vigil-faults
// for the integration tests that need it) takes fault-injection flags; the
// product binary has none of them (faults_off.go).

type faultOpts struct {
	cutover time.Duration
}

func (o *faultOpts) addFlags(f *pflag.FlagSet) {
	f.DurationVar(&o.cutover, "debug-cutover-delay", 0, "fault injection: hold a migration destination this long between the placement flip and its resume")
}

func (o *faultOpts) faults(log *slog.Logger) agent.Faults {
	if o.cutover <= 0 {
		return agent.Faults{}
	}
	d := o.cutover
	return agent.Faults{BeforeResume: func(vm string) {
		log.Warn("fault injection: delaying the resume after the cut-over", "vm", vm, "delay", d)
		time.Sleep(d)
	}}
}
