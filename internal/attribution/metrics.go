package attribution

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// stats counts what the resolver did, for its self-metrics.
type stats struct {
	listings, listErrors atomic.Uint64
	up                   atomic.Bool
	resolved, unresolved atomic.Uint64
	evicted              atomic.Uint64
}

func (s *stats) record(err error) {
	s.listings.Add(1)
	if err != nil {
		s.listErrors.Add(1)
	}
	s.up.Store(err == nil)
}

var (
	descCRIUp = prometheus.NewDesc("cgscope_kubernetes_cri_up",
		"1 when the last listing of the CRI runtime succeeded, 0 when it failed or no runtime socket was found.", nil, nil)
	descCRIListings = prometheus.NewDesc("cgscope_kubernetes_cri_listings_total",
		"Listings of the CRI runtime's pods and containers, by result.", []string{"result"}, nil)
	descCached = prometheus.NewDesc("cgscope_kubernetes_cached_workloads",
		"Containers and pod sandboxes whose Kubernetes names are cached.", nil, nil)
	descLookups = prometheus.NewDesc("cgscope_kubernetes_lookups_total",
		"Lookups of a container's or pod's cgroup, by whether the runtime had named it (unnamed ones carry only container_id and pod_uid).",
		[]string{"result"}, nil)
	descEvicted = prometheus.NewDesc("cgscope_kubernetes_cache_evictions_total",
		"Cached workloads dropped because the cache was full.", nil, nil)
)

// Describe implements prometheus.Collector.
func (r *Resolver) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCRIUp, descCRIListings, descCached, descLookups, descEvicted} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (r *Resolver) Collect(ch chan<- prometheus.Metric) {
	s := &r.stats
	up := 0.0
	if s.up.Load() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descCRIUp, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(descCRIListings, prometheus.CounterValue, float64(s.listings.Load()-s.listErrors.Load()), "success")
	ch <- prometheus.MustNewConstMetric(descCRIListings, prometheus.CounterValue, float64(s.listErrors.Load()), "error")
	ch <- prometheus.MustNewConstMetric(descCached, prometheus.GaugeValue, float64(len(r.names.Load().containers)))
	ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(s.resolved.Load()), "named")
	ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(s.unresolved.Load()), "unnamed")
	ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(s.evicted.Load()))
}
