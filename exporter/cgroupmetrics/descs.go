package cgroupmetrics

import (
	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/internal/attribution"
)

// cgroupLabels label every per-cgroup series: the cgroup2 path and its
// workload (empty outside containers; namespace, pod and container need
// the CRI runtime).
var cgroupLabels = append([]string{"cgroup"}, attribution.LabelNames[:]...)

// The collector's own families, without cgroup labels.
var (
	descCgroupsFolded = &collector.Metric{Kind: collector.Gauge, Name: "cgscope_cgroups_folded", Labels: []string{"reason"},
		Help: "cgroups whose figures were summed into cgroup=\"other\" at the last scrape: over_limit (beyond --cgroup.max-exported) or unresolved (id without a path)."}
	descCgroupsFiltered = &collector.Metric{Kind: collector.Gauge, Name: "cgscope_cgroups_filtered",
		Help: "cgroups left out by --cgroup.include/--cgroup.exclude at the last scrape."}
	descCgroupsExported = &collector.Metric{Kind: collector.Gauge, Name: "cgscope_cgroups_exported",
		Help: "cgroup label sets exported at the last scrape, \"other\" included."}
	descScrapeDuration = &collector.Metric{Kind: collector.Gauge, Name: "cgscope_scrape_collector_duration_seconds", Labels: []string{"collector"},
		Help: "How long a collector took at the last scrape: cgroup is the whole of the per-cgroup metrics (reading the counters, naming, folding and writing every series), the others each running collector's part of it (cgroupfs includes its file reads)."}
	descScrapeSuccess = &collector.Metric{Kind: collector.Gauge, Name: "cgscope_scrape_collector_success", Labels: []string{"collector"},
		Help: "Whether a collector succeeded at the last scrape: 0 for all of them when the cgroups and their BPF counters could not be gathered."}
)
