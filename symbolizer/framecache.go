package symbolizer

import (
	"sync"
	"sync/atomic"
)

// defaultFrameCacheSize is how many looked-up addresses the frame cache
// remembers: a host's hot code is some thousands of return addresses, and
// a slot is 80 bytes, so the slots take 1.25 MiB. The names they refer to
// are the objects' own (kept while the object is cached); a slot of an
// evicted object keeps its name alone alive until it is replaced, a few
// dozen bytes as a rule (names are cut at maxSymbolName).
const defaultFrameCacheSize = 16384

// frameCache remembers what Object.LookupFrame said of recent object
// addresses. The same addresses come back every drain (the hot loops of
// long-lived processes, and the same binary in every new process of a
// build or a batch job), and looking one up again in a Go line table or an
// ELF symbol table costs about a microsecond, against tens of nanoseconds
// here.
//
// It is two-way set-associative: an address has a set of two slots, the
// one used last first, and a new entry replaces the other. That bounds it
// without bookkeeping beyond the order of two slots, and keeps two hot
// addresses of one set from evicting each other. Entries are keyed by the
// object's id, not its pointer, so that an object evicted from the object
// cache is neither kept alive by its entries nor confused with one
// allocated later at the same address; its entries are simply never
// matched again.
type frameCache struct {
	mu           sync.Mutex
	slots        []cachedFrame // sets of two: slots[2*set] is the one used last
	shift        uint          // 64 - log2(number of sets)
	hits, misses atomic.Uint64
}

// cachedFrame is one slot; object id 0 marks an empty one (ids start at 1).
type cachedFrame struct {
	object, addr uint64
	fn, file     string
	line         int
	inlined      []InlinedCall // shared, read-only, as Frame.Inlined is
}

// newFrameCache returns a cache of size slots rounded up to a power of
// two (at least one set of two); nil, which caches nothing, for size < 0.
func newFrameCache(size int) *frameCache {
	if size < 0 {
		return nil
	}
	if size == 0 {
		size = defaultFrameCacheSize
	}
	sets, shift := 1, uint(64)
	for 2*sets < size {
		sets <<= 1
		shift--
	}
	return &frameCache{slots: make([]cachedFrame, 2*sets), shift: shift}
}

// lookupFrame is o.LookupFrame(objAddr), from the cache when it has it.
func (c *frameCache) lookupFrame(o *Object, objAddr uint64) (fn, file string, line int, inlined []InlinedCall) {
	if c == nil || o.id == 0 {
		return o.LookupFrame(objAddr)
	}
	// Fibonacci hashing of address and object: neighbouring addresses and
	// the same address in two objects land in different sets. (A shift by
	// 64, for one set, gives 0 in Go.)
	set := c.slots[2*(((objAddr^o.id*0xff51afd7ed558ccd)*0x9e3779b97f4a7c15)>>c.shift):][:2]
	c.mu.Lock()
	for k := range set {
		if e := &set[k]; e.object == o.id && e.addr == objAddr {
			fn, file, line, inlined = e.fn, e.file, e.line, e.inlined
			if k == 1 {
				set[0], set[1] = set[1], set[0]
			}
			c.mu.Unlock()
			c.hits.Add(1)
			return fn, file, line, inlined
		}
	}
	c.mu.Unlock()
	c.misses.Add(1)
	fn, file, line, inlined = o.LookupFrame(objAddr)
	c.mu.Lock()
	set[1] = set[0]
	set[0] = cachedFrame{object: o.id, addr: objAddr, fn: fn, file: file, line: line, inlined: inlined}
	c.mu.Unlock()
	return fn, file, line, inlined
}

func (c *frameCache) hitCount() uint64 {
	if c == nil {
		return 0
	}
	return c.hits.Load()
}

func (c *frameCache) missCount() uint64 {
	if c == nil {
		return 0
	}
	return c.misses.Load()
}

// objectIDs numbers Objects, for the frame cache's keys.
var objectIDs atomic.Uint64
