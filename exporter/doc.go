// Package exporter consumes symbolized profiling windows and the agent's
// counters and serves them: pprof profiles built with google/pprof, the
// HTTP endpoints (live capture, /metrics, health, index page), and the
// self-metrics collector. It never talks to the kernel itself.
package exporter
