package watchdog

import "time"

// The agent and the feeder talk over a unix stream socket, one JSON object
// per line each way: a Request, answered by the Status after it.

// Request operations.
const (
	// OpArm arms the device (opening it if needed) and sets the deadline.
	// Arming again moves the deadline, forward or back.
	OpArm = "arm"
	// OpDisarm stops feeding by deadline and closes the device with the
	// magic close; a nowayout device stays open and is fed without a
	// deadline instead.
	OpDisarm = "disarm"
	// OpStatus only reads the status.
	OpStatus = "status"
)

// Request is one message from the agent.
type Request struct {
	Op string `json:"op"`
	// Deadline is CLOCK_BOOTTIME in nanoseconds: the earliest moment
	// another host may start one of this host's restartable VMs.
	Deadline int64 `json:"deadline,omitempty"`
}

// Status is the feeder's answer to every request.
type Status struct {
	Device string `json:"device"`
	// Usable is false when the device cannot be opened, or its timeout is
	// unknown; Problem says why.
	Usable  bool   `json:"usable"`
	Problem string `json:"problem,omitempty"`
	Info    Info   `json:"info"`
	// Slack and Tick are the feeder's E and tick (see Timing).
	Slack time.Duration `json:"slack"`
	Tick  time.Duration `json:"tick"`
	// Armed: the device is open and fed by deadline.
	Armed bool `json:"armed"`
	// Open: the device is open (armed, or a nowayout device fed while
	// disarmed).
	Open     bool  `json:"open"`
	Deadline int64 `json:"deadline,omitempty"`
	// Feeding is false once the rule stopped feeding: the device will fire
	// unless the deadline moves.
	Feeding bool `json:"feeding"`
	// Error is the error of the request answered, if any.
	Error string `json:"error,omitempty"`
}

// Timing is the feeding rule's parameters as the status describes them.
func (s Status) Timing() Timing {
	return Timing{Timeout: s.Info.Timeout, Slack: s.Slack, Tick: s.Tick}
}
