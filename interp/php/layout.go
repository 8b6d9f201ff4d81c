package php

import "github.com/cgscope/cgscope/interp"

// layout is where one PHP engine API (the Zend module API number, which
// changes with every minor version) keeps what the walker and the namer
// read, in bytes, for NTS builds on x86-64 (LP64).
//
// The 8.2 numbers (API 20220829) are offsetof()/sizeof() compiled against
// Debian 12's php8.2-dev 8.2.36 headers, /usr/include/php/20220829 (the
// files are cited below, line numbers of 8.2.36), and checked against
// Debian's machine code: zend_get_executed_scope() reads
// current_execute_data, func, func->type, common.scope and
// prev_execute_data at exactly these offsets (checkAccessor verifies it on
// each object before use). The Zend structures used did not change within
// 8.2 (8.2.32's zend_compile.h is byte-identical; its zend_globals.h only
// grew executor_globals at the end).
type layout struct {
	api string // ZEND_MODULE_BUILD_ID's API part, "API20220829"

	// zend_executor_globals.current_execute_data (Zend/zend_globals.h:178).
	egCurrentEx uint16

	// zend_execute_data (Zend/zend_compile.h:540-550): opline (541), func
	// (544), This (545: a zval whose u1.type_info, 8 bytes in, holds the
	// call info in its top 16 bits, :554), prev_execute_data (546).
	exOpline, exFunc, exCallInfo, exPrev uint16

	// zend_function (Zend/zend_compile.h:516-535): type, first of every
	// variant (518); common.function_name (525) and common.scope (526);
	// op_array.last (457), .opcodes (459), .filename (471), .line_start
	// (472).
	fnType, fnName, fnScope                        uint16
	opaLast, opaOpcodes, opaFilename, opaLineStart uint16

	// zend_op (Zend/zend_compile.h:136-147): its size and lineno (142).
	opSize, opLineno uint16

	// zend_string (Zend/zend_types.h:352-358): gc.u.type_info (the
	// string's type in its low 4 bits, IS_STRING = 6: :559, :648), len
	// (356), val (357). zend_class_entry.name (Zend/zend.h:149).
	strTypeInfo, strLen, strVal, ceName uint16

	// ZEND_CALL_TOP (Zend/zend_compile.h:558): the frame's caller is C,
	// which entered execute_ex for it.
	callTop uint64
}

// layouts by ZEND_MODULE_BUILD_ID's API part.
var layouts = map[string]*layout{
	"API20220829": {
		api:         "API20220829",
		egCurrentEx: 488,
		exOpline:    0, exFunc: 24, exCallInfo: 40, exPrev: 48,
		fnType: 0, fnName: 8, fnScope: 16,
		opaLast: 80, opaOpcodes: 88, opaFilename: 152, opaLineStart: 160,
		opSize: 32, opLineno: 24,
		strTypeInfo: 4, strLen: 16, strVal: 24, ceName: 8,
		callTop: 1 << 17,
	},
}

// The function types (Zend/zend_compile.h:959-961).
const (
	internalFunction = 1
	userFunction     = 2
	evalCode         = 4
)

// isString is IS_STRING (Zend/zend_types.h:559).
const isString = 6

// exBytes and fnBytes are what the walker reads of an execute_data and of
// a zend_function at once: up to the last field it takes, rounded to 8.
func (l *layout) exBytes() uint16 {
	return roundUp(max(l.exOpline, l.exFunc, l.exPrev)+8, l.exCallInfo+4)
}
func (l *layout) fnBytes() uint16 { return roundUp(l.fnType+1, max(l.opaLast+4, l.opaOpcodes+8)) }

func roundUp(a, b uint16) uint16 { return (max(a, b) + 7) &^ 7 }

// state is the walker's State for the process whose executor_globals is
// at eg.
func (l *layout) state(eg uint64, vmRegs bool) *interp.State {
	st := &interp.State{Kind: interp.KindPHP, Addr: eg}
	// The order of enum php_offset and enum php_value (bpf/interp.h).
	st.Offsets = [interp.MaxOffsets]uint16{
		l.egCurrentEx, l.exOpline, l.exFunc, l.exCallInfo, l.exPrev, l.exBytes(),
		l.fnType, l.opaLast, l.opaOpcodes, l.fnBytes(), l.opaLineStart,
		l.opSize, l.opLineno,
	}
	st.Values[0] = l.callTop
	if vmRegs {
		st.Values[1] = 1
	}
	return st
}
