package ui

import (
	"container/list"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/driver"
	"github.com/google/pprof/profile"
)

// pprofViews serves google/pprof's web UI (flame graph, top, source, graph,
// peek) for any history query under /ui/pprof/<spec>/, where spec is the
// query string in unpadded base64url. Keeping the query in the path rather
// than in server state means every link stays valid: an instance evicted
// from the cache is simply rebuilt from its URL.
type pprofViews struct {
	source Source
	max    int

	mu    sync.Mutex
	lru   *list.List // of *instance, most recent first
	byKey map[string]*list.Element
}

type instance struct {
	key      string
	once     sync.Once
	handlers map[string]http.Handler
	err      error
}

// driverMu serializes driver.PProf: it sets package-level state in pprof.
var driverMu sync.Mutex

func newPprofViews(src Source, max int) *pprofViews {
	return &pprofViews{source: src, max: max, lru: list.New(), byKey: map[string]*list.Element{}}
}

// EncodeSpec turns a query string into the path segment of its views.
func EncodeSpec(rawQuery string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(rawQuery))
}

func (v *pprofViews) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/ui/pprof/")
	spec, view, found := strings.Cut(rest, "/")
	if !found {
		http.Redirect(w, r, "/ui/pprof/"+spec+"/", http.StatusMovedPermanently)
		return
	}
	raw, err := base64.RawURLEncoding.DecodeString(spec)
	if err != nil {
		http.Error(w, "bad view path: not base64url", http.StatusBadRequest)
		return
	}
	q, err := url.ParseQuery(string(raw))
	if err != nil {
		http.Error(w, "bad view path: "+err.Error(), http.StatusBadRequest)
		return
	}
	inst := v.get(q.Encode())
	inst.once.Do(func() { inst.handlers, inst.err = v.build(r.Context(), q) })
	if inst.err != nil {
		v.drop(inst)
		status := http.StatusInternalServerError
		var br interface{ BadRequest() bool }
		if errors.As(inst.err, &br) && br.BadRequest() {
			status = http.StatusBadRequest
		}
		http.Error(w, inst.err.Error(), status)
		return
	}
	h := inst.handlers["/"+view]
	if h == nil {
		http.NotFound(w, r)
		return
	}
	h.ServeHTTP(w, r)
}

// get returns the cached instance of key or a new empty one, evicting the
// least recently used beyond max. Evicted instances are garbage once their
// in-flight requests end: pprof's handlers hold no goroutine or file.
func (v *pprofViews) get(key string) *instance {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e, ok := v.byKey[key]; ok {
		v.lru.MoveToFront(e)
		return e.Value.(*instance)
	}
	inst := &instance{key: key}
	v.byKey[key] = v.lru.PushFront(inst)
	for v.lru.Len() > v.max {
		old := v.lru.Remove(v.lru.Back()).(*instance)
		delete(v.byKey, old.key)
	}
	return inst
}

func (v *pprofViews) drop(inst *instance) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e, ok := v.byKey[inst.key]; ok && e.Value == inst {
		v.lru.Remove(e)
		delete(v.byKey, inst.key)
	}
}

// build fetches the query's profile and has pprof make its handlers. With
// HTTPServer set, pprof only hands its handlers over and returns; it opens
// no port (port 0 is never listened on) and starts no goroutine.
func (v *pprofViews) build(ctx context.Context, q url.Values) (map[string]http.Handler, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	p, err := v.source(ctx, q)
	if err != nil {
		return nil, err
	}
	var handlers map[string]http.Handler
	driverMu.Lock()
	defer driverMu.Unlock()
	err = driver.PProf(&driver.Options{
		Flagset: newFlags("-http=localhost:0", "-no_browser", "-symbolize=none", "cgscope-history"),
		Fetch:   fetcher{p},
		UI:      quietUI{},
		HTTPServer: func(args *driver.HTTPServerArgs) error {
			handlers = args.Handlers
			return nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("pprof: %w", err)
	}
	return handlers, nil
}

// fetcher hands pprof the already merged profile. An empty source name
// tells pprof the profile is local, so it saves no copy under ~/pprof.
type fetcher struct{ p *profile.Profile }

func (f fetcher) Fetch(string, time.Duration, time.Duration) (*profile.Profile, string, error) {
	return f.p, "", nil
}

// flags adapts package flag to driver.FlagSet with fixed arguments.
type flags struct {
	*flag.FlagSet
	args []string
}

func newFlags(args ...string) *flags {
	fs := flag.NewFlagSet("pprof", flag.ContinueOnError)
	fs.SetOutput(discard{})
	return &flags{FlagSet: fs, args: args}
}

func (f *flags) StringList(name, def, usage string) *[]*string {
	s := f.String(name, def, usage)
	return &[]*string{s}
}

func (f *flags) ExtraUsage() string   { return "" }
func (f *flags) AddExtraUsage(string) {}
func (f *flags) Parse(func()) []string {
	if err := f.FlagSet.Parse(f.args); err != nil {
		slog.Warn("pprof flags", "err", err)
	}
	return f.FlagSet.Args()
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// quietUI sends pprof's messages to the log instead of a terminal.
type quietUI struct{}

func (quietUI) ReadLine(string) (string, error)     { return "", errors.New("no terminal") }
func (quietUI) Print(args ...any)                   { slog.Debug("pprof", "msg", fmt.Sprint(args...)) }
func (quietUI) PrintErr(args ...any)                { slog.Warn("pprof", "msg", fmt.Sprint(args...)) }
func (quietUI) IsTerminal() bool                    { return false }
func (quietUI) WantBrowser() bool                   { return false }
func (quietUI) SetAutoComplete(func(string) string) {}
