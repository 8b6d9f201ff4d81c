// Package ui serves cgscope's web UI: a page at / to pick a time range and
// see the top cgroups, containers and processes by CPU from the profile
// history, and google/pprof's own web views (flame graph, top, source,
// graph) for any of them, mounted under /ui/pprof/ in cgscope's server.
// Every asset is embedded in the binary: the UI works with no network.
package ui

import (
	"context"
	_ "embed"
	"html/template"
	"net/http"
	"net/url"

	"github.com/google/pprof/profile"
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
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		indexTmpl.Execute(w, o)
	})
	return mux
}
