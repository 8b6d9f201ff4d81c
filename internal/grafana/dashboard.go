// Package grafana reads the parts of a Grafana dashboard (the JSON model of
// Grafana 10 and later, schemaVersion 39+) that cgscope's dashboard tests
// check: panels, their Prometheus targets and the template variables. It
// expands template variables in a query the way Grafana does before it sends
// the query to Prometheus, so that the tests can parse the result and run it
// against a real Prometheus.
package grafana

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// Dashboard is the subset of Grafana's dashboard JSON model the tests read.
type Dashboard struct {
	UID           string     `json:"uid"`
	Title         string     `json:"title"`
	SchemaVersion int        `json:"schemaVersion"`
	Tags          []string   `json:"tags"`
	Links         []Link     `json:"links"`
	Panels        []Panel    `json:"panels"`
	Templating    Templating `json:"templating"`
}

// Link is a dashboard link: type "dashboards" lists dashboards by tag, type
// "link" points at a URL.
type Link struct {
	Title string   `json:"title"`
	Type  string   `json:"type"`
	Tags  []string `json:"tags"`
	URL   string   `json:"url"`
}

// DataSourceRef names a data source by type and uid; the uid may be a
// variable such as "${datasource}".
type DataSourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// GridPos places a panel on the 24-column grid.
type GridPos struct {
	H int `json:"h"`
	W int `json:"w"`
	X int `json:"x"`
	Y int `json:"y"`
}

// Panel is one panel; a collapsed row holds its panels in Panels.
type Panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *DataSourceRef `json:"datasource"`
	GridPos    *GridPos       `json:"gridPos"`
	Targets    []Target       `json:"targets"`
	Panels     []Panel        `json:"panels"`
}

// Target is one query of a panel.
type Target struct {
	RefID        string         `json:"refId"`
	Expr         string         `json:"expr"`
	Datasource   *DataSourceRef `json:"datasource"`
	Instant      bool           `json:"instant"`
	Format       string         `json:"format"`
	LegendFormat string         `json:"legendFormat"`
}

// Templating holds the dashboard's variables, in the order Grafana
// resolves them.
type Templating struct {
	List []Variable `json:"list"`
}

// Variable is a template variable. Query is a string for most types and an
// object ({"query": "label_values(...)", ...}) for Prometheus query
// variables in current Grafana.
type Variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Datasource *DataSourceRef  `json:"datasource"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
	Multi      bool            `json:"multi"`
	Current    struct {
		Value any `json:"value"`
	} `json:"current"`
}

// Load reads and decodes a dashboard file.
func Load(path string) (*Dashboard, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}

// AllPanels returns every panel, rows included, with the panels of
// collapsed rows after their row, in document order.
func (d *Dashboard) AllPanels() []Panel {
	var out []Panel
	var walk func([]Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// QueryText is the variable's query: the string itself, or the "query"
// field of the object form.
func (v Variable) QueryText() (string, error) {
	if len(v.Query) == 0 {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(v.Query, &s); err == nil {
		return s, nil
	}
	var obj struct {
		Query string `json:"query"`
	}
	if err := json.Unmarshal(v.Query, &obj); err != nil {
		return "", fmt.Errorf("variable %s: query is neither a string nor an object with a query: %w", v.Name, err)
	}
	return obj.Query, nil
}

// CurrentValue is the variable's saved current value ("" if none; the
// first one if several).
func (v Variable) CurrentValue() string {
	switch c := v.Current.Value.(type) {
	case string:
		return c
	case []any:
		if len(c) > 0 {
			s, _ := c[0].(string)
			return s
		}
	}
	return ""
}

var labelValuesCall = regexp.MustCompile(`^\s*label_values\(\s*(?:(.*\S)\s*,\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

// ParseLabelValues splits Grafana's label_values(selector, label) (the
// selector is optional) into its parts.
func ParseLabelValues(query string) (selector, label string, err error) {
	m := labelValuesCall.FindStringSubmatch(query)
	if m == nil {
		return "", "", fmt.Errorf("%q is not label_values([selector, ]label)", query)
	}
	return m[1], m[2], nil
}

// variableRef matches what Grafana's template service treats as a variable:
// $name, ${name}, ${name:format} and the deprecated [[name]].
var variableRef = regexp.MustCompile(`\$([a-zA-Z0-9_]+)|\$\{([a-zA-Z0-9_]+)(?::([^}]+))?\}|\[\[([a-zA-Z0-9_]+)(?::[^\]]+)?\]\]`)

// knownFormats are the ${var:format} formats that leave a single value as
// it is, as the tests supply it.
var knownFormats = map[string]bool{"": true, "regex": true, "raw": true, "pipe": true}

// Expand replaces every variable in text with its value from values (keyed
// by name without the dollar). An unknown variable, a format other than
// regex/raw/pipe, or the deprecated [[name]] syntax is an error, so that a
// typo cannot survive as literal text in a query. $1, $2… (regular
// expression group references) are left alone.
func Expand(text string, values map[string]string) (string, error) {
	var errs []string
	out := variableRef.ReplaceAllStringFunc(text, func(ref string) string {
		m := variableRef.FindStringSubmatch(ref)
		name, format := m[1]+m[2], m[3]
		switch {
		case m[4] != "":
			errs = append(errs, fmt.Sprintf("%s: deprecated [[...]] syntax, use ${%s}", ref, m[4]))
			return ref
		case isDigits(name):
			return ref
		case !knownFormats[format]:
			errs = append(errs, fmt.Sprintf("%s: unsupported format %q", ref, format))
			return ref
		}
		v, ok := values[name]
		if !ok {
			errs = append(errs, fmt.Sprintf("%s: unknown variable", ref))
			return ref
		}
		return v
	})
	if len(errs) > 0 {
		return "", fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return out, nil
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// Builtins returns Grafana's global interval variables for the given
// $__rate_interval, $__interval and $__range, in Prometheus duration
// syntax.
func Builtins(rateInterval, interval, rangeDur time.Duration) map[string]string {
	return map[string]string{
		"__rate_interval": model.Duration(rateInterval).String(),
		"__interval":      model.Duration(interval).String(),
		"__interval_ms":   fmt.Sprint(interval.Milliseconds()),
		"__range":         model.Duration(rangeDur).String(),
		"__range_s":       fmt.Sprint(int64(rangeDur.Seconds())),
		"__range_ms":      fmt.Sprint(rangeDur.Milliseconds()),
	}
}

// RegexValue is how Grafana writes one selected value of a multi-value or
// include-all variable into a Prometheus query: regex metacharacters
// escaped, and the escapes doubled for the PromQL string literal.
func RegexValue(s string) string {
	return strings.ReplaceAll(regexp.QuoteMeta(s), `\`, `\\`)
}
