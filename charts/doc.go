// Package charts holds the Helm chart of cgscope (charts/cgscope). It has no
// Go code: its test renders the chart with a pinned, real Helm and checks the
// manifests against the Kubernetes and Prometheus Operator API types and
// against the flags of the cgscope binary.
package charts
