package charts

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/cgscope/cgscope/internal/grafana"
)

// dashboardDir holds the Grafana dashboards the chart ships as ConfigMaps
// and that users import as plain JSON.
const dashboardDir = "cgscope/dashboards"

// dashboardWant is what each shipped dashboard must be called.
var dashboardWant = map[string]struct{ uid, title string }{
	"cgscope-workloads.json": {"cgscope-workloads", "cgscope / Workloads"},
	"cgscope-agent.json":     {"cgscope-agent", "cgscope / Agent"},
}

// dashboardPanelTypes are the current Grafana panel types the dashboards
// may use (no deprecated graph or singlestat).
var dashboardPanelTypes = []string{"row", "timeseries", "stat", "table", "heatmap", "bargauge", "gauge"}

// dashboardPromQL parses with the default options: no experimental
// functions or syntax, which the Prometheus servers users run may lack.
var dashboardPromQL = parser.NewParser(parser.Options{})

// The shipped dashboards are the expected ones, and each passes every check.
func TestDashboards(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(dashboardDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for name := range dashboardWant {
		if !slices.Contains(names, name) {
			t.Errorf("%s missing from %s (have %v)", name, dashboardDir, names)
		}
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			d, err := grafana.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			want, ok := dashboardWant[filepath.Base(f)]
			if !ok {
				t.Fatalf("unexpected dashboard file %s: add it to dashboardWant", f)
			}
			for _, p := range dashboardProblems(d, want.uid, want.title) {
				t.Error(p)
			}
			t.Logf("%d panels, %d queries", len(d.AllPanels()), dashboardQueryCount(d))
		})
	}
}

// The checks fail on the mistakes they exist for.
func TestDashboardChecksCatchMistakes(t *testing.T) {
	load := func(t *testing.T) *grafana.Dashboard {
		d, err := grafana.Load(filepath.Join(dashboardDir, "cgscope-workloads.json"))
		if err != nil {
			t.Fatal(err)
		}
		if p := dashboardProblems(d, "cgscope-workloads", "cgscope / Workloads"); len(p) > 0 {
			t.Fatalf("the shipped dashboard already has problems: %v", p)
		}
		return d
	}
	// firstTarget is the first panel with a query.
	firstTarget := func(d *grafana.Dashboard) *grafana.Target {
		for i := range d.Panels {
			if len(d.Panels[i].Targets) > 0 {
				return &d.Panels[i].Targets[0]
			}
		}
		t.Fatal("no panel with a target")
		return nil
	}
	for _, c := range []struct {
		name, want string
		mutate     func(d *grafana.Dashboard)
	}{
		{"broken PromQL", "unclosed left parenthesis", func(d *grafana.Dashboard) {
			firstTarget(d).Expr = `sum(rate(cgscope_cgroup_cpu_seconds_total{node=~"$node", namespace=~"$namespace", pod=~"$pod", container=~"$container", cgroup=~"$cgroup"}[$__rate_interval])`
		}},
		{"unknown variable", "$nodes: unknown variable", func(d *grafana.Dashboard) {
			firstTarget(d).Expr = `sum(cgscope_cgroup_cpu_seconds_total{node=~"$nodes"})`
		}},
		{"selector ignores a variable", `does not filter on $cgroup`, func(d *grafana.Dashboard) {
			firstTarget(d).Expr = `count(cgscope_cgroup_cpu_seconds_total{node=~"$node", namespace=~"$namespace", pod=~"$pod", container=~"$container"})`
		}},
		{"panel without the datasource variable", "datasource", func(d *grafana.Dashboard) {
			for i := range d.Panels {
				if d.Panels[i].Type != "row" {
					d.Panels[i].Datasource = &grafana.DataSourceRef{Type: "prometheus", UID: "P1809F7CD0C75ACF3"}
					return
				}
			}
		}},
		{"duplicate panel id", "duplicate panel id", func(d *grafana.Dashboard) {
			d.Panels[1].ID = d.Panels[0].ID
		}},
		{"target without refId", "no refId", func(d *grafana.Dashboard) { firstTarget(d).RefID = "" }},
		{"old schema", "schemaVersion", func(d *grafana.Dashboard) { d.SchemaVersion = 16 }},
		{"unchained variable", "does not filter on $node", func(d *grafana.Dashboard) {
			for i, v := range d.Templating.List {
				if v.Name == "namespace" {
					d.Templating.List[i].Query = []byte(`"label_values(cgscope_cgroup_cpu_seconds_total, namespace)"`)
				}
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := load(t)
			c.mutate(d)
			problems := dashboardProblems(d, "cgscope-workloads", "cgscope / Workloads")
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, c.want) }) {
				t.Errorf("problems %q, want one containing %q", problems, c.want)
			}
		})
	}
}

