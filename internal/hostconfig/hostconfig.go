// Package hostconfig reads a host's config file (/etc/vigil/vigil.yaml):
// the daemons' command-line flags written as YAML keys.
//
// A key is a flag's name, or a flag's name split at its dashes into
// nested maps: `etcd: {endpoints: [...]}` sets --etcd-endpoints, as does
// `etcd-endpoints: ...`. A list sets a repeatable flag's values, or a
// comma-separated string flag. Keys under `watchdog:` are also the
// watchdog feeder's flags (`watchdog: {device: ...}` is `vigil watchdog
// --device`). The flags are the one schema, so the file carries everything
// the flags carry and cannot drift from them; a flag given on the command
// line wins over the file.
package hostconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/vigilha/vigil/internal/suggest"
)

// DefaultPath is where the package installs the host's config file.
const DefaultPath = "/etc/vigil/vigil.yaml"

// Setting is one leaf of the file: a flag's name and the values the file
// gives it.
type Setting struct {
	// Key is the key's path as written, dotted (etcd.endpoints).
	Key string
	// Flag is the flag it sets: the path's parts joined by dashes.
	Flag string
	// Values are the scalar values (one, or a list's items).
	Values []string
	// List says the file gave a list.
	List bool
	// Line is where the key is in the file.
	Line int
}

// File is a parsed config file.
type File struct {
	Path     string
	Settings []Setting
}

// Read parses the config file at path. It reports YAML errors and
// structure errors (a list of maps, say) with their line; whether each key
// is known is the Sections' job.
func Read(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, b)
}

// Parse is Read on the file's bytes; path only names it in errors.
func Parse(path string, b []byte) (*File, error) {
	f := &File{Path: path}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return f, nil // an empty (or all comments) file sets nothing
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return f, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return f, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: the file must be a map of keys (flag names) to values", path, root.Line)
	}
	var errs []error
	flatten(path, root, nil, &f.Settings, &errs)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// One key given twice (flat and nested) is a mistake, not a merge.
	seen := map[string]Setting{}
	for _, s := range f.Settings {
		if p, ok := seen[s.Flag]; ok {
			errs = append(errs, fmt.Errorf("%s:%d: %s: also set at line %d (as %s)", path, s.Line, s.Key, p.Line, p.Key))
		}
		seen[s.Flag] = s
	}
	return f, errors.Join(errs...)
}

func flatten(path string, n *yaml.Node, prefix []string, out *[]Setting, errs *[]error) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			*errs = append(*errs, fmt.Errorf("%s:%d: a key must be a name", path, k.Line))
			continue
		}
		parts := append(append([]string(nil), prefix...), k.Value)
		key := strings.Join(parts, ".")
		s := Setting{Key: key, Flag: strings.Join(parts, "-"), Line: k.Line}
		switch v.Kind {
		case yaml.MappingNode:
			flatten(path, v, parts, out, errs)
			continue
		case yaml.ScalarNode:
			if v.Tag == "!!null" {
				continue // `key:` with no value: as if absent (a template's blank)
			}
			s.Values = []string{v.Value}
		case yaml.SequenceNode:
			s.List = true
			for _, it := range v.Content {
				if it.Kind != yaml.ScalarNode {
					*errs = append(*errs, fmt.Errorf("%s:%d: %s: a list item must be a plain value", path, it.Line, key))
					continue
				}
				s.Values = append(s.Values, it.Value)
			}
		default:
			*errs = append(*errs, fmt.Errorf("%s:%d: %s: unsupported value (anchors and aliases are not supported)", path, v.Line, key))
			continue
		}
		*out = append(*out, s)
	}
}

// Section is one command's part of the file: the keys under Prefix
// (empty: the top level) name Flags.
type Section struct {
	Prefix string
	Flags  *pflag.FlagSet
}

// notFromFile are flags a config file must not set: they are about the
// invocation, not the host.
var notFromFile = map[string]bool{"help": true, "config": true, "version": true, "addr": true, "context": true}

// flagOf returns the flag that a setting names in sec, if any.
func (sec Section) flagOf(s Setting) *pflag.Flag {
	name := s.Flag
	if sec.Prefix != "" {
		var ok bool
		if name, ok = strings.CutPrefix(name, sec.Prefix+"-"); !ok {
			return nil
		}
	}
	if notFromFile[name] {
		return nil
	}
	return sec.Flags.Lookup(name)
}

// Apply sets apply's flags from the file, except those given on the
// command line. A key that no section of schema names is an error (a
// misspelt key must not be silently ignored), as is a value its flag
// refuses; each error names the key and its line. apply must be one of
// schema's sections, or have the same flags as one.
func (f *File) Apply(apply Section, schema []Section) error {
	var errs []error
	for _, s := range f.Settings {
		known := false
		for _, sec := range schema {
			if sec.flagOf(s) != nil {
				known = true
				break
			}
		}
		if !known {
			errs = append(errs, fmt.Errorf("%s:%d: %s: unknown key%s", f.Path, s.Line, s.Key, hint(s, schema)))
			continue
		}
		fl := apply.flagOf(s)
		if fl == nil || fl.Changed {
			continue
		}
		if err := set(apply.Flags, fl, s); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %s: %w", f.Path, s.Line, s.Key, err))
		}
	}
	return errors.Join(errs...)
}

// set gives fl the setting's values.
func set(fs *pflag.FlagSet, fl *pflag.Flag, s Setting) error {
	if sv, ok := fl.Value.(pflag.SliceValue); ok {
		// Each item is one value; a single value may still hold commas
		// where the flag splits them (a StringSlice).
		if !s.List {
			return fs.Set(fl.Name, s.Values[0])
		}
		for _, v := range s.Values {
			if strings.Contains(v, ",") && fl.Value.Type() == "stringSlice" {
				return fmt.Errorf("item %q: a list item must not hold a comma", v)
			}
		}
		if err := sv.Replace(s.Values); err != nil {
			return err
		}
		fl.Changed = true
		return nil
	}
	if s.List {
		if fl.Value.Type() != "string" {
			return fmt.Errorf("takes one value, not a list")
		}
		return fs.Set(fl.Name, strings.Join(s.Values, ","))
	}
	return fs.Set(fl.Name, s.Values[0])
}

// hint names a known key close to an unknown one.
func hint(s Setting, schema []Section) string {
	var names []string
	for _, sec := range schema {
		sec.Flags.VisitAll(func(fl *pflag.Flag) {
			if notFromFile[fl.Name] || fl.Hidden {
				return
			}
			n := fl.Name
			if sec.Prefix != "" {
				n = sec.Prefix + "-" + n
			}
			names = append(names, n)
		})
	}
	if best := suggest.Closest(s.Flag, names); best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return ""
}
