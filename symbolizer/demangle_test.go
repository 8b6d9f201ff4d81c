package symbolizer

import "testing"

func TestDemangle(t *testing.T) {
	tests := []struct{ in, want string }{
		// C++: no parameter lists, template arguments kept, clone suffixes dropped.
		{"_ZNSt6vectorIiSaIiEE9push_backERKi", "std::vector<int, std::allocator<int> >::push_back"},
		{"_ZN3foo3barEv", "foo::bar"},
		{"_ZNKSt5ctypeIcE8do_widenEc", "std::ctype<char>::do_widen"},
		{"_ZN9__gnu_cxx13new_allocatorIcE8allocateEmPKv.isra.0", "__gnu_cxx::new_allocator<char>::allocate"},
		{"_ZN3foo3barEv.cold", "foo::bar"},
		{"_ZZN3foo3barEiENKUlvE_clEv", "foo::bar()::{lambda()#1}::operator()"},
		{"_Z3fooIiEvT_", "foo<int>"},
		// Rust legacy: hash suffix stripped, also with an LLVM suffix after it.
		{"_ZN4main4main17he714a2e23ed7db23E", "main::main"},
		{"_ZN4main4main17he714a2e23ed7db23E.llvm.123", "main::main"},
		{"_ZN63_$LT$alloc..alloc..Global$u20$as$u20$core..alloc..Allocator$GT$8allocate17h2d6c8f0d4ba4e0c3E", "<alloc::alloc::Global as core::alloc::Allocator>::allocate"},
		// Rust v0.
		{"_RNvC6_123foo3bar", "123foo::bar"},
		{"_RNCNCNgCs6DXkGYLi8lr_2cc5spawn00B5_", "cc::spawn::{closure#0}::{closure#0}"},
		{"_RNvMC0INtC8arrayvec8ArrayVechKj7b_E3new", "<arrayvec::ArrayVec<u8, 123>>::new"},
		// Not mangled, or not valid: unchanged.
		{"main", "main"},
		{"__libc_start_main", "__libc_start_main"},
		{"_Znotvalid", "_Znotvalid"},
		{"_R", "_R"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := Demangle(tc.in); got != tc.want {
			t.Errorf("Demangle(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestStripRustHash(t *testing.T) {
	tests := []struct{ in, want string }{
		{"core::fmt::write::h0123456789abcdef", "core::fmt::write"},
		{"core::fmt::write::h0123456789abcdeg", "core::fmt::write::h0123456789abcdeg"},
		{"h0123456789abcdef", "h0123456789abcdef"},
		{"a::b", "a::b"},
	}
	for _, tc := range tests {
		if got := stripRustHash(tc.in); got != tc.want {
			t.Errorf("stripRustHash(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
