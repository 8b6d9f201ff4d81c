package history

import (
	"cmp"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/cgscope/cgscope/exporter/pprof"
	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
	"github.com/cgscope/cgscope/symbolizer"
)

// History record format.
//
// Every store generation (a segment file on disk, a run of records in
// memory) carries its own dictionary: strings, frames (function, file, line,
// mapping path, build id, address, each string by id), label sets (pid, tid,
// comm, cgroup) and stacks (lists of frame ids). Ids are dense and assigned
// in order of first use within the generation. Whatever a window adds to the
// dictionary is written as a dictionary record (level levelDict) in the same
// group as the window's records, just before them: one write and one fsync,
// so a torn write loses at most the last window. A window is one record of
// its CPU samples (level levelWindow), rows of (label set id, stack id,
// count), and, from format 5 and when it has any, one of its off-CPU samples
// (level levelOffCPU), rows of (label set id, stack id, reason, count, time
// away). Each kind has its own level so that a query reads only the records
// of the kind it asks for.
//
// Each dictionary record names the first id of each of its tables, so a
// dictionary record lost to corruption leaves a gap in the ids instead of
// shifting the ids after it. Entries that refer to a missing id are missing
// themselves, and a window that refers to a missing label set or stack is
// skipped whole and counted (History's undecodable counter): a query never
// shows a stack it cannot name correctly.
//
// Both record kinds are a format byte followed by a zstd frame of:
//
//	dictionary: for strings, frames, label sets, stacks in that order:
//	            uvarint first id, uvarint count, then the entries:
//	  string    uvarint length, bytes (id 0 is always "", never written)
//	  frame     uvarint function, file, mapping path, build id (string ids),
//	            uvarint line, uvarint address, byte flags (frameMapped,
//	            frameKernel, from format 4 frameInlined: a call inlined
//	            at the address of the next frame of its stack, and from
//	            format 6 frameInterpreted: an interpreted frame, whose
//	            mapping path is its runtime's name, "cpython")
//	  label set uvarint pid, tid, comm (string id), cgroup (string id),
//	            then (format 3 on) namespace, pod, container (string ids;
//	            the Kubernetes names at the time, which a cgroup path
//	            alone does not give)
//	  stack     uvarint depth, then uvarint frame ids, leaf first; the
//	            calls inlined at an address come before its frame,
//	            innermost first
//	window:     uvarint period (ns), uvarint rows, then three columns of
//	            uvarints: label set ids (delta from the previous row), stack
//	            ids (delta from the previous row's if the label set is the
//	            same, else absolute) and counts. Rows are sorted by (label
//	            set, stack), so the columns are small numbers that zstd packs
//	            well.
//	off-CPU     a window (its period is the CPU sampling's, unused), whose
//	window:     rows are sorted by (label set, stack, reason) and have two
//	            more columns of uvarints: reasons (string ids: "runnable",
//	            "sleeping", ...) and time away from the CPU (ns). Counts are
//	            the times a thread left the CPU, both estimated.
const (
	levelWindow   = 0
	levelOffCPU   = 1
	levelDict     = 16
	formatVersion = formatV6 // written; every format from formatV2 on is read
	formatV6      = 6        // added interpreted frames
	formatV5      = 5        // added off-CPU windows
	formatV4      = 4        // added inlined calls
	formatV3      = 3        // added Kubernetes names to label sets
	formatV2      = 2        // zstd pprof (format 1) began with the zstd magic 0x28

	frameMapped  = 1 << 0
	frameKernel  = 1 << 1
	frameInlined = 1 << 2
	// frameInterpreted is a frame of interpreted code (a Python
	// function): its runtime is kept where a mapping's path is.
	frameInterpreted = 1 << 3

	// maxDictIDs bounds an id read from a record, so a bad record cannot
	// make a reader allocate gigabytes.
	maxDictIDs = 1 << 26
)

var (
	// A record is one window, well under 1 MiB; the default 8 MiB window kept
	// 16 MiB of match history live for the life of the daemon. The default
	// level with the smaller tables holds 2.5 MB for the daemon's life where
	// SpeedBetterCompression held 6.5 MB, for records a few percent larger.
	zstdEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(1<<20), zstd.WithLowerEncoderMem(true))
	zstdDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(1<<28))

	errBadRecord = errors.New("malformed history record")
)

type frameKey struct {
	fn, file, mapPath, buildID string
	line                       int64
	addr                       uint64
	flags                      uint8
}

