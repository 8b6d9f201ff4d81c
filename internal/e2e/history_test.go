package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/pprof/profile"
)

var (
	phasesOnce sync.Once
	phasesBin  string
	phasesErr  error
)

// phasesBinary builds the phases workload into the shared build directory.
func phasesBinary(t *testing.T) string {
	t.Helper()
	dir := artifacts(t)
	phasesOnce.Do(func() {
		phasesBin = filepath.Join(dir, "phases")
		out, err := exec.Command("go", "build", "-o", phasesBin, "./testdata/phases").CombinedOutput()
		if err != nil {
			phasesErr = fmt.Errorf("building phases: %v\n%s", err, out)
		}
	})
	if phasesErr != nil {
		t.Fatal(phasesErr)
	}
	return phasesBin
}

// historyProfile queries /api/v1/profile over [from, to) with extra filters.
func (d *daemon) historyProfile(t *testing.T, from, to time.Time, extra string) *profile.Profile {
	t.Helper()
	u := d.url(fmt.Sprintf("/api/v1/profile?from=%s&to=%s%s", from.UTC().Format(time.RFC3339Nano), to.UTC().Format(time.RFC3339Nano), extra))
	body, status := httpGet(t, u)
	if status != 200 {
		t.Fatalf("GET %s: %d %s", u, status, body)
	}
	p, err := profile.ParseData(body)
	if err != nil {
		t.Fatalf("parsing history profile: %v", err)
	}
	return p
}

// A workload switches its hot function halfway through: a history query
// over each half shows only that half's function, after the process is
// gone, from a store that survived a daemon restart.
func TestHistoryPhases(t *testing.T) {
	bin := phasesBinary(t)
	dir := t.TempDir()
	args := []string{fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=1s", "--storage.path=" + dir}
	d := startCgscope(t, t.Cleanup, args...)

	const half = 4 * time.Second
	start := time.Now()
	w := workload(t, bin, "-half="+half.String())
	w.Wait()
	time.Sleep(2500 * time.Millisecond) // the last window reaches the store
	d.stop()
	d = startCgscope(t, t.Cleanup, args...) // history must survive the restart

	filter := fmt.Sprintf("&pid=%d", w.Process.Pid)
	margin := 1500 * time.Millisecond // one interval plus scheduling slack
	first := d.historyProfile(t, start.Add(margin/3), start.Add(half-margin), filter)
	second := d.historyProfile(t, start.Add(half+margin), start.Add(2*half-margin/3), filter)
	check := func(name string, p *profile.Profile, want, unwanted string) {
		hot := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == "main."+want })
		other := samplesWhere(p, func(s *profile.Sample) bool { return stackHas(s, "main."+unwanted) })
		t.Logf("%s half: %s %d samples, %s %d", name, want, hot, unwanted, other)
		if hot < 100 || other != 0 {
			t.Errorf("%s half: want only %s; got %s=%d %s=%d\n%s", name, want, want, hot, unwanted, other, topLeaves(p))
		}
	}
	check("first", first, "phaseOne", "phaseTwo")
	check("second", second, "phaseTwo", "phaseOne")

	// Bad input is a clear 400.
	for _, q := range []string{"from=yesterday", "from=20&to=10", "pid=abc", "cgroup=relative", "bogus=1", "pod=Not_A_Pod", "namespace=-x"} {
		if body, status := httpGet(t, d.url("/api/v1/profile?"+q)); status != 400 || len(body) < 10 {
			t.Errorf("GET /api/v1/profile?%s: %d %q, want 400 with a reason", q, status, body)
		}
	}
	// Targets list the workload with its CPU share.
	body, status := httpGet(t, d.url(fmt.Sprintf("/api/v1/targets?from=%d&to=%d", start.Unix(), time.Now().Unix()+1)))
	if status != 200 {
		t.Fatalf("targets: %d %s", status, body)
	}
	var tg struct {
		Processes []struct {
			PID   int     `json:"pid"`
			Comm  string  `json:"comm"`
			Share float64 `json:"share"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(body, &tg); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range tg.Processes {
		if p.PID == w.Process.Pid && p.Comm == "phases" && p.Share > 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("phases (pid %d) not in targets: %s", w.Process.Pid, body)
	}
}

// chromium returns Debian's chromium, installing it when missing.
func chromium(t *testing.T) string {
	t.Helper()
	const bin = "/usr/bin/chromium"
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Log("installing chromium with apt-get")
	cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "chromium")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installing chromium: %v\n%s", err, out)
	}
	return bin
}

// The web UI, driven by a real headless Chromium: the workload's row is in
// the top table; its flame graph (pprof's, served by cgscope) names the
// workload's function.
func TestHistoryBrowser(t *testing.T) {
	bin := chromium(t)
	d := startCgscope(t, t.Cleanup, fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=1s")
	w := workload(t, phasesBinary(t), "-half=30s")
	time.Sleep(4 * time.Second)

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The first action starts the browser: its context must not time out.
	if err := chromedp.Do(ctx, chromedp.Navigate(d.url("/"))); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	tctx, cancelT := context.WithTimeout(ctx, 30*time.Second)
	defer cancelT()

	row := fmt.Sprintf(`#processes tr[data-pid="%d"]`, w.Process.Pid)
	for _, step := range []struct {
		name string
		a    chromedp.Action[chromedp.Void]
	}{
		{"find the workload's row", chromedp.WaitVisible(row)},
		{"open its flame graph", chromedp.Click(row + ` a.view-flamegraph`)},
		{"wait for the flame graph", chromedp.WaitReady(`#stack-chart div`)},
		{"let it draw", chromedp.Sleep(time.Second)},
	} {
		if err := chromedp.Do(tctx, step.a); err != nil {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML("body"))
			t.Fatalf("%s: %v\npage:\n%.3000s\ndaemon:\n%s", step.name, err, html, d.stderr)
		}
	}
	flame, err := chromedp.Run(tctx, chromedp.Text(`#stack-chart`))
	if err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(tctx, chromedp.FullScreenshot(90))
	if err != nil {
		t.Fatal(err)
	}
	// Kept with go test -artifacts (under -outputdir), else removed after.
	out := filepath.Join(t.ArtifactDir(), "flamegraph.jpg")
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", out)
	if !strings.Contains(flame, "phaseOne") {
		t.Errorf("flame graph does not name main.phaseOne; its text:\n%.2000s", flame)
	}
}
