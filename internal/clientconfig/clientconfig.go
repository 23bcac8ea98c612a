// Package clientconfig is the CLI's configuration file: named contexts,
// one per cluster, each with its API endpoints, the CA that verifies them
// and a token, as kubeconfig holds them. Environment variables override
// it (VIGIL_ADDR, VIGIL_CA, VIGIL_TOKEN), and --addr overrides those.
package clientconfig

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/vigilha/vigil/internal/atomicfile"
)

// Context is how to reach one cluster.
type Context struct {
	Name string `yaml:"name"`
	// Addr is the API endpoints, comma-separated (https://HOST:PORT or
	// unix:///PATH).
	Addr string `yaml:"addr"`
	// CA is the cluster CA's certificate file.
	CA string `yaml:"ca,omitempty"`
	// Token is an API token, or TokenFile a file that holds one (the
	// file is read at each use, so it can be replaced).
	Token     string `yaml:"token,omitempty"`
	TokenFile string `yaml:"tokenFile,omitempty"`
}

// Config is the file.
type Config struct {
	CurrentContext string    `yaml:"currentContext,omitempty"`
	Contexts       []Context `yaml:"contexts"`
}

// Path is the file's location: $VIGIL_CONFIG, else
// $XDG_CONFIG_HOME/vigil/config.yaml, else ~/.config/vigil/config.yaml.
func Path() string {
	if p := os.Getenv("VIGIL_CONFIG"); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "vigil", "config.yaml")
}

// Load reads the file at path; a missing file is an empty config.
func Load(path string) (*Config, error) {
	c := &Config{}
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("client config %s: %w", path, err)
	}
	seen := map[string]bool{}
	for _, ctx := range c.Contexts {
		if ctx.Name == "" || seen[ctx.Name] {
			return nil, fmt.Errorf("client config %s: context names must be set and unique (%q)", path, ctx.Name)
		}
		seen[ctx.Name] = true
	}
	return c, nil
}

// Save writes the file (mode 0600: it may hold tokens).
func (c *Config) Save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

// Get finds a context by name; "" is the current one (nil when there is
// none).
func (c *Config) Get(name string) (*Context, error) {
	if name == "" {
		name = c.CurrentContext
	}
	if name == "" {
		return nil, nil
	}
	i := slices.IndexFunc(c.Contexts, func(x Context) bool { return x.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("no context %q in the client config (contexts: %s)", name, strings.Join(c.names(), ", "))
	}
	return &c.Contexts[i], nil
}

// Set adds or replaces a context.
func (c *Config) Set(ctx Context) {
	if i := slices.IndexFunc(c.Contexts, func(x Context) bool { return x.Name == ctx.Name }); i >= 0 {
		c.Contexts[i] = ctx
		return
	}
	c.Contexts = append(c.Contexts, ctx)
}

func (c *Config) names() []string {
	var out []string
	for _, x := range c.Contexts {
		out = append(out, x.Name)
	}
	return out
}

// Resolved is what a client uses, after the precedence rules.
type Resolved struct {
	Addr, CA, Token string
	// From names where Addr came from, for error messages.
	From string
}

// Env is the environment Resolve reads (os.Getenv in the CLI).
type Env func(string) string

// Resolve applies the precedence: the --addr flag, then VIGIL_ADDR, then
// the context; VIGIL_TOKEN and VIGIL_CA over the context's token and CA.
func Resolve(flagAddr string, ctx *Context, env Env) (Resolved, error) {
	var r Resolved
	switch {
	case flagAddr != "":
		r.Addr, r.From = flagAddr, "--addr"
	case env("VIGIL_ADDR") != "":
		r.Addr, r.From = env("VIGIL_ADDR"), "VIGIL_ADDR"
	case ctx != nil:
		r.Addr, r.From = ctx.Addr, "context "+ctx.Name
	}
	r.CA, r.Token = env("VIGIL_CA"), env("VIGIL_TOKEN")
	if ctx != nil {
		if r.CA == "" {
			r.CA = ctx.CA
		}
		if r.Token == "" {
			r.Token = ctx.Token
			if r.Token == "" && ctx.TokenFile != "" {
				b, err := os.ReadFile(ctx.TokenFile)
				if err != nil {
					return r, fmt.Errorf("context %s: token file: %w", ctx.Name, err)
				}
				r.Token = strings.TrimSpace(string(b))
			}
		}
	}
	return r, nil
}
