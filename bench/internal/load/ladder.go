package load

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseRates parses a comma-separated ladder of rates such as
// "10k,50k,1.5M,2000": k multiplies by 1,000, M by 1,000,000. Rates must be
// positive and strictly increasing.
func ParseRates(s string) ([]float64, error) {
	var out []float64
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("rates %q: empty entry", s)
		}
		mult := 1.0
		switch f[len(f)-1] {
		case 'k', 'K':
			mult, f = 1e3, f[:len(f)-1]
		case 'm', 'M':
			mult, f = 1e6, f[:len(f)-1]
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("rates %q: bad rate %q", s, f)
		}
		v *= mult
		if v <= 0 {
			return nil, fmt.Errorf("rates %q: rate %v is not positive", s, v)
		}
		if n := len(out); n > 0 && v <= out[n-1] {
			return nil, fmt.Errorf("rates %q: not increasing at %v", s, v)
		}
		out = append(out, v)
	}
	if len(out) > 64 {
		return nil, fmt.Errorf("rates %q: more than 64 steps", s)
	}
	return out, nil
}

// FormatRate writes a rate the way ParseRates reads it: 50k, 1.5M, 200.
func FormatRate(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// HumanRate writes a measured rate with three significant digits.
func HumanRate(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', 2, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}
