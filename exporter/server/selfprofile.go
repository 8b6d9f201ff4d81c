package server

import (
	"net/http"
	"net/http/pprof"
	"strings"
)

// mountSelfProfiling serves net/http/pprof's handlers under /debug/self/pprof/.
func mountSelfProfiling(mux *http.ServeMux) {
	const prefix = "/debug/self/pprof/"
	mux.HandleFunc(prefix, func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, prefix)
		switch name {
		case "", "cmdline", "profile", "symbol", "trace":
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/debug/pprof/" + name
			map[string]http.HandlerFunc{"": pprof.Index, "cmdline": pprof.Cmdline, "profile": pprof.Profile,
				"symbol": pprof.Symbol, "trace": pprof.Trace}[name](w, r2)
		default:
			pprof.Handler(name).ServeHTTP(w, r)
		}
	})
}
