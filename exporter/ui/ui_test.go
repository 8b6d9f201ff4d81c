package ui

import (
	"testing"

	"github.com/cgscope/cgscope/exporter/pprof"
)

// The page's switch lists every profile kind: each needs its words, and a
// kind added to exporter/pprof without them would show an empty button.
func TestEveryKindHasTexts(t *testing.T) {
	for _, k := range pprof.Kinds() {
		txt, ok := kindTexts[k]
		if !ok || txt.Title == "" || txt.About == "" || txt.Events == "" || txt.Seconds == "" || txt.SecondsField == "" || txt.TotalField == "" {
			t.Errorf("kind %s: texts %+v", k, txt)
		}
	}
	if len(kindTexts) != len(pprof.Kinds()) {
		t.Errorf("%d kinds have texts, there are %d", len(kindTexts), len(pprof.Kinds()))
	}
}

// A page URL names its kind once at most; none is CPU.
func TestPageKind(t *testing.T) {
	for _, c := range []struct {
		values []string
		want   pprof.Kind
		ok     bool
	}{{nil, pprof.CPU, true}, {[]string{"off_cpu"}, pprof.OffCPU, true}, {[]string{"cpu"}, pprof.CPU, true},
		{[]string{"bogus"}, pprof.CPU, false}, {[]string{"cpu", "off_cpu"}, pprof.CPU, false}} {
		got, err := pageKind(c.values)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("pageKind(%q) = %v, %v", c.values, got, err)
		}
	}
}
