package queue

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the self-metrics of every queue of the daemon, labelled by
// exporter and signal. One Metrics is registered once and shared.
type Metrics struct {
	enqueued, sent, errors, dropped *prometheus.CounterVec
	length                          *prometheus.GaugeVec
}

var queueLabels = []string{"exporter", "signal"}

// NewMetrics registers the exporter self-metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cgscope_exporter_enqueued_total",
			Help: "Batches handed to a push exporter's queue.",
		}, queueLabels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cgscope_exporter_sent_total",
			Help: "Batches a push exporter delivered to its backend.",
		}, queueLabels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cgscope_exporter_send_errors_total",
			Help: "Failed send attempts of a push exporter (retries included).",
		}, queueLabels),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cgscope_exporter_dropped_total",
			Help: "Batches (intervals) a push exporter did not deliver in full: pushed out of a full queue, rejected by the backend in whole or part, out of retry time, or too large for any request.",
		}, queueLabels),
		length: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cgscope_exporter_queue_length",
			Help: "Batches waiting in a push exporter's queue.",
		}, queueLabels),
	}
	if reg != nil {
		reg.MustRegister(m.enqueued, m.sent, m.errors, m.dropped, m.length)
	}
	return m
}

// counters are one queue's children of the metric vectors.
type counters struct {
	enqueued, sent, errors, dropped prometheus.Counter
	length                          prometheus.Gauge
}

// counters returns the children for one queue; with m == nil they count
// into unregistered metrics, so the queue needs no nil checks.
func (m *Metrics) counters(exporter, signal string) counters {
	if m == nil {
		m = NewMetrics(nil)
	}
	l := prometheus.Labels{"exporter": exporter, "signal": signal}
	return counters{
		enqueued: m.enqueued.With(l), sent: m.sent.With(l), errors: m.errors.With(l),
		dropped: m.dropped.With(l), length: m.length.With(l),
	}
}