type frameRec struct {
	fn, file, mapPath, buildID uint32
	line                       int64
	addr                       uint64
	flags                      uint8
}

type labelKey struct {
	pid, tid                  uint32
	comm, cgroup              string
	namespace, pod, container string
}

type labelRec struct {
	pid, tid                  uint32
	comm, cgroup              uint32
	namespace, pod, container uint32
}

// windowEncoder is the writer's side: the dictionary of the generation it
// writes to and what the next dictionary record must add. It is used by the
// writer goroutine only.
type windowEncoder struct {
	gen     uint64
	strings map[string]uint32
	frames  map[frameKey]uint32
	labels  map[labelKey]uint32
	stacks  map[string]uint32
	nStr    uint32 // next ids
	nFrame  uint32
	nLabel  uint32
	nStack  uint32
	// bytes estimates the memory of the maps above: bounded by
	// maxEncoderBytes, beyond which the next window starts a new
	// generation (and an empty dictionary).
	bytes int

	// additions since the last dictionary record, and their first ids
	pStr    []string
	pFrame  []frameRec
	pLabel  []labelRec
	pStack  [][]uint32
	fStr    uint32
	fFrame  uint32
	fLabel  uint32
	fStack  uint32
	scratch []byte
	ids     []uint32
}

func (e *windowEncoder) reset(gen uint64) {
	*e = windowEncoder{
		gen:     gen,
		strings: map[string]uint32{"": 0},
		frames:  map[frameKey]uint32{},
		labels:  map[labelKey]uint32{},
		stacks:  map[string]uint32{},
		nStr:    1,
		fStr:    1,
		scratch: e.scratch[:0],
		ids:     e.ids[:0],
	}
}

// maxEncoderBytes bounds the writer's dictionary. A generation lasts up to
// a segment's span (hours, with a long retention); on a host that starts
// processes all day every new pid and thread adds a label set, so without
// a bound the dictionary would grow for the whole span. Past the bound the
// generation is closed early: its successor repeats the entries still in
// use, a little disk for a bounded writer. At 1 MiB a churn of 100 processes
// a second rolls a generation about every 50 s; at 4 MiB the writer's
// dictionary swung the daemon's RSS by 4 MiB over each 200 s generation.
var maxEncoderBytes = 1 << 20 // a variable for tests

// Estimated bytes of a dictionary entry beyond its strings: the map entry
// and its pending copy.
const (
	strEntryBytes   = 48
	labelEntryBytes = 128
	frameEntryBytes = 160
	stackEntryBytes = 64
)

// encode returns the records of w for generation gen: a dictionary record
// with what w adds to gen's dictionary (if anything), then the window's CPU
// record and, when it has off-CPU samples, its off-CPU record. It fails,
// writing nothing, when gen's dictionary has outgrown the ids a reader
// accepts: records a query would reject are not worth storing. When gen's
// dictionary holds more than maxEncoderBytes, or would outgrow those ids,
// it asks for a new generation instead (store.ErrNewGeneration).
func (e *windowEncoder) encode(w *pipeline.Window, gen uint64) ([]store.Record, error) {
	fresh := gen != e.gen || e.strings == nil
	if !fresh && e.bytes > maxEncoderBytes {
		return nil, store.ErrNewGeneration
	}
	if fresh {
		e.reset(gen)
	}
	windows := []store.Record{e.windowRecord(w, pprof.CPU)}
	if len(w.OffCPU) > 0 {
		windows = append(windows, e.windowRecord(w, pprof.OffCPU))
	}
	if max(e.nStr, e.nFrame, e.nLabel, e.nStack) > maxDictIDs {
		if !fresh {
			return nil, store.ErrNewGeneration
		}
		return nil, errDictFull
	}
	var recs []store.Record
	if d := e.flushDict(); d != nil {
		recs = append(recs, store.Record{Meta: store.Meta{Level: levelDict, Start: w.Start, End: w.End}, Data: d})
	}
	return append(recs, windows...), nil
}

// encodedRow is a row of a window record: the sum of the window's samples
// of one label set, stack and (off-CPU) reason.
type encodedRow struct {
	label, stack, reason uint32
	count, nanos         uint64
}

