package main

import (
	"runtime/metrics"
	"testing"
	"time"
)

// A release follows a churn's allocations at once, and a quiet host's at
// most once a minute.
func TestReleaseDue(t *testing.T) {
	for _, c := range []struct {
		allocated uint64
		since     time.Duration
		want      bool
	}{
		{10 << 20, releaseEvery, true},        // under churn: every time
		{3 << 20, releaseEvery, false},        // long-lived processes only
		{3 << 20, 5 * releaseEvery, false},    // still within the minute
		{3 << 20, releaseAtLeast, true},       // the minute is up
		{0, releaseAtLeast + time.Hour, true}, // idle for long
		{releaseAfter, releaseEvery, true},
	} {
		if got := releaseDue(c.allocated, c.since); got != c.want {
			t.Errorf("releaseDue(%d bytes, %v) = %v, want %v", c.allocated, c.since, got, c.want)
		}
	}
}

// The runtime metric the release reads exists, and counts allocations.
func TestReleaseReadsAllocations(t *testing.T) {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		t.Fatalf("%s: kind %v, want uint64", s[0].Name, s[0].Value.Kind())
	}
	before := s[0].Value.Uint64()
	sink = make([]byte, 1<<20)
	metrics.Read(s)
	if got := s[0].Value.Uint64() - before; got < 1<<20 {
		t.Errorf("a 1 MiB allocation moved %s by %d bytes", s[0].Name, got)
	}
}

var sink []byte
