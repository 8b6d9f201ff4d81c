package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/cgscope/cgscope/internal/attribution/critest"
	"github.com/cgscope/cgscope/internal/grafana"
)

// dashboardFiles are the Grafana dashboards the chart ships.
const dashboardFiles = "../../charts/cgscope/dashboards/*.json"

// dashboardRateInterval stands for Grafana's $__rate_interval: it holds
// many more than four scrapes at the test's 1 s scrape interval, and the
// workload's events stay in it while the test waits for the rest.
const dashboardRateInterval = 30 * time.Second

// dashboardPositive lists, per dashboard and panel title, the queries that
// must show a value above zero for the test's workload (its cgroup and
// node selected): the workload burns CPU under a quota, sends over TCP,
// fails a connect and gets a process OOM-killed, and cgscope pushes to
// real receivers. Other queries must return series; these must also move.
var dashboardPositive = map[string]map[string][]string{
	"cgscope-workloads": {
		"cgroups": {"A"}, "CPU used": {"A"}, "Network": {"A"}, "OOM kills": {"A"}, "TCP connect failures": {"A"},
		"Workloads": {"A", "B", "D", "E"}, "CPU usage": {"A"}, "CPU throttling": {"A"},
		"Memory working set": {"A"}, "Memory usage / limit": {"A"}, "Network bytes": {"A", "B"},
		"Network packets":                   {"A", "B"},
		"TCP connections opened and closed": {"A", "B"},
	},
	"cgscope-agent": {
		"Samples/s": {"A"}, "BPF CPU": {"A"}, "Agent CPU": {"A"}, "Agent RSS": {"A"}, "Samples collected": {"A"},
		"BPF CPU per program": {"A"}, "Batches enqueued and sent": {"A", "B"}, "Agent memory": {"A", "B"},
		"Scrape duration": {"A"}, "Map drains": {"A"}, "Symbolizer caches": {"A"},
	},
}