// windowRecord encodes the samples of w of kind k as a window record,
// adding what they use to the pending dictionary.
func (e *windowEncoder) windowRecord(w *pipeline.Window, k pprof.Kind) store.Record {
	samples := k.WindowSamples(w)
	idx := map[[3]uint32]int{}
	var rows []encodedRow
	for i := range samples {
		s := &samples[i]
		key := [3]uint32{e.label(s), e.stack(s.Frames), e.str(s.Reason)}
		j, ok := idx[key]
		if !ok {
			j = len(rows)
			idx[key] = j
			rows = append(rows, encodedRow{label: key[0], stack: key[1], reason: key[2]})
		}
		rows[j].count += s.Count
		rows[j].nanos += uint64(s.OffCPU)
	}
	slices.SortFunc(rows, func(a, b encodedRow) int {
		return cmp.Or(cmp.Compare(a.label, b.label), cmp.Compare(a.stack, b.stack), cmp.Compare(a.reason, b.reason))
	})
	return store.Record{Meta: store.Meta{Level: kindLevel(k), Start: w.Start, End: w.End}, Data: compress(encodeRows(rows, w.Period, k))}
}

// encodeRows lays out sorted rows in columns (see the format above).
func encodeRows(rows []encodedRow, period time.Duration, k pprof.Kind) []byte {
	u := binary.AppendUvarint
	b := u(u(nil, uint64(period)), uint64(len(rows)))
	var prev uint32
	for _, r := range rows {
		b = u(b, uint64(r.label-prev))
		prev = r.label
	}
	for i, r := range rows {
		if i == 0 || r.label != rows[i-1].label {
			b = u(b, uint64(r.stack))
		} else {
			b = u(b, uint64(r.stack-rows[i-1].stack))
		}
	}
	for _, r := range rows {
		b = u(b, r.count)
	}
	if hasReasonAndTime(k) {
		for _, r := range rows {
			b = u(b, uint64(r.reason))
		}
		for _, r := range rows {
			b = u(b, r.nanos)
		}
	}
	return b
}

// kindLevel is the record level of a kind's windows.
func kindLevel(k pprof.Kind) uint8 {
	if k == pprof.OffCPU {
		return levelOffCPU
	}
	return levelWindow
}

// hasReasonAndTime reports whether the rows of a kind's windows carry a
// reason and their own time (off-CPU's, sampled with weights); a CPU row's
// time is its count times the period.
func hasReasonAndTime(k pprof.Kind) bool { return k == pprof.OffCPU }

var errDictFull = errors.New("history: the generation's dictionary is full")

func compress(b []byte) []byte {
	return zstdEncoder.EncodeAll(b, []byte{formatVersion})
}

func (e *windowEncoder) str(s string) uint32 {
	if id, ok := e.strings[s]; ok {
		return id
	}
	id := e.nStr
	e.nStr++
	e.strings[s] = id
	e.bytes += len(s) + strEntryBytes
	e.pStr = append(e.pStr, s)
	return id
}

func (e *windowEncoder) label(s *pipeline.Sample) uint32 {
	var l attribution.Workload
	if s.Workload != nil {
		l = *s.Workload
	}
	k := labelKey{s.PID, s.TID, s.Comm, s.Cgroup, l.Namespace, l.Pod, l.Container}
	if id, ok := e.labels[k]; ok {
		return id
	}
	id := e.nLabel
	e.nLabel++
	e.labels[k] = id
	e.bytes += labelEntryBytes
	e.pLabel = append(e.pLabel, labelRec{s.PID, s.TID, e.str(s.Comm), e.str(s.Cgroup),
		e.str(l.Namespace), e.str(l.Pod), e.str(l.Container)})
	return id
}

// frameKeyOf is what pprof.Build distinguishes of a frame.
func frameKeyOf(fr *symbolizer.Frame) frameKey {
	k := frameKey{fn: fr.Function, file: fr.File, line: int64(fr.Line), addr: fr.ObjAddress}
	switch {
	case fr.Kernel:
		k.flags = frameKernel
	case fr.Interpreter != "":
		k.flags = frameInterpreted
		k.mapPath = fr.Interpreter
	case fr.Mapping != nil:
		k.flags = frameMapped
		k.mapPath, k.buildID = fr.Mapping.Path, fr.Mapping.BuildID
	}
	return k
}

func (e *windowEncoder) frame(fr *symbolizer.Frame) uint32 {
	return e.frameOf(frameKeyOf(fr))
}

