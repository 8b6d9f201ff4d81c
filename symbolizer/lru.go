package symbolizer

// lru is a bounded map that evicts the least recently used entry. It is not safe for
// concurrent use; the Symbolizer guards each one with its mutex.
type lru[K comparable, V any] struct {
	max   int
	items map[K]*lruNode[K, V]
	root  lruNode[K, V] // sentinel: root.next is the most recently used

	// onEvict, if set, is called with every value that leaves the cache: evicted, removed
	// or replaced by put.
	onEvict func(K, V)
	// evicted counts the entries put pushed out for room: what the bound cost.
	evicted uint64
}

type lruNode[K comparable, V any] struct {
	key        K
	val        V
	prev, next *lruNode[K, V]
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	l := &lru[K, V]{max: max, items: make(map[K]*lruNode[K, V])}
	l.root.prev, l.root.next = &l.root, &l.root
	return l
}

func (l *lru[K, V]) get(k K) (V, bool) {
	n, ok := l.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	l.moveToFront(n)
	return n.val, true
}

// peek returns the value without making it recently used.
func (l *lru[K, V]) peek(k K) (V, bool) {
	n, ok := l.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	return n.val, true
}

func (l *lru[K, V]) put(k K, v V) {
	if n, ok := l.items[k]; ok {
		old := n.val
		n.val = v
		l.moveToFront(n)
		if l.onEvict != nil {
			l.onEvict(k, old)
		}
		return
	}
	n := &lruNode[K, V]{key: k, val: v}
	l.items[k] = n
	l.insertFront(n)
	if len(l.items) > l.max {
		l.evicted++
		l.remove(l.root.prev.key)
	}
}

func (l *lru[K, V]) remove(k K) {
	n, ok := l.items[k]
	if !ok {
		return
	}
	n.prev.next, n.next.prev = n.next, n.prev
	n.prev, n.next = nil, nil
	delete(l.items, k)
	if l.onEvict != nil {
		l.onEvict(k, n.val)
	}
}

func (l *lru[K, V]) len() int { return len(l.items) }

func (l *lru[K, V]) moveToFront(n *lruNode[K, V]) {
	if l.root.next == n {
		return
	}
	n.prev.next, n.next.prev = n.next, n.prev
	l.insertFront(n)
}

func (l *lru[K, V]) insertFront(n *lruNode[K, V]) {
	n.prev, n.next = &l.root, l.root.next
	l.root.next.prev = n
	l.root.next = n
}