// Every query of every panel of both dashboards, with the template
// variables substituted as Grafana does, returns data from a real
// Prometheus that scrapes a running cgscope while a workload runs in a
// test cgroup: once with every variable at All, once with the node and
// the test cgroup selected. The variable queries list the node and the
// cgroup.
func TestDashboardQueriesReturnData(t *testing.T) {
	dashboards := loadDashboards(t)
	node, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	targets := filepath.Join(t.TempDir(), "targets.json")
	prom := startPrometheusWithConfig(t, fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: cgscope
    file_sd_configs:
      - files: [%q]
`, targets))
	otlp := startOTLPReceiver(t, "")
	// The workload's cgroup is a Kubernetes container's, named by a CRI
	// runtime, so the namespace, pod and container variables have values.
	cri := critest.Start(t)
	pod := critest.Pod{SandboxID: critest.HexID(900), UID: critest.UID(900), Namespace: "dashboards", Name: "load-6f7c"}
	ctr := critest.Container{ID: critest.HexID(901), Name: "burner", Pod: pod}
	cri.AddPod(pod)
	cri.AddContainer(ctr)
	// Both push exporters run, so that their queue metrics exist and move;
	// cgroup files are re-read at the scrape interval, so that their
	// counters move within a $__rate_interval of the test's length.
	d := startCgscope(t, t.Cleanup, "--profiling.bpf-stats", "--profiling.frequency=99", "--profiling.interval=1s",
		"--collector.cgroupfs.interval=1s", "--kubernetes.cri-endpoint="+cri.Endpoint,
		"--remote-write.url=http://"+prom+"/api/v1/write", "--remote-write.interval=1s",
		"--otlp.endpoint="+otlp.addr, "--otlp.insecure", "--otlp.interval=1s")
	// The chart's ServiceMonitor relabels the node name into node; here a
	// static label does it.
	writeScrapeTarget(t, targets, d.addr, node)

	cg := limitedCgroup(t, "kubepods", "burstable", "pod"+pod.UID, ctr.ID)
	w := startNetWorkload(t, cg.abs, time.Minute)
	cg.join(t, w.Process.Pid)
	cgroupSel := fmt.Sprintf(`{cgroup=%q, node=%q, namespace=%q, pod=%q, container=%q}`, cg.rel, node, pod.Namespace, pod.Name, ctr.Name)
	waitForProm(t, prom, d, 20*time.Second, "count_over_time(cgscope_cgroup_cpu_seconds_total"+cgroupSel+"[1m]) >= 2")

	// The rare events, made on purpose so that their panels show them.
	runDashboardEvent(t, cg, "connect", prom)
	runDashboardEvent(t, cg, "oom", "")

	window := "[" + model.Duration(dashboardRateInterval).String() + "]"
	at := waitForProm(t, prom, d, 30*time.Second,
		`count_over_time(up{job="cgscope", node="`+node+`"}`+window+`) >= 4`,
		"count_over_time(cgscope_cgroup_cpu_seconds_total"+cgroupSel+window+") >= 4",
		"increase(cgscope_cgroup_oom_kills_total"+cgroupSel+window+") > 0",
		"increase(cgscope_cgroup_tcp_connect_failures_total"+cgroupSel+window+") > 0",
		`count(cgscope_exporter_sent_total{node="`+node+`"} > 0) >= 3`, // remote write + OTLP profiles and metrics
	)

	all := map[string]string{} // every filter variable at All
	selected := map[string]string{"node": grafana.RegexValue(node), "cgroup": grafana.RegexValue(cg.rel)}
	for _, db := range dashboards {
		t.Run(db.UID, func(t *testing.T) {
			t.Run("all", func(t *testing.T) {
				checkDashboardVariables(t, prom, db, all, at, nil)
				checkDashboardQueries(t, prom, db, all, at, nil)
			})
			t.Run("node and cgroup", func(t *testing.T) {
				checkDashboardVariables(t, prom, db, selected, at, map[string]string{"node": node, "cgroup": cg.rel})
				checkDashboardQueries(t, prom, db, selected, at, dashboardPositive[db.UID])
			})
			t.Run("namespace, pod and container", func(t *testing.T) {
				named := map[string]string{"node": node, "namespace": pod.Namespace, "pod": pod.Name, "container": ctr.Name}
				sel := map[string]string{}
				for k, v := range named {
					sel[k] = grafana.RegexValue(v)
				}
				checkDashboardVariables(t, prom, db, sel, at, named)
				checkDashboardQueries(t, prom, db, sel, at, dashboardPositive[db.UID])
			})
		})
	}
}

func loadDashboards(t *testing.T) []*grafana.Dashboard {
	files, err := filepath.Glob(dashboardFiles)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("%d dashboards in %s, want the workloads and agent ones", len(files), dashboardFiles)
	}
	var out []*grafana.Dashboard
	for _, f := range files {
		d, err := grafana.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// writeScrapeTarget points Prometheus's file service discovery at addr,
// labelled with the node; Prometheus notices the file at once.
func writeScrapeTarget(t *testing.T, path, addr, node string) {
	t.Helper()
	data, _ := json.Marshal([]map[string]any{{"targets": []string{addr}, "labels": map[string]string{"node": node}}})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// dashboardCgroup is a test cgroup with a memory limit and a CPU quota: in
// cgroup2 on a pure cgroup2 host, mirrored at the same path in the v1
// memory and cpu hierarchies on a hybrid one (as systemd does), where
// cgscope reads them.
type dashboardCgroup struct {
	rel, abs string
	v1       []string // v1 mirrors, hybrid hosts only
}

const (
	dashboardMemoryLimit = 96 << 20
	dashboardCPUQuota    = "1000 10000" // a tenth of a CPU in 10 ms periods: throttled even on a busy machine
)

// limitedCgroup makes the test's cgroup, with segments nested below it
// (a container's path), limited in memory and CPU.
func limitedCgroup(t *testing.T, segments ...string) *dashboardCgroup {
	t.Helper()
	rootRel, rootAbs := cgroup2(t)
	rel, abs := containerCgroups(t, rootRel, rootAbs, segments...)
	cg := &dashboardCgroup{rel: rel, abs: abs}
	if filepath.Dir(rootAbs) != "/sys/fs/cgroup" {
		cg.mirrorV1(t)
		return cg
	}
	sub, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control")
	if !strings.Contains(string(sub), "memory") || !strings.Contains(string(sub), "cpu") {
		t.Fatalf("the cgroup2 root does not enable memory and cpu for children (%q): the memory-limit, OOM and throttling panels cannot be tested", strings.TrimSpace(string(sub)))
	}
	// Every level above the leaf passes the controllers down.
	for dir := filepath.Dir(abs); len(dir) >= len(rootAbs); dir = filepath.Dir(dir) {
		writeCgroupFile(t, dir, "cgroup.subtree_control", "+memory +cpu")
	}
	writeCgroupFile(t, abs, "memory.max", strconv.Itoa(dashboardMemoryLimit))
	writeCgroupFile(t, abs, "cpu.max", dashboardCPUQuota)
	return cg
}

// mirrorV1 creates the cgroup's copies in the v1 memory and cpu
// hierarchies, sets the limits there and removes them afterwards.
func (cg *dashboardCgroup) mirrorV1(t *testing.T) {
	t.Helper()
	for _, ctrl := range []string{"memory", "cpu"} {
		root := filepath.Join("/sys/fs/cgroup", ctrl)
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			t.Fatalf("hybrid host without a v1 %s hierarchy at %s: the memory-limit, OOM and throttling panels cannot be tested", ctrl, root)
		}
		// Each level of a nested path, removed leaf first after the test.
		dir := root
		for _, seg := range strings.Split(strings.Trim(cg.rel, "/"), "/") {
			dir = filepath.Join(dir, seg)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			level := dir
			t.Cleanup(func() { removeCgroupDir(t, root, level) })
		}
		cg.v1 = append(cg.v1, dir)
	}
	writeCgroupFile(t, cg.v1[0], "memory.limit_in_bytes", strconv.Itoa(dashboardMemoryLimit))
	quota, period, _ := strings.Cut(dashboardCPUQuota, " ") // cpu.max order
	writeCgroupFile(t, cg.v1[1], "cpu.cfs_period_us", period)
	writeCgroupFile(t, cg.v1[1], "cpu.cfs_quota_us", quota)
}

func writeCgroupFile(t *testing.T, dir, name, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0); err != nil {
		t.Fatalf("setting %s/%s to %s: %v", dir, name, value, err)
	}
}

// removeCgroupDir moves what is left in dir to root, then removes dir.
func removeCgroupDir(t *testing.T, root, dir string) {
	for range 50 {
		if procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(procs)) {
				os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0)
			}
		}
		if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("could not remove test cgroup %s", dir)
}

// join moves pid into the cgroup in every hierarchy.
func (cg *dashboardCgroup) join(t *testing.T, pid int) {
	t.Helper()
	for _, dir := range append([]string{cg.abs}, cg.v1...) {
		joinCgroup(t, dir, pid)
	}
}

// runDashboardEvent runs this test binary as TestDashboardEventHelper in
// the cgroup and checks the event happened: "connect" opens and closes a
// TCP connection to addr, then connects to a closed port; "oom" allocates
// past the memory limit and must be OOM-killed.
func runDashboardEvent(t *testing.T, cg *dashboardCgroup, event, addr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDashboardEventHelper$")
	cmd.Env = append(os.Environ(), "CGSCOPE_DASHBOARD_EVENT="+event, "CGSCOPE_DASHBOARD_OPEN="+addr,
		"CGSCOPE_DASHBOARD_CLOSED="+freeAddr(t))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	startHeld(t, cmd, func(pid int) { cg.join(t, pid) })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s helper still running after 20 s:\n%s", event, out.String())
	}
	var exit *exec.ExitError
	killed := errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	switch {
	case event == "oom" && !killed:
		t.Fatalf("oom helper was not OOM-killed: %v\n%s", err, out.String())
	case event != "oom" && err != nil:
		t.Fatalf("%s helper: %v\n%s", event, err, out.String())
	}
}

// TestDashboardEventHelper is the process runDashboardEvent runs; run
// directly it does nothing.
func TestDashboardEventHelper(t *testing.T) {
	event := os.Getenv("CGSCOPE_DASHBOARD_EVENT")
	if event == "" {
		return
	}
	// Wait until the parent has moved this process into the cgroup.
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		os.Exit(2)
	}
	switch event {
	case "connect":
		c, err := net.DialTimeout("tcp", os.Getenv("CGSCOPE_DASHBOARD_OPEN"), 5*time.Second)
		if err != nil {
			fmt.Println("connect to an open port:", err)
			os.Exit(3)
		}
		c.Close()
		_, err = net.DialTimeout("tcp", os.Getenv("CGSCOPE_DASHBOARD_CLOSED"), 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			fmt.Println("connect to a closed port:", err)
			os.Exit(4)
		}
	case "oom":
		// Touch every page, 8 MiB at a time, up to ten times the limit.
		var held [][]byte
		for range 10 * dashboardMemoryLimit / (8 << 20) {
			b := make([]byte, 8<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			held = append(held, b)
		}
		fmt.Printf("touched %d MiB and was not killed\n", len(held)*8)
		os.Exit(5)
	}
	os.Exit(0)
}

// promResult is the answer of an instant query.
type promResult struct {
	Status    string          `json:"status"`
	Error     string          `json:"error"`
	ErrorType string          `json:"errorType"`
	Data      json.RawMessage `json:"data"`
}

// promData is the data of a query answer.
type promData struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

// promInstant runs query at the given time and returns the values of its
// series (one for a scalar).
func promInstant(prom, query string, at time.Time) ([]float64, error) {
	u := fmt.Sprintf("http://%s/api/v1/query?query=%s&time=%d.%03d", prom, url.QueryEscape(query), at.Unix(), at.Nanosecond()/1e6)
	var r promResult
	if err := promGetJSON(u, &r); err != nil {
		return nil, err
	}
	var data promData
	if err := json.Unmarshal(r.Data, &data); err != nil {
		return nil, err
	}
	var raw []json.RawMessage
	switch data.ResultType {
	case "vector":
		var vec []struct {
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &vec); err != nil {
			return nil, err
		}
		for _, s := range vec {
			raw = append(raw, s.Value)
		}
	case "scalar":
		raw = append(raw, data.Result)
	default:
		return nil, fmt.Errorf("result type %q, want vector or scalar", data.ResultType)
	}
	var out []float64
	for _, v := range raw {
		var pair [2]any
		if err := json.Unmarshal(v, &pair); err != nil {
			return nil, err
		}
		s, _ := pair[1].(string)
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("value %q: %v", s, err)
		}
		out = append(out, f)
	}
	return out, nil
}

func promGetJSON(u string, r *promResult) error {
	resp, err := httpClient.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(r); err != nil {
		return fmt.Errorf("HTTP %d: %v", resp.StatusCode, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	return nil
}

// waitForProm polls until every condition returns data, and returns the
// time they all held. On failure it shows Prometheus's view of the scrapes
// and cgscope's log.
func waitForProm(t *testing.T, prom string, d *daemon, timeout time.Duration, conditions ...string) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		now := time.Now()
		var unmet []string
		for _, c := range conditions {
			if v, err := promInstant(prom, c, now); err != nil || len(v) == 0 {
				unmet = append(unmet, fmt.Sprintf("%s (%v)", c, err))
			}
		}
		if len(unmet) == 0 {
			return now
		}
		if now.After(deadline) {
			t.Fatalf("within %s, Prometheus still has no data for:\n  %s\nscrape targets: %s\ncgscope log:\n%s",
				timeout, strings.Join(unmet, "\n  "), promTargetHealth(prom), d.stderr)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// promTargetHealth says how Prometheus's scrapes went, for failure messages.
func promTargetHealth(prom string) string {
	resp, err := httpClient.Get("http://" + prom + "/api/v1/targets")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			ActiveTargets []struct {
				ScrapeURL, Health, LastError string
				LastScrapeDuration           float64
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%+v", r.Data.ActiveTargets)
}

// dashboardValues expands every variable of db: the filter variables to
// selected[name] as Grafana writes a selected value, or to All (".*");
// custom variables to their saved value.
func dashboardValues(db *grafana.Dashboard, selected map[string]string) map[string]string {
	values := grafana.Builtins(dashboardRateInterval, time.Second, 5*time.Minute)
	for _, v := range db.Templating.List {
		switch {
		case v.Type == "query" && selected[v.Name] != "":
			values[v.Name] = selected[v.Name]
		case v.Type == "query":
			values[v.Name] = v.AllValue
		case v.Type == "datasource":
			values[v.Name] = "prometheus"
		default:
			values[v.Name] = v.CurrentValue()
		}
	}
	return values
}

// checkDashboardVariables runs each label_values variable query as Grafana
// would (series of the selector, values of the label): the selector must
// match series, and the label must offer each value in want.
func checkDashboardVariables(t *testing.T, prom string, db *grafana.Dashboard, selected map[string]string, at time.Time, want map[string]string) {
	values := dashboardValues(db, selected)
	for _, v := range db.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, err := v.QueryText()
		if err != nil {
			t.Fatal(err)
		}
		sel, label, err := grafana.ParseLabelValues(q)
		if err != nil {
			t.Fatal(err)
		}
		sel, err = grafana.Expand(sel, values)
		if err != nil {
			t.Fatal(err)
		}
		got, err := promLabelValues(prom, sel, label, at)
		switch {
		case err != nil:
			t.Errorf("variable %s: %s: %v", v.Name, sel, err)
		case got == nil:
			t.Errorf("variable %s: no series match %s", v.Name, sel)
		case want[v.Name] != "" && !slices.Contains(got, want[v.Name]):
			t.Errorf("variable %s: values %q lack %q", v.Name, got, want[v.Name])
		default:
			t.Logf("variable %s: %d values (label_values(%s, %s))", v.Name, len(got), sel, label)
		}
	}
}

// promLabelValues returns the values of label over the series matching sel
// in the last minute before at: nil if no series match, empty if they
// match without the label.
func promLabelValues(prom, sel, label string, at time.Time) ([]string, error) {
	u := fmt.Sprintf("http://%s/api/v1/series?match[]=%s&start=%d&end=%d", prom, url.QueryEscape(sel), at.Add(-time.Minute).Unix(), at.Unix())
	var r promResult
	if err := promGetJSON(u, &r); err != nil {
		return nil, err
	}
	var series []map[string]string
	if err := json.Unmarshal(r.Data, &series); err != nil {
		return nil, err
	}
	if len(series) == 0 {
		return nil, nil
	}
	out := []string{}
	for _, s := range series {
		if v, ok := s[label]; ok && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out, nil
}

// checkDashboardQueries runs every target of every panel at the given time
// and requires series; the targets in positive (panel title → refIds) must
// also show a value above zero.
func checkDashboardQueries(t *testing.T, prom string, db *grafana.Dashboard, selected map[string]string, at time.Time, positive map[string][]string) {
	values := dashboardValues(db, selected)
	seen := map[string]bool{}
	n := 0
	for _, p := range db.AllPanels() {
		for _, tg := range p.Targets {
			n++
			name := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
			expr, err := grafana.Expand(tg.Expr, values)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			got, err := promInstant(prom, expr, at)
			switch {
			case err != nil:
				t.Errorf("%s: %s: %v", name, expr, err)
				continue
			case len(got) == 0:
				t.Errorf("%s: no data for %s%s", name, expr, emptySelectors(prom, expr, at))
				continue
			}
			if slices.Contains(positive[p.Title], tg.RefID) {
				seen[p.Title+"/"+tg.RefID] = true
				if !slices.ContainsFunc(got, func(v float64) bool { return v > 0 && !math.IsInf(v, 0) }) {
					t.Errorf("%s: values %v, want one above zero: %s", name, got, expr)
				}
			}
		}
	}
	for title, refs := range positive {
		for _, ref := range refs {
			if !seen[title+"/"+ref] {
				t.Errorf("no panel %q with target %s: dashboardPositive is out of date", title, ref)
			}
		}
	}
	t.Logf("%d queries checked", n)
}

// emptySelectors names the selectors of expr that match no series, to say
// why a query came back empty.
func emptySelectors(prom, expr string, at time.Time) string {
	node, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return fmt.Sprintf(" (does not parse: %v)", err)
	}
	var empty []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if v, err := promInstant(prom, "count("+vs.String()+")", at); err == nil && len(v) == 0 {
				empty = append(empty, vs.String())
			}
		}
		return nil
	})
	if len(empty) == 0 {
		return ""
	}
	return "; no series match " + strings.Join(empty, ", ")
}
