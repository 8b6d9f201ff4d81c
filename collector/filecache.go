package collector

import (
	"context"
	"sync"
	"time"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/internal/every"
)

// FileSource reads what cgroup files know about a cgroup2 path
// (cgroup.FileReader).
type FileSource interface {
	Read(path string) (cgroup.FileStats, error)
}

// FileCache keeps cgroup file figures fresh in the background, so a
// scrape of a thousand cgroups costs map lookups rather than thousands of
// file reads. A cgroup seen for the first time is read during the scrape
// while the scrape's budget lasts; after that it is read by Run every
// interval. Entries no scrape asked for in ten intervals are dropped, so the
// cache is bounded by what is exported.
type FileCache struct {
	src      FileSource
	interval time.Duration
	budget   time.Duration // synchronous reads allowed per scrape

	mu      sync.Mutex
	entries map[string]*fileEntry
}

type fileEntry struct {
	stats     cgroup.FileStats
	ok        bool // read at least once without error
	lastAsked time.Time
}

// NewFileCache wraps src. interval is how often Run re-reads; budget
// caps the reads one scrape may do itself.
func NewFileCache(src FileSource, interval, budget time.Duration) *FileCache {
	return &FileCache{src: src, interval: interval, budget: budget, entries: map[string]*fileEntry{}}
}

// Read answers from the cache. It reads a cgroup it
// has never seen only while the scrape that began at scrapeStart is within
// budget; past it, the cgroup's file figures appear from the next refresh.
func (c *FileCache) Read(path string, scrapeStart time.Time) (cgroup.FileStats, bool) {
	c.mu.Lock()
	e := c.entries[path]
	if e == nil {
		e = &fileEntry{}
		c.entries[path] = e
	}
	e.lastAsked = time.Now()
	if e.ok || time.Since(scrapeStart) > c.budget {
		st, ok := e.stats, e.ok
		c.mu.Unlock()
		return st, ok
	}
	c.mu.Unlock()
	st, err := c.src.Read(path)
	c.store(path, st, err)
	return st, err == nil
}

func (c *FileCache) store(path string, st cgroup.FileStats, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[path]; e != nil {
		e.stats, e.ok = st, err == nil
	}
}

// Run refreshes every cached cgroup each interval until ctx ends.
func (c *FileCache) Run(ctx context.Context) {
	every.Run(ctx, c.interval, c.Refresh)
}

// Refresh re-reads every cached cgroup at once; Run does it every interval.
func (c *FileCache) Refresh() {
	for _, path := range c.wanted() {
		st, err := c.src.Read(path)
		c.store(path, st, err)
	}
}

// wanted drops entries no scrape asked for lately and lists the rest.
func (c *FileCache) wanted() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	stale := time.Now().Add(-10 * c.interval)
	paths := make([]string, 0, len(c.entries))
	for p, e := range c.entries {
		if e.lastAsked.Before(stale) {
			delete(c.entries, p)
			continue
		}
		paths = append(paths, p)
	}
	return paths
}
