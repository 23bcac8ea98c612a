// Package modules finds kernel modules in an unpacked Debian kernel package
// and orders the ones the guest needs so each loads after its dependencies.
//
// The package ships no modules.dep (depmod runs at install time), so the
// dependencies come from each module's own .modinfo section.
package modules

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Normalize maps a module or file name to the kernel's module name: without
// directory and .ko suffix, with '-' folded to '_' as KBUILD_MODNAME does.
func Normalize(name string) string {
	name = filepath.Base(name)
	if i := strings.Index(name, ".ko"); i >= 0 {
		name = name[:i]
	}
	return strings.ReplaceAll(name, "-", "_")
}

// Tree indexes the modules under one lib/modules/<version> directory.
type Tree struct {
	root    string
	paths   map[string]string // module name -> file
	builtin map[string]bool
}

// Open indexes root, a lib/modules/<version> directory.
func Open(root string) (*Tree, error) {
	t := &Tree{root: root, paths: map[string]string{}, builtin: map[string]bool{}}
	kdir := filepath.Join(root, "kernel")
	err := filepath.WalkDir(kdir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			n := Normalize(d.Name())
			if prev, dup := t.paths[n]; dup {
				return fmt.Errorf("module %s twice: %s and %s", n, prev, p)
			}
			t.paths[n] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules: index %s: %w", kdir, err)
	}
	// modules.builtin lists what the kernel has compiled in; asking for one
	// of those is fine and means there is nothing to load.
	if f, err := os.Open(filepath.Join(root, "modules.builtin")); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				t.builtin[Normalize(line)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("modules: read modules.builtin: %w", err)
		}
	}
	return t, nil
}

// Len returns the number of modules indexed.
func (t *Tree) Len() int { return len(t.paths) }

// Builtin reports whether name is compiled into the kernel.
func (t *Tree) Builtin(name string) bool { return t.builtin[Normalize(name)] }

// Path returns the file of module name.
func (t *Tree) Path(name string) (string, error) {
	p, ok := t.paths[Normalize(name)]
	if !ok {
		return "", fmt.Errorf("modules: no module %s under %s", name, t.root)
	}
	if !strings.HasSuffix(p, ".ko") {
		return "", fmt.Errorf("modules: %s is compressed; only uncompressed .ko files are supported", p)
	}
	return p, nil
}

// Depends returns the modules name depends on, from its .modinfo.
func (t *Tree) Depends(name string) ([]string, error) {
	p, err := t.Path(name)
	if err != nil {
		return nil, err
	}
	return ReadDepends(p)
}

// Resolve orders wanted and everything they depend on so that dependencies
// come first. Built-in modules among wanted are returned separately, since
// there is nothing to load for them.
func (t *Tree) Resolve(wanted []string) (order, builtin []string, err error) {
	var loadable []string
	for _, w := range wanted {
		if _, ok := t.paths[Normalize(w)]; !ok && t.Builtin(w) {
			builtin = append(builtin, Normalize(w))
			continue
		}
		loadable = append(loadable, w)
	}
	order, err = Resolve(loadable, t.Depends)
	return order, builtin, err
}

// Resolve returns wanted and their transitive dependencies (per deps) in an
// order where every module follows its dependencies. The result is
// deterministic: roots in the given order, each one's dependencies visited
// in name order, depth first.
func Resolve(wanted []string, deps func(name string) ([]string, error)) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("modules: dependency cycle: %s", strings.Join(append(path, name), " -> "))
		}
		state[name] = visiting
		ds, err := deps(name)
		if err != nil {
			return fmt.Errorf("modules: dependencies of %s: %w", name, err)
		}
		ds = slices.Clone(ds)
		for i := range ds {
			ds[i] = Normalize(ds[i])
		}
		slices.Sort(ds)
		for _, d := range slices.Compact(ds) {
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range wanted {
		if err := visit(Normalize(w), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// ReadDepends returns the depends= list of the module file at path, from its
// .modinfo ELF section, or from a scan of the raw bytes when the file is not
// readable as ELF.
func ReadDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err == nil {
		defer f.Close()
		sec := f.Section(".modinfo")
		if sec == nil {
			return nil, fmt.Errorf("modules: %s has no .modinfo section", path)
		}
		data, err := sec.Data()
		if err != nil {
			return nil, fmt.Errorf("modules: read .modinfo of %s: %w", path, err)
		}
		return ParseModinfo(data)
	}
	raw, rerr := os.ReadFile(path)
	if rerr != nil {
		return nil, fmt.Errorf("modules: %w", rerr)
	}
	return ParseModinfo(raw)
}

// ParseModinfo extracts the depends= list from a .modinfo blob: NUL-separated
// key=value strings. A blob without depends= is an error, since every
// module built by kbuild carries one (possibly empty).
func ParseModinfo(data []byte) ([]string, error) {
	var (
		found bool
		deps  []string
	)
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		if found {
			return nil, errors.New("modules: more than one depends= entry")
		}
		found = true
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, Normalize(d))
			}
		}
	}
	if !found {
		return nil, errors.New("modules: no depends= entry in modinfo")
	}
	return deps, nil
}
