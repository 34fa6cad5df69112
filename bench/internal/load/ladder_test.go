package load

import (
	"slices"
	"testing"
)

func TestParseRates(t *testing.T) {
	got, err := ParseRates("10k, 50k,100k,1.5M,2M")
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{10e3, 50e3, 100e3, 1.5e6, 2e6}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got, _ := ParseRates("500,2K,3m"); !slices.Equal(got, []float64{500, 2000, 3e6}) {
		t.Fatalf("got %v", got)
	}
	for _, bad := range []string{"", "10k,", "10k,5k", "10k,10k", "0", "-5", "abc", "1x", "NaN", "Inf", "k"} {
		if _, err := ParseRates(bad); err == nil {
			t.Errorf("ParseRates(%q) accepted", bad)
		}
	}
	for _, v := range []float64{10e3, 1.5e6, 200, 2e6} {
		s := FormatRate(v)
		back, err := ParseRates(s)
		if err != nil || back[0] != v {
			t.Errorf("FormatRate(%v) = %q, parsed back %v %v", v, s, back, err)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for _, ok := range []string{"ws://127.0.0.1:8080/", "ws://localhost:1/x?y=1", "ws://127.9.9.9:80", "ws://[::1]:8080/"} {
		if _, err := ParseTarget(ok); err != nil {
			t.Errorf("ParseTarget(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"ws://10.0.0.1:80/", "ws://example.com/", "ws://192.168.1.1/", "wss://127.0.0.1/", "http://127.0.0.1/", "ws://0.0.0.0:80/"} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
}
