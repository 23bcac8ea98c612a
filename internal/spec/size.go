package spec

import (
	"fmt"
	"strconv"
	"strings"
)

// Size is a byte count written in specs as a quantity with a binary unit,
// such as "256Mi" or "1Gi". A bare number is refused because operators mean
// MiB (QEMU's -m) as often as bytes, and guessing wrong silently is worse
// than asking.
type Size int64

// Common sizes.
const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

var sizeUnits = []struct {
	suffix string
	mult   Size
}{
	{"KiB", KiB}, {"MiB", MiB}, {"GiB", GiB}, {"TiB", TiB},
	{"Ki", KiB}, {"Mi", MiB}, {"Gi", GiB}, {"Ti", TiB},
	{"K", KiB}, {"M", MiB}, {"G", GiB}, {"T", TiB},
}

// ParseSize parses a quantity such as "256Mi", "1Gi", "512MiB" or "2G"
// (single-letter units are binary, as in QEMU).
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	for _, u := range sizeUnits {
		if !strings.HasSuffix(t, u.suffix) {
			continue
		}
		num := strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a size: want a whole number with a unit, e.g. 256Mi", s)
		}
		if n > int64(1<<62)/int64(u.mult) {
			return 0, fmt.Errorf("%q is too large", s)
		}
		return Size(n) * u.mult, nil
	}
	if _, err := strconv.ParseInt(t, 10, 64); err == nil {
		return 0, fmt.Errorf("%q needs a unit, e.g. %sMi or %sGi", s, t, t)
	}
	return 0, fmt.Errorf("%q is not a size: want a whole number with a unit (Ki, Mi, Gi, Ti), e.g. 256Mi", s)
}

// String renders the size with the largest binary unit that divides it exactly.
func (s Size) String() string {
	for _, u := range []struct {
		suffix string
		mult   Size
	}{{"Ti", TiB}, {"Gi", GiB}, {"Mi", MiB}, {"Ki", KiB}} {
		if s != 0 && s%u.mult == 0 {
			return strconv.FormatInt(int64(s/u.mult), 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// MiB returns the size in whole mebibytes, rounded up.
func (s Size) MiB() int64 { return (int64(s) + int64(MiB) - 1) / int64(MiB) }

// MarshalText renders the size in the same form that ParseSize reads.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText accepts the forms of ParseSize, so stored JSON and spec YAML
// read the same way.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
