package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/vigilha/vigil/internal/storage/shared"

	"github.com/vigilha/vigil/internal/atomicfile"
)

// persistedState is Dir/state.json. The generations (and the UIDs of
// deleted VMs) are the part safety depends on; exports are kept only so
// that a restarted server can serve the VMs that were running (their NBD
// clients reconnect), and are re-checked against the generations before
// being re-created.
type persistedState struct {
	Generations []shared.VMGenerations `json:"generations"`
	Forgotten   []string               `json:"forgotten,omitempty"`
	Exports     []shared.Export        `json:"exports"`
	// HostPorts are the hosts' NBD servers' ports.
	HostPorts map[string]int `json:"hostPorts,omitempty"`
}

// loadState reads the state file; a missing file is an empty state, a
// corrupt one is an error (starting without the fences it held would give
// fenced hosts their access back).
func loadState(path string) (persistedState, error) {
	var st persistedState
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state file %s is corrupt (refusing to start without its generations): %w", path, err)
	}
	return st, nil
}

// saveState replaces the state file atomically and durably: the new content
// is fsynced under a temporary name, renamed over the old file, and the
// directory fsynced so the rename itself survives a crash. When it returns
// nil the generations are on disk.
func saveState(path string, st persistedState) error {
	sort.Slice(st.Generations, func(i, j int) bool {
		a, b := st.Generations[i], st.Generations[j]
		return a.Name < b.Name || a.Name == b.Name && a.UID < b.UID
	})
	sort.Strings(st.Forgotten)
	sort.Slice(st.Exports, func(i, j int) bool { return st.Exports[i].Export < st.Exports[j].Export })
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	return atomicfile.WriteSync(path, append(b, '\n'), 0o600)
}
