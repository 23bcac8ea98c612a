// Package cmdline parses the vigil.* parameters that the host passes to the
// guest on the kernel command line.
package cmdline

import (
	"fmt"
	"net/netip"
	"strings"
)

// DefaultHostname is used when the command line names no vigil.hostname.
const DefaultHostname = "vigil-guest"

// Config is the guest configuration carried on the kernel command line.
type Config struct {
	// Addr is the address and prefix for eth0 (vigil.ip); invalid when absent.
	Addr netip.Prefix
	// Gateway is the default route's next hop (vigil.gw); invalid when absent.
	Gateway netip.Addr
	// Hostname is vigil.hostname, or DefaultHostname.
	Hostname string
}

// Fields splits a kernel command line the way the kernel does: on spaces,
// with double quotes grouping (and being dropped from) a value.
func Fields(s string) []string {
	var (
		out   []string
		cur   strings.Builder
		quote bool
		inTok bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			quote = !quote
			inTok = true
		case !quote && (r == ' ' || r == '\t' || r == '\n'):
			if inTok {
				out = append(out, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteRune(r)
			inTok = true
		}
	}
	if inTok {
		out = append(out, cur.String())
	}
	return out
}

// Parse extracts the vigil.* parameters from a kernel command line. Unknown
// parameters are ignored since the kernel and other tools own them; a later
// occurrence of a vigil.* key wins, as it does for kernel parameters.
func Parse(s string) (Config, error) {
	cfg := Config{Hostname: DefaultHostname}
	for _, f := range Fields(s) {
		key, val, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch key {
		case "vigil.ip":
			p, err := netip.ParsePrefix(val)
			if err != nil {
				return Config{}, fmt.Errorf("vigil.ip=%q: want ADDR/PREFIXLEN: %w", val, err)
			}
			if !p.Addr().Is4() {
				return Config{}, fmt.Errorf("vigil.ip=%q: only IPv4 is supported", val)
			}
			cfg.Addr = p
		case "vigil.gw":
			a, err := netip.ParseAddr(val)
			if err != nil {
				return Config{}, fmt.Errorf("vigil.gw=%q: %w", val, err)
			}
			if !a.Is4() {
				return Config{}, fmt.Errorf("vigil.gw=%q: only IPv4 is supported", val)
			}
			cfg.Gateway = a
		case "vigil.hostname":
			if err := validHostname(val); err != nil {
				return Config{}, fmt.Errorf("vigil.hostname=%q: %w", val, err)
			}
			cfg.Hostname = val
		}
	}
	if cfg.Gateway.IsValid() {
		if !cfg.Addr.IsValid() {
			return Config{}, fmt.Errorf("vigil.gw=%s given without vigil.ip", cfg.Gateway)
		}
		if !cfg.Addr.Masked().Contains(cfg.Gateway) {
			return Config{}, fmt.Errorf("vigil.gw=%s is outside vigil.ip=%s", cfg.Gateway, cfg.Addr)
		}
	}
	return cfg, nil
}

// validHostname accepts RFC 1123 host names (dot-separated labels of letters,
// digits and inner hyphens), which is what sethostname users expect to see.
func validHostname(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("length %d outside 1..64", len(s))
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("empty or overlong label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for _, c := range label {
			ok := c == '-' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
			if !ok {
				return fmt.Errorf("invalid character %q", c)
			}
		}
	}
	return nil
}
