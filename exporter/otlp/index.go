package otlp

// indexTable maps uint64 keys to int32 indices: an open-addressing hash
// table with linear probing and Fibonacci hashing. It serves the one
// lookup every frame of a request costs (80,000 for 5,000 stacks of 16
// frames), where it takes a few nanoseconds against about 20 for a Go map
// of uint64 keys: one 16-byte slot per probe, no tombstones (entries are
// never deleted, only all cleared at once).
type indexTable struct {
	slots []indexSlot // len is a power of two
	shift uint        // 64 - log2(len(slots))
	n     int
}

type indexSlot struct {
	key uint64
	val int32 // index + 1; 0 marks an empty slot
}

const minIndexSlots = 1024

// reset empties the table for the next request. It keeps its slots, sized
// by the last request (the next one is about as large), unless they grew
// beyond what maxRetained keys need; put grows the table as needed. A
// table no larger than its keys need stays in the CPU caches better than
// one sized in advance for the worst case.
func (t *indexTable) reset() {
	if t.slots == nil || len(t.slots) > 2*maxRetained {
		t.alloc(minIndexSlots)
		return
	}
	clear(t.slots)
	t.n = 0
}

func (t *indexTable) alloc(size int) {
	t.slots = make([]indexSlot, size)
	t.shift = 64
	for s := size; s > 1; s >>= 1 {
		t.shift--
	}
	t.n = 0
}

func (t *indexTable) slot(key uint64) uint64 {
	return (key * 0x9e3779b97f4a7c15) >> t.shift
}

func (t *indexTable) get(key uint64) (int32, bool) {
	mask := uint64(len(t.slots) - 1)
	for i := t.slot(key); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.val == 0 {
			return 0, false
		}
		if s.key == key {
			return s.val - 1, true
		}
	}
}

// put adds a key that get did not find.
func (t *indexTable) put(key uint64, val int32) {
	if 2*(t.n+1) > len(t.slots) { // at most half full: probes stay short
		old := t.slots
		t.alloc(2 * len(old))
		for _, s := range old {
			if s.val != 0 {
				t.insert(s.key, s.val)
			}
		}
	}
	t.insert(key, val+1)
}

func (t *indexTable) insert(key uint64, stored int32) {
	mask := uint64(len(t.slots) - 1)
	i := t.slot(key)
	for t.slots[i].val != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = indexSlot{key: key, val: stored}
	t.n++
}