// inlinedCall records call c, inlined at fr's address: a frame of fr's
// object and address, with the call's function and position.
func (e *windowEncoder) inlinedCall(fr *symbolizer.Frame, c symbolizer.InlinedCall) uint32 {
	k := frameKeyOf(fr)
	k.fn, k.file, k.line = c.Function, c.File, int64(c.Line)
	k.flags |= frameInlined
	return e.frameOf(k)
}

func (e *windowEncoder) frameOf(k frameKey) uint32 {
	if id, ok := e.frames[k]; ok {
		return id
	}
	id := e.nFrame
	e.nFrame++
	e.frames[k] = id
	e.bytes += frameEntryBytes
	e.pFrame = append(e.pFrame, frameRec{e.str(k.fn), e.str(k.file), e.str(k.mapPath), e.str(k.buildID), k.line, k.addr, k.flags})
	return id
}

func (e *windowEncoder) stack(frames []symbolizer.Frame) uint32 {
	e.ids = e.ids[:0]
	e.scratch = e.scratch[:0]
	add := func(id uint32) {
		e.ids = append(e.ids, id)
		e.scratch = binary.AppendUvarint(e.scratch, uint64(id))
	}
	for i := range frames {
		for _, c := range frames[i].Inlined {
			add(e.inlinedCall(&frames[i], c))
		}
		add(e.frame(&frames[i]))
	}
	if id, ok := e.stacks[string(e.scratch)]; ok {
		return id
	}
	id := e.nStack
	e.nStack++
	e.stacks[string(e.scratch)] = id
	e.bytes += 2*len(e.scratch) + 4*len(e.ids) + stackEntryBytes
	e.pStack = append(e.pStack, slices.Clone(e.ids))
	return id
}

// flushDict encodes the pending additions as a dictionary record, nil when
// there are none.
func (e *windowEncoder) flushDict() []byte {
	if len(e.pStr)+len(e.pFrame)+len(e.pLabel)+len(e.pStack) == 0 {
		return nil
	}
	u := binary.AppendUvarint
	b := u(u(nil, uint64(e.fStr)), uint64(len(e.pStr)))
	for _, s := range e.pStr {
		b = append(u(b, uint64(len(s))), s...)
	}
	b = u(u(b, uint64(e.fFrame)), uint64(len(e.pFrame)))
	for _, f := range e.pFrame {
		b = u(u(u(u(b, uint64(f.fn)), uint64(f.file)), uint64(f.mapPath)), uint64(f.buildID))
		b = append(u(u(b, uint64(f.line)), f.addr), f.flags)
	}
	b = u(u(b, uint64(e.fLabel)), uint64(len(e.pLabel)))
	for _, l := range e.pLabel {
		b = u(u(u(u(b, uint64(l.pid)), uint64(l.tid)), uint64(l.comm)), uint64(l.cgroup))
		b = u(u(u(b, uint64(l.namespace)), uint64(l.pod)), uint64(l.container))
	}
	b = u(u(b, uint64(e.fStack)), uint64(len(e.pStack)))
	for _, st := range e.pStack {
		b = u(b, uint64(len(st)))
		for _, id := range st {
			b = u(b, uint64(id))
		}
	}
	e.pStr, e.pFrame, e.pLabel, e.pStack = nil, nil, nil, nil
	e.fStr, e.fFrame, e.fLabel, e.fStack = e.nStr, e.nFrame, e.nLabel, e.nStack
	return compress(b)
}

// genDict is the reader's side: the dictionary of one generation, from its
// dictionary records. Missing entries (lost records, or entries referring
// to them) have ok false.
type genDict struct {
	strs    []string
	strOK   []bool
	frames  []frameRec
	frameOK []bool
	labels  []labelRec
	labelOK []bool
	stacks  [][]uint32 // nil = missing (a stack has at least one frame or is empty but non-nil)
}

func newGenDict() *genDict {
	return &genDict{strs: []string{""}, strOK: []bool{true}}
}

// reader decodes uvarints, remembering the first error.
type reader struct {
	b   []byte
	err bool
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = true
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) id() uint32 {
	v := r.uvarint()
	if v >= maxDictIDs {
		r.err = true
		return 0
	}
	return uint32(v)
}

