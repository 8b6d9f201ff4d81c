package ruby

import "github.com/cgscope/cgscope/interp"

// layout is where one CRuby minor version keeps what the walker and the
// namer read, in bytes, on x86-64 for a release build (no RUBY_DEBUG, no
// VM_CHECK_MODE, USE_RVARGC=0: the defaults of Debian's build).
//
// Every number of 3.1 was computed by the compiler (offsetof, sizeof) from
// Ruby 3.1.2's own headers (Debian's source package ruby3.1 3.1.2-7+deb12u1)
// with Debian's generated ruby/config.h, and checked on the running
// /usr/bin/ruby3.1 of Debian 12 (libruby-3.1.so.3.1.2) by walking its
// threads from userspace against Ruby's own caller_locations. The file and
// line of each field, in 3.1.2's tree, is cited below.
type layout struct {
	minor int // 3.minor

	// rb_execution_context_t (vm_core.h:910-961): vm_stack, vm_stack_size
	// (in VALUEs), cfp, thread_ptr.
	ecVMStack, ecVMStackSize, ecCFP, ecThread uint16
	// rb_control_frame_t (vm_core.h:827-841): pc, iseq, ep; its size (the
	// frames are an array growing down from the stack's end).
	cfpPC, cfpISeq, cfpEP, cfpSize uint16

	// rb_vm_t.ractor.main_thread (vm_core.h:630); rb_thread_t
	// (vm_core.h:994-1017): vm, ec, thread_id (the pthread_t: the thread
	// pointer on x86-64 glibc), tid.
	vmMainThread                            uint64
	threadVM, threadEC, threadID, threadTID uint64

	// rb_iseq_t.body (vm_core.h:500-504); rb_iseq_constant_body
	// (vm_core.h:351-496): type, iseq_size, iseq_encoded,
	// location.{pathobj, base_label, label, first_lineno} (308-315, 439),
	// insns_info.{body, size, succ_index_table} (442-448), local_iseq
	// (458).
	iseqBody                                               uint64
	bodyType, bodySize, bodyEncoded                        uint64
	bodyPath, bodyBaseLabel, bodyLabel, bodyFirstLine      uint64
	bodyInsnsInfo, bodyInsnsSize, bodySuccTable, bodyLocal uint64
	bodyBytes                                              int // read at once: through the last field above
	// sizeof(struct iseq_insn_info_entry) (iseq.h:228-234), line_no at 0.
	insnInfoSize uint64

	// rb_callable_method_entry_t (method.h:62-68): defined_class, def,
	// owner; rb_method_definition_t (method.h:179-198): type (bits 0..3
	// of the first word), original_id.
	meDefinedClass, meDef, meOwner uint64
	defOriginalID                  uint64

	// struct RClass.ptr (internal/class.h) and rb_classext_t.iv_tbl; the
	// st_table's entries_start, entries_bound, entries (include/ruby/st.h)
	// and its 24-byte entries {hash, key, record} (st.c:133).
	classExt, extIVTbl                       uint64
	stStart, stBound, stEntries, stEntrySize uint64

	// rb_symbols_t (symbol.h:61-66): last_id, ids.
	symbolsLastID, symbolsIDs uint64
}

// Constants of the versions supported (Ruby's ABI, not its private
// structures): include/ruby/internal/core/{rbasic,rstring,rarray}.h,
// value_type.h, internal/imemo.h, id.h, symbol.c.
const (
	basicKlass = 8 // RBasic.klass

	tMask   = 0x1f
	tString = 0x05
	tArray  = 0x07
	tIClass = 0x1c
	tIMemo  = 0x1a

	imemoShift = 12 // imemo type: (flags >> 12) & 0xf
	imemoSvar  = 2
	imemoMent  = 6
	imemoISeq  = 7
	svarMe     = 8 // struct vm_svar.cref_or_me

	flSingleton = 0x1000 // RUBY_FL_SINGLETON

	strNoEmbed     = 0x2000 // RSTRING_NOEMBED
	strEmbedShift  = 14     // RSTRING_EMBED_LEN_SHIFT
	strEmbedMask   = 0x1f
	strHeapLen     = 0x10
	strHeapPtr     = 0x18
	strEmbedAry    = 0x10
	aryEmbed       = 0x2000 // RARRAY_EMBED_FLAG
	aryEmbedShift  = 15
	aryEmbedMask   = 3
	aryHeapLen     = 0x10
	aryHeapPtr     = 0x20
	aryEmbedValues = 0x10

	methodTypeISeq  = 0 // VM_METHOD_TYPE_ISEQ (method.h:110)
	methodTypeCFunc = 1 // VM_METHOD_TYPE_CFUNC
	iseqTypeMethod  = 1 // ISEQ_TYPE_METHOD (vm_core.h:354)

	lastOpID     = 0xa9 // tLAST_OP_ID (id.h)
	idScopeShift = 4    // ID_SCOPE_SHIFT
	idEntryUnit  = 512  // ID_ENTRY_UNIT (symbol.c:68)
	idEntrySize  = 2    // ID_ENTRY_SIZE: {str, sym}

	// succ_index_table (iseq.c:3648-3657, private): imm_part[6] then
	// 80-byte blocks {rank, small_block_ranks, bits[8]}.
	succImmediate  = 54
	succPartAt     = 48
	succBlockBytes = 80
)

// layouts are the supported versions, by minor.
var layouts = map[int]*layout{
	1: {
		minor:     1,
		ecVMStack: 0x00, ecVMStackSize: 0x08, ecCFP: 0x10, ecThread: 0x30,
		cfpPC: 0x00, cfpISeq: 0x10, cfpEP: 0x20, cfpSize: 0x40,
		vmMainThread: 0x28,
		threadVM:     0x20, threadEC: 0x28, threadID: 0x50, threadTID: 0x58,
		iseqBody: 0x10,
		bodyType: 0x00, bodySize: 0x04, bodyEncoded: 0x08,
		bodyPath: 0x40, bodyBaseLabel: 0x48, bodyLabel: 0x50, bodyFirstLine: 0x58,
		bodyInsnsInfo: 0x78, bodyInsnsSize: 0x88, bodySuccTable: 0x90, bodyLocal: 0xb0,
		bodyBytes:      0xb8,
		insnInfoSize:   12,
		meDefinedClass: 0x08, meDef: 0x10, meOwner: 0x20,
		defOriginalID: 0x20,
		classExt:      0x18, extIVTbl: 0x08,
		stStart: 0x20, stBound: 0x28, stEntries: 0x30, stEntrySize: 24,
		symbolsLastID: 0x00, symbolsIDs: 0x10,
	},
}

// state is what the BPF walker of a process is given: the thread's ec is
// the word at the thread pointer + tls.
func (l *layout) state(tls int64) *interp.State {
	st := &interp.State{Kind: interp.KindRuby, TLS: tls}
	for i := range st.Offsets {
		st.Offsets[i] = interp.NoOffset
	}
	// enum ruby_offset of bpf/interp.h.
	for i, v := range []uint16{l.ecVMStack, l.ecVMStackSize, l.ecCFP, l.cfpPC, l.cfpISeq, l.cfpEP, l.cfpSize} {
		st.Offsets[i] = v
	}
	return st
}