func dashboardQueryCount(d *grafana.Dashboard) int {
	n := 0
	for _, p := range d.AllPanels() {
		n += len(p.Targets)
	}
	return n
}

// dashboardProblems lists everything wrong with d, so that one run reports
// all of it.
func dashboardProblems(d *grafana.Dashboard, uid, title string) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if d.UID != uid {
		add("uid %q, want %q", d.UID, uid)
	}
	if d.Title != title {
		add("title %q, want %q", d.Title, title)
	}
	if d.SchemaVersion < 39 {
		add("schemaVersion %d, want ≥ 39 (the current JSON model)", d.SchemaVersion)
	}
	if !slices.Contains(d.Tags, "cgscope") {
		add("tags %v lack cgscope", d.Tags)
	}
	if !slices.ContainsFunc(d.Links, func(l grafana.Link) bool {
		return l.Type == "dashboards" && slices.Contains(l.Tags, "cgscope")
	}) {
		add("no link to the other cgscope dashboards (type dashboards, tag cgscope)")
	}
	values, filters, varProblems := dashboardVariables(d)
	out = append(out, varProblems...)
	out = append(out, dashboardPanelProblems(d, values, filters)...)
	return out
}

// dashboardSentinel is what a filter variable expands to in the checks: a
// value no real label has, so that a matcher on it is recognisable.
func dashboardSentinel(name string) string { return "sentinel_" + name }

// dashboardVariables checks the template variables and returns the value
// each expands to in the checks, and the names of the filter (query)
// variables every selector must honour.
func dashboardVariables(d *grafana.Dashboard) (values map[string]string, filters []string, problems []string) {
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	values = grafana.Builtins(time.Minute, 15*time.Second, time.Hour)
	list := d.Templating.List
	if len(list) == 0 || list[0].Name != "datasource" || list[0].Type != "datasource" || string(list[0].Query) != `"prometheus"` {
		add("the first variable must be datasource, of type datasource, query prometheus")
	}
	for _, v := range list {
		if _, dup := values[v.Name]; dup {
			add("variable %s defined twice", v.Name)
		}
		switch v.Type {
		case "datasource":
			values[v.Name] = "prometheus"
		case "custom":
			values[v.Name] = v.CurrentValue()
			if values[v.Name] == "" {
				add("custom variable %s has no current value", v.Name)
			}
		case "query":
			problems = append(problems, dashboardQueryVariableProblems(v, values, filters)...)
			values[v.Name] = dashboardSentinel(v.Name)
			filters = append(filters, v.Name)
		default:
			add("variable %s: type %q not expected", v.Name, v.Type)
		}
	}
	return values, filters, problems
}

