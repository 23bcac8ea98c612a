package spec

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	suggestpkg "github.com/vigilha/vigil/internal/suggest"
)

// FieldError is one problem with one field of a document.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// FieldErrors is every problem found in a document, in document order.
type FieldErrors []FieldError

func (es FieldErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

// maxDocumentBytes bounds what Parse reads; a VM spec is a few hundred bytes.
const maxDocumentBytes = 1 << 20

// Parse reads a VM document in YAML or JSON (JSON is YAML), applies
// defaults, and validates it. Every problem is reported with its field path;
// the error is a FieldErrors when the input was understood as a document.
func Parse(data []byte) (*VM, error) { return ParseNamed(data, "") }

// ParseNamed is Parse with metadata.name replaced by name (when not empty)
// before validation, so one spec file can make several VMs.
func ParseNamed(data []byte, name string) (*VM, error) {
	if len(data) > maxDocumentBytes {
		return nil, FieldErrors{{Message: fmt.Sprintf("document is %d bytes; the limit is %d", len(data), maxDocumentBytes)}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, FieldErrors{{Message: "not valid YAML or JSON: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, FieldErrors{{Message: "empty document"}}
	}
	var vm VM
	var errs FieldErrors
	decodeNode(root.Content[0], reflect.ValueOf(&vm).Elem(), "", &errs)
	if name != "" {
		vm.Metadata.Name = name
	}
	vm.ApplyDefaults()
	// Report every problem at once, but not a validation complaint about a
	// field that already failed to decode ("required" after "not a size").
	for _, ve := range vm.Validate() {
		if !coveredBy(ve.Field, errs) {
			errs = append(errs, ve)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &vm, nil
}

// Decode strictly decodes one YAML or JSON document into out (a pointer
// to a struct with json tags), naming the field path of every unknown key
// and mistyped value, as Parse does for VM specs. It does not validate.
func Decode(data []byte, out any) FieldErrors {
	if len(data) > maxDocumentBytes {
		return FieldErrors{{Message: fmt.Sprintf("document is %d bytes; the limit is %d", len(data), maxDocumentBytes)}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return FieldErrors{{Message: "not valid YAML or JSON: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return FieldErrors{{Message: "empty document"}}
	}
	var errs FieldErrors
	decodeNode(root.Content[0], reflect.ValueOf(out).Elem(), "", &errs)
	return errs
}

// CoveredBy reports whether field, or a field containing it, already
// has an error in errs (so that validation does not add a second one).
func CoveredBy(field string, errs FieldErrors) bool { return coveredBy(field, errs) }

func coveredBy(field string, errs FieldErrors) bool {
	for _, e := range errs {
		if e.Field != "" && (field == e.Field || strings.HasPrefix(field, e.Field+".") || strings.HasPrefix(field, e.Field+"[")) {
			return true
		}
	}
	return false
}

var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

// decodeNode is a strict decoder: unlike yaml.v3's own, it names the field
// path of every unknown key and type mismatch, which is what an operator
// needs to fix a spec.
func decodeNode(n *yaml.Node, v reflect.Value, path string, errs *FieldErrors) {
	fail := func(format string, a ...any) {
		*errs = append(*errs, FieldError{Field: path, Message: fmt.Sprintf(format, a...) + fmt.Sprintf(" (line %d)", n.Line)})
	}
	if n.Kind == yaml.AliasNode {
		fail("aliases are not supported")
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an explicit null leaves the zero value
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		decodeNode(n, v.Elem(), path, errs)
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(textUnmarshalerType) {
		if n.Kind != yaml.ScalarNode {
			fail("expected a single value")
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			fail("%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			fail("expected a mapping of fields")
			return
		}
		fields := structFields(v.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			kp := joinPath(path, key.Value)
			if seen[key.Value] {
				*errs = append(*errs, FieldError{Field: kp, Message: fmt.Sprintf("given twice (line %d)", key.Line)})
				continue
			}
			seen[key.Value] = true
			idx, ok := fields[key.Value]
			if !ok {
				*errs = append(*errs, FieldError{Field: kp, Message: fmt.Sprintf("unknown field (line %d)%s", key.Line, suggest(key.Value, fields))})
				continue
			}
			decodeNode(val, v.Field(idx), kp, errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			fail("expected a list")
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			decodeNode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i), errs)
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			fail("expected a mapping")
			return
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			elem := reflect.New(v.Type().Elem()).Elem()
			decodeNode(val, elem, joinPath(path, key.Value), errs)
			m.SetMapIndex(reflect.ValueOf(key.Value), elem)
		}
		v.Set(m)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			fail("expected a string")
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int64, reflect.Int32:
		if n.Kind != yaml.ScalarNode {
			fail("expected a whole number")
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, 64)
		if err != nil || v.OverflowInt(i) {
			fail("%q is not a whole number", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		if n.Kind != yaml.ScalarNode {
			fail("expected a number")
			return
		}
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			fail("%q is not a number", n.Value)
			return
		}
		v.SetFloat(f)
	case reflect.Bool:
		b, ok := parseBool(n)
		if !ok {
			fail("%q is not true or false", n.Value)
			return
		}
		v.SetBool(b)
	default:
		fail("cannot decode into %s", v.Type())
	}
}

func parseBool(n *yaml.Node) (bool, bool) {
	if n.Kind != yaml.ScalarNode {
		return false, false
	}
	switch n.Value {
	case "true", "True", "TRUE", "yes", "on":
		return true, true
	case "false", "False", "FALSE", "no", "off":
		return false, true
	}
	return false, false
}

// structFields maps each yaml key of a struct type to its field index.
func structFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = i
	}
	return m
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest names the known field closest to a misspelt one.
func suggest(key string, fields map[string]int) string {
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	if best := suggestpkg.Closest(key, names); best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return ""
}

// AsFieldErrors extracts field errors from err, or wraps a plain error as one.
func AsFieldErrors(err error) FieldErrors {
	var fe FieldErrors
	if errors.As(err, &fe) {
		return fe
	}
	return FieldErrors{{Message: err.Error()}}
}
