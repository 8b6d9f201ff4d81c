// Package ui serves cgscope's web UI: a page at / to pick a time range and
// a profile type (CPU, or off-CPU: where threads waited) and see the top
// cgroups, containers and processes by that time from the profile history,
// and google/pprof's own web views (flame graph, top, source, graph) for
// any of them, mounted under /ui/pprof/ in cgscope's server. The page's
// URL carries the type and range (/?type=off_cpu&last=3600), so a link
// shows what its sender saw. Every asset is embedded in the binary: the UI
// works with no network.
package ui

import (
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/exporter/pprof"
)

// Source returns the merged profile of a history query (the parameters of
// /api/v1/profile). An error with a BadRequest() bool method returning true
// is answered 400.
type Source func(ctx context.Context, q url.Values) (*profile.Profile, error)

// Link is an extra endpoint listed on the page.
type Link struct{ Address, Text, Description string }

// Options configure the UI.
type Options struct {
	Source  Source
	Links   []Link
	Version string
	// MaxViews bounds the cached pprof views (each holds one merged
	// profile); default 8.
	MaxViews int
}

//go:embed index.html
var indexHTML string

var indexTmpl = template.Must(template.New("index").Parse(indexHTML))

// New returns the UI handler; mount it at "/{$}" and "/ui/".
func New(o Options) http.Handler {
	if o.MaxViews <= 0 {
		o.MaxViews = 8
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/pprof/", newPprofViews(o.Source, o.MaxViews))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { serveIndex(w, r, &o) })
	return mux
}

// kindText is how the page speaks of a profile kind, and where its time is
// in /api/v1/targets' answer.
type kindText struct {
	Title        string // on the switch
	About        string // what the page shows
	Events       string // what the answer's samples count
	Seconds      string // the time column's heading
	SecondsField string // a target's time
	TotalField   string // the total time
}

var kindTexts = map[pprof.Kind]kindText{
	pprof.CPU: {Title: "CPU", About: "where threads ran on a CPU", Events: "samples",
		Seconds: "CPU s", SecondsField: "cpu_seconds", TotalField: "total_cpu_seconds"},
	pprof.OffCPU: {Title: "Off-CPU", About: "where threads waited off the CPU (preempted, sleeping, in I/O)",
		Events: "switches off the CPU", Seconds: "off-CPU s", SecondsField: "off_cpu_seconds", TotalField: "total_off_cpu_seconds"},
}

// kindChoice is one position of the page's switch.
type kindChoice struct {
	Type string // type= value
	kindText
	On bool
}

// indexPage is what the page template shows.
type indexPage struct {
	*Options
	Type string // the kind shown
	kindText
	Kinds []kindChoice
}

// serveIndex renders the page for the kind in the URL's type= (cpu when
// absent); any other parameter is the page's script's (the range).
func serveIndex(w http.ResponseWriter, r *http.Request, o *Options) {
	kind, err := pageKind(r.URL.Query()["type"])
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	page := indexPage{Options: o, Type: kind.String(), kindText: kindTexts[kind]}
	for _, k := range pprof.Kinds() {
		page.Kinds = append(page.Kinds, kindChoice{Type: k.String(), kindText: kindTexts[k], On: k == kind})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := indexTmpl.Execute(w, page); err != nil {
		slog.Warn("writing the UI page failed", "err", err)
	}
}

// pageKind reads the page's type= values: none is CPU.
func pageKind(values []string) (pprof.Kind, error) {
	switch len(values) {
	case 0:
		return pprof.CPU, nil
	case 1:
		return pprof.ParseKind(values[0])
	}
	return pprof.CPU, fmt.Errorf("parameter \"type\" given %d times, want once", len(values))
}