// dashboardQueryVariableProblems checks one label_values variable: it reads
// the label of its name, offers All as ".*" (so that cgroups without
// Kubernetes labels match), and filters on every variable before it.
func dashboardQueryVariableProblems(v grafana.Variable, values map[string]string, before []string) []string {
	var out []string
	add := func(format string, args ...any) {
		out = append(out, fmt.Sprintf("variable %s: "+format, append([]any{v.Name}, args...)...))
	}
	if !dashboardIsDatasourceVar(v.Datasource) {
		add("datasource %+v, want the ${datasource} variable", v.Datasource)
	}
	if !v.IncludeAll || v.AllValue != ".*" {
		add("includeAll %v allValue %q, want All as .*", v.IncludeAll, v.AllValue)
	}
	q, err := v.QueryText()
	if err != nil {
		add("%v", err)
		return out
	}
	if v.Definition != "" && v.Definition != q {
		add("definition %q differs from the query %q Grafana runs", v.Definition, q)
	}
	selector, label, err := grafana.ParseLabelValues(q)
	if err != nil {
		add("%v", err)
		return out
	}
	if label != v.Name {
		add("reads label %s, want %s", label, v.Name)
	}
	if selector == "" {
		add("label_values without a metric lists the label over every series; name a cgscope metric")
		return out
	}
	expanded, err := grafana.Expand(selector, values)
	if err != nil {
		add("%v", err)
		return out
	}
	matchers, err := dashboardPromQL.ParseMetricSelector(expanded)
	if err != nil {
		add("selector %s: %v", expanded, err)
		return out
	}
	for _, name := range before {
		if !dashboardFiltersOn(matchers, name) {
			add("selector %s does not filter on $%s (variables must chain)", selector, name)
		}
	}
	return out
}

func dashboardIsDatasourceVar(ds *grafana.DataSourceRef) bool {
	return ds != nil && ds.Type == "prometheus" && ds.UID == "${datasource}"
}

// dashboardFiltersOn reports whether matchers restrict label name by the
// variable of the same name, as name=~"$name".
func dashboardFiltersOn(matchers []*labels.Matcher, name string) bool {
	return slices.ContainsFunc(matchers, func(m *labels.Matcher) bool {
		return m.Name == name && m.Type == labels.MatchRegexp && m.Value == dashboardSentinel(name)
	})
}

// dashboardPanelProblems checks the panels' layout, data sources and
// queries: every query parses after expansion, and every selector in it
// honours every filter variable.
func dashboardPanelProblems(d *grafana.Dashboard, values map[string]string, filters []string) []string {
	var out []string
	ids := map[int]bool{}
	for _, p := range d.AllPanels() {
		add := func(format string, args ...any) {
			out = append(out, fmt.Sprintf("panel %d %q: "+format, append([]any{p.ID, p.Title}, args...)...))
		}
		if ids[p.ID] {
			add("duplicate panel id")
		}
		ids[p.ID] = true
		if !slices.Contains(dashboardPanelTypes, p.Type) {
			add("type %q not one of %v", p.Type, dashboardPanelTypes)
		}
		if g := p.GridPos; g == nil || g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 || g.Y < 0 {
			add("gridPos %+v outside the 24-column grid", p.GridPos)
		}
		if p.Title == "" {
			add("no title")
		}
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				add("a row with queries")
			}
			continue
		}
		if !dashboardIsDatasourceVar(p.Datasource) {
			add("datasource %+v, want {prometheus ${datasource}}", p.Datasource)
		}
		if len(p.Targets) == 0 {
			add("no queries")
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" {
				add("a target with no refId")
			} else if refs[tg.RefID] {
				add("refId %s used twice", tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil && !dashboardIsDatasourceVar(tg.Datasource) {
				add("target %s: datasource %+v, want {prometheus ${datasource}}", tg.RefID, tg.Datasource)
			}
			for _, e := range dashboardExprProblems(tg.Expr, values, filters) {
				add("target %s: %s", tg.RefID, e)
			}
		}
	}
	return out
}

// dashboardExprProblems expands and parses one query, and checks that each
// of its selectors filters on every filter variable.
func dashboardExprProblems(expr string, values map[string]string, filters []string) []string {
	if strings.TrimSpace(expr) == "" {
		return []string{"empty expr"}
	}
	expanded, err := grafana.Expand(expr, values)
	if err != nil {
		return []string{err.Error()}
	}
	node, err := dashboardPromQL.ParseExpr(expanded)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", expr, err)}
	}
	var out []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		for _, name := range filters {
			if !dashboardFiltersOn(vs.LabelMatchers, name) {
				out = append(out, fmt.Sprintf("selector %s does not filter on $%s", vs.Name, name))
			}
		}
		return nil
	})
	return out
}
