package interp

import "sync"

// Cache holds what runtimes read of processes (names, files, line tables
// of code objects), by owner (one per process image) and address, within
// a byte budget for all processes together: the least recently used
// entries go first, and an owner's entries go with it (its process exec'd
// or exited). A process cannot make it grow beyond its budget, however many
// code objects it has or however long their names.
type Cache struct {
	mu        sync.Mutex
	max       int
	bytes     int
	items     map[cacheKey]*cacheEntry
	lru       cacheEntry             // sentinel of the recency list: lru.next is the newest
	owners    map[uint64]*cacheEntry // sentinel of each owner's list
	evictions uint64
}

type cacheKey struct{ owner, addr uint64 }

type cacheEntry struct {
	key          cacheKey
	value        any
	size         int
	prev, next   *cacheEntry // recency
	oprev, onext *cacheEntry // the owner's entries
}

// entryOverhead is what an entry costs beyond its value's bytes: the map
// slot, the entry and the value's headers.
const entryOverhead = 160

// NewCache returns a cache of at most maxBytes.
func NewCache(maxBytes int) *Cache {
	c := &Cache{max: maxBytes, items: map[cacheKey]*cacheEntry{}, owners: map[uint64]*cacheEntry{}}
	c.lru.prev, c.lru.next = &c.lru, &c.lru
	return c
}

// Get returns the value of owner's addr.
func (c *Cache) Get(owner, addr uint64) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[cacheKey{owner, addr}]
	if !ok {
		return nil, false
	}
	c.unlink(e)
	c.pushFront(e)
	return e.value, true
}

// Put stores the value of owner's addr, of size bytes, evicting the least
// recently used entries to make room. A value larger than the whole budget
// is not stored.
func (c *Cache) Put(owner, addr uint64, value any, size int) {
	size += entryOverhead
	c.mu.Lock()
	defer c.mu.Unlock()
	k := cacheKey{owner, addr}
	if e, ok := c.items[k]; ok {
		c.remove(e)
	}
	if size > c.max {
		return
	}
	for c.bytes+size > c.max && c.lru.prev != &c.lru {
		c.remove(c.lru.prev)
		c.evictions++
	}
	e := &cacheEntry{key: k, value: value, size: size}
	c.items[k] = e
	c.pushFront(e)
	head := c.owners[owner]
	if head == nil {
		head = &cacheEntry{}
		head.oprev, head.onext = head, head
		c.owners[owner] = head
	}
	e.oprev, e.onext = head, head.onext
	head.onext.oprev = e
	head.onext = e
	c.bytes += size
}

// DropOwner removes every entry of owner.
func (c *Cache) DropOwner(owner uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	head := c.owners[owner]
	if head == nil {
		return
	}
	for head.onext != head {
		c.remove(head.onext)
	}
	delete(c.owners, owner)
}

// CacheStats are a Cache's size and evictions.
type CacheStats struct {
	Bytes, Entries int
	Evictions      uint64
}

// Stats returns the cache's size and evictions so far.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Bytes: c.bytes, Entries: len(c.items), Evictions: c.evictions}
}

func (c *Cache) pushFront(e *cacheEntry) {
	e.prev, e.next = &c.lru, c.lru.next
	c.lru.next.prev = e
	c.lru.next = e
}

func (c *Cache) unlink(e *cacheEntry) {
	e.prev.next = e.next
	e.next.prev = e.prev
}

// remove drops e from the map and both lists. An owner left without
// entries keeps its (empty) list until DropOwner.
func (c *Cache) remove(e *cacheEntry) {
	c.unlink(e)
	e.oprev.onext = e.onext
	e.onext.oprev = e.oprev
	delete(c.items, e.key)
	c.bytes -= e.size
}
