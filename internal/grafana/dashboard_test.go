package grafana

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExpand(t *testing.T) {
	values := Builtins(15*time.Second, 2*time.Second, 5*time.Minute)
	values["node"] = ".*"
	values["top"] = "10"
	for _, c := range []struct{ in, want, err string }{
		{`rate(x{node=~"$node"}[$__rate_interval])`, `rate(x{node=~".*"}[15s])`, ""},
		{`topk(${top}, x{node=~"${node:regex}"}[$__range])`, `topk(10, x{node=~".*"}[5m])`, ""},
		{`x[$__interval] offset ${__range_s}s`, `x[2s] offset 300s`, ""},
		{`label_replace(x, "a", "$1", "b", "(.*)")`, `label_replace(x, "a", "$1", "b", "(.*)")`, ""},
		{`x{node=~"$nodes"}`, "", "$nodes: unknown variable"},
		{`x{node=~"[[node]]"}`, "", "deprecated"},
		{`x{node=~"${node:csv}"}`, "", "unsupported format"},
	} {
		got, err := Expand(c.in, values)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Expand(%q): err %v, want one containing %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Expand(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestParseLabelValues(t *testing.T) {
	for _, c := range []struct{ in, sel, label string }{
		{`label_values(node)`, "", "node"},
		{`label_values(up{job="a", x=~"$y"}, instance)`, `up{job="a", x=~"$y"}`, "instance"},
		{` label_values( m , pod ) `, "m", "pod"},
	} {
		sel, label, err := ParseLabelValues(c.in)
		if err != nil || sel != c.sel || label != c.label {
			t.Errorf("ParseLabelValues(%q) = %q, %q, %v; want %q, %q", c.in, sel, label, err, c.sel, c.label)
		}
	}
	for _, bad := range []string{`query_result(up)`, `label_values()`, `label_values(up, 1abc)`} {
		if _, _, err := ParseLabelValues(bad); err == nil {
			t.Errorf("ParseLabelValues(%q): no error", bad)
		}
	}
}

func TestRegexValue(t *testing.T) {
	if got, want := RegexValue(`/a.b/c+d`), `/a\\.b/c\\+d`; got != want {
		t.Errorf("RegexValue = %q, want %q", got, want)
	}
}

// A collapsed row's panels and both forms of a variable query are read.
func TestLoad(t *testing.T) {
	doc := map[string]any{
		"uid": "u", "title": "T", "schemaVersion": 39,
		"panels": []any{
			map[string]any{"id": 1, "type": "row", "collapsed": true, "panels": []any{
				map[string]any{"id": 2, "type": "timeseries", "targets": []any{map[string]any{"refId": "A", "expr": "up"}}},
			}},
		},
		"templating": map[string]any{"list": []any{
			map[string]any{"name": "a", "type": "query", "query": "label_values(a)"},
			map[string]any{"name": "b", "type": "query", "query": map[string]any{"query": "label_values(b)", "qryType": 1}},
			map[string]any{"name": "c", "type": "custom", "query": "1,2", "current": map[string]any{"value": []any{"2"}}},
		}},
	}
	data, _ := json.Marshal(doc)
	path := filepath.Join(t.TempDir(), "d.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := d.AllPanels()
	if len(ps) != 2 || ps[1].ID != 2 || ps[1].Targets[0].Expr != "up" {
		t.Errorf("AllPanels = %+v, want the row and its nested panel", ps)
	}
	for i, want := range []string{"label_values(a)", "label_values(b)", "1,2"} {
		if got, err := d.Templating.List[i].QueryText(); err != nil || got != want {
			t.Errorf("variable %d: QueryText = %q, %v; want %q", i, got, err, want)
		}
	}
	if got := d.Templating.List[2].CurrentValue(); got != "2" {
		t.Errorf("CurrentValue = %q, want 2", got)
	}
	if err := os.WriteFile(path, []byte(`{"panels": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Load of truncated JSON: err %v, want one naming the file", err)
	}
}