func (r *reader) bytes(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.err = true
		r.b = nil
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() uint8 {
	if len(r.b) == 0 {
		r.err = true
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// span reads a table's first id and count, checking they are sane.
func (r *reader) span() (first, n uint32) {
	first, n = r.id(), r.id()
	if uint64(first)+uint64(n) > maxDictIDs || uint64(n) > uint64(len(r.b)) {
		r.err = true
		return 0, 0
	}
	return first, n
}

// decompress returns a record's content and its format version.
func decompress(data []byte) ([]byte, byte, error) {
	if len(data) == 0 || data[0] < formatV2 || data[0] > formatVersion {
		return nil, 0, errBadRecord
	}
	raw, err := zstdDecoder.DecodeAll(data[1:], nil)
	return raw, data[0], err
}

// grow extends a table so that ids below n exist (as missing).
func grow[T any](s []T, ok []bool, n uint32) ([]T, []bool) {
	if int(n) > len(s) {
		s = append(s, make([]T, int(n)-len(s))...)
		ok = append(ok, make([]bool, int(n)-len(ok))...)
	}
	return s, ok
}

func (d *genDict) str(id uint32) bool { return int(id) < len(d.strOK) && d.strOK[id] }
func (d *genDict) frameDefined(id uint32) bool {
	return int(id) < len(d.frameOK) && d.frameOK[id]
}

// add decodes one dictionary record into d. A malformed record adds
// nothing: its ids stay missing.
func (d *genDict) add(data []byte) error {
	raw, version, err := decompress(data)
	if err != nil {
		return err
	}
	// Decode into a copy of the table lengths first, then commit: a record
	// that fails halfway adds nothing.
	r := &reader{b: raw}
	sFirst, sN := r.span()
	strs := make([]string, 0, sN)
	for range sN {
		strs = append(strs, string(r.bytes(r.uvarint())))
	}
	fFirst, fN := r.span()
	frames := make([]frameRec, 0, fN)
	for range fN {
		f := frameRec{fn: r.id(), file: r.id(), mapPath: r.id(), buildID: r.id()}
		f.line, f.addr, f.flags = int64(r.uvarint()), r.uvarint(), r.byte()
		if f.flags&frameInlined != 0 && version < formatV4 || f.flags&frameInterpreted != 0 && version < formatV6 {
			r.err = true // a flag those formats never wrote
		}
		frames = append(frames, f)
	}
	lFirst, lN := r.span()
	labels := make([]labelRec, 0, lN)
	for range lN {
		pid, tid := r.uvarint(), r.uvarint()
		l := labelRec{pid: uint32(pid), tid: uint32(tid), comm: r.id(), cgroup: r.id()}
		if version >= formatV3 {
			l.namespace, l.pod, l.container = r.id(), r.id(), r.id()
		}
		labels = append(labels, l)
	}
	kFirst, kN := r.span()
	stacks := make([][]uint32, 0, kN)
	for range kN {
		depth := r.uvarint()
		if depth > uint64(len(r.b)) {
			r.err = true
			break
		}
		st := make([]uint32, depth)
		for i := range st {
			st[i] = r.id()
		}
		stacks = append(stacks, st)
	}
	if r.err || len(r.b) != 0 {
		return errBadRecord
	}
	d.strs, d.strOK = grow(d.strs, d.strOK, sFirst+sN)
	for i, s := range strs {
		d.strs[sFirst+uint32(i)], d.strOK[sFirst+uint32(i)] = s, true
	}
	d.frames, d.frameOK = grow(d.frames, d.frameOK, fFirst+fN)
	for i, f := range frames {
		d.frames[fFirst+uint32(i)] = f
		d.frameOK[fFirst+uint32(i)] = d.str(f.fn) && d.str(f.file) && d.str(f.mapPath) && d.str(f.buildID)
	}
	d.labels, d.labelOK = grow(d.labels, d.labelOK, lFirst+lN)
	for i, l := range labels {
		d.labels[lFirst+uint32(i)] = l
		d.labelOK[lFirst+uint32(i)] = d.str(l.comm) && d.str(l.cgroup) &&
			d.str(l.namespace) && d.str(l.pod) && d.str(l.container)
	}
	if n := int(kFirst + kN); n > len(d.stacks) {
		d.stacks = append(d.stacks, make([][]uint32, n-len(d.stacks))...)
	}
	for i, st := range stacks {
		ok := true
		for _, f := range st {
			ok = ok && d.frameDefined(f)
		}
		// Inlined calls precede the frame they were inlined into: a stack that
		// ends with one is malformed, and so undefined like a stack with a
		// missing frame (its windows are skipped and counted).
		if ok && len(st) > 0 && d.frames[st[len(st)-1]].flags&frameInlined != 0 {
			ok = false
		}
		if ok {
			d.stacks[kFirst+uint32(i)] = st
		}
	}
	return nil
}

func (d *genDict) labelDefined(id uint32) bool {
	return int(id) < len(d.labelOK) && d.labelOK[id]
}

func (d *genDict) stackDefined(id uint32) bool {
	return int(id) < len(d.stacks) && d.stacks[id] != nil
}

// windowRows is a decoded window record, of either kind: a CPU row's
// reason is 0 (""), its nanos its count times the period.
type windowRows struct {
	period                  time.Duration
	labels, stacks, reasons []uint32
	counts, nanos           []uint64
}

// decodeWindow decodes a window record of kind k and checks every id it
// uses against d: a window that refers to a missing entry is an error,
// never a guess.
func decodeWindow(data []byte, d *genDict, w *windowRows, k pprof.Kind) error {
	raw, version, err := decompress(data)
	if err != nil {
		return err
	}
	if hasReasonAndTime(k) && version < formatV5 { // off-CPU windows came with format 5
		return errBadRecord
	}
	r := &reader{b: raw}
	w.period = time.Duration(r.uvarint())
	n := r.uvarint()
	if r.err || n > uint64(len(r.b)) {
		return errBadRecord
	}
	w.labels, w.stacks, w.reasons, w.counts, w.nanos = w.labels[:0], w.stacks[:0], w.reasons[:0], w.counts[:0], w.nanos[:0]
	var prev uint32
	for range n {
		prev += r.id()
		w.labels = append(w.labels, prev)
	}
	for i := range int(n) {
		v := r.id()
		if i > 0 && w.labels[i] == w.labels[i-1] {
			v += w.stacks[i-1]
		}
		w.stacks = append(w.stacks, v)
	}
	for range n {
		w.counts = append(w.counts, r.uvarint())
	}
	w.readReasonsAndTimes(r, k)
	if r.err || len(r.b) != 0 {
		return errBadRecord
	}
	for i := range w.labels {
		if !d.labelDefined(w.labels[i]) || !d.stackDefined(w.stacks[i]) || !d.str(w.reasons[i]) {
			return errMissingDict
		}
	}
	return nil
}

// readReasonsAndTimes reads the columns that follow the counts in a kind
// with them, and works them out for CPU rows.
func (w *windowRows) readReasonsAndTimes(r *reader, k pprof.Kind) {
	if !hasReasonAndTime(k) {
		for _, c := range w.counts {
			w.reasons = append(w.reasons, 0)
			w.nanos = append(w.nanos, c*uint64(w.period))
		}
		return
	}
	for range w.counts {
		w.reasons = append(w.reasons, r.id())
	}
	for range w.counts {
		w.nanos = append(w.nanos, r.uvarint())
	}
}

var errMissingDict = errors.New("window refers to a dictionary entry that was lost")

// symFrames rebuilds the frames of stack st that pprof.Build would have
// seen: the calls inlined at an address go back into its frame's Inlined.
func (d *genDict) symFrames(st []uint32) []symbolizer.Frame {
	frames := make([]symbolizer.Frame, 0, len(st))
	var inlined []symbolizer.InlinedCall
	for _, fid := range st {
		fr := d.symFrame(fid)
		if d.frames[fid].flags&frameInlined != 0 {
			inlined = append(inlined, symbolizer.InlinedCall{Function: fr.Function, File: fr.File, Line: fr.Line})
			continue
		}
		fr.Inlined, inlined = inlined, nil
		frames = append(frames, fr)
	}
	return frames
}

// symFrame rebuilds one frame record.
func (d *genDict) symFrame(id uint32) symbolizer.Frame {
	f := d.frames[id]
	fr := symbolizer.Frame{ObjAddress: f.addr, Address: f.addr, Function: d.strs[f.fn], File: d.strs[f.file], Line: int(f.line)}
	switch {
	case f.flags&frameKernel != 0:
		fr.Kernel = true
	case f.flags&frameInterpreted != 0:
		fr.Interpreter = d.strs[f.mapPath]
	case f.flags&frameMapped != 0:
		fr.Mapping = &symbolizer.Mapping{Path: d.strs[f.mapPath], BuildID: d.strs[f.buildID]}
	}
	return fr
}
