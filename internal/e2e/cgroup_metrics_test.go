package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// cgroupSeries is the /metrics key of a cgroup outside any container: its
// path, the workload labels empty, and any extra labels, sorted by name as
// the exposition format does.
func cgroupSeries(name, cgroup string, extra ...string) string {
	labels := append([]string{`cgroup="` + cgroup + `"`, `container=""`, `container_id=""`, `namespace=""`, `pod=""`, `pod_uid=""`}, extra...)
	sort.Strings(labels)
	return name + "{" + strings.Join(labels, ",") + "}"
}

// The per-cgroup series appear on /metrics with the cgroup's path and
// container labels, and match the kernel's own accounting.
func TestCgroupSeriesOnMetrics(t *testing.T) {
	d := sharedCgscope(t)
	rel, abs := cgroup2(t)
	w := workloadIn(t, abs, filepath.Join(artifacts(t), "gosplit"), "-duration=1s")
	w.Wait()

	body, _ := httpGet(t, d.url("/metrics"))
	values := parseMetrics(t, string(body))
	key := func(name string, extra ...string) string { return cgroupSeries(name, rel, extra...) }
	cpu, ok := values[key("cgscope_cgroup_cpu_seconds_total")]
	if !ok {
		t.Fatalf("no cpu series for %s:\n%s", rel, grepLines(string(body), rel))
	}
	usage := cpuStatUsage(t, abs)
	t.Logf("cgroup %s: cgscope %.3f s, cpu.stat %.3f s", rel, cpu, usage)
	if cpu < usage*0.95 || cpu > usage*1.05 {
		t.Errorf("cpu seconds %.3f, cpu.stat usage %.3f: want within 5%%", cpu, usage)
	}
	for _, name := range []string{
		key("cgscope_cgroup_context_switches_total", `kind="voluntary"`),
		key("cgscope_cgroup_cpu_runqueue_latency_seconds_count"),
		key("cgscope_cgroup_page_faults_total", `kind="minor"`),
	} {
		if _, ok := values[name]; !ok {
			t.Errorf("missing %s", name)
		}
	}
	// cgroup files: the root cgroup has memory accounting on every layout.
	if v := values[cgroupSeries("cgscope_cgroup_memory_usage_bytes", "/")]; v <= 0 {
		t.Errorf("root cgroup memory usage %v, want > 0:\n%s", v, grepLines(string(body), "memory_usage"))
	}
	for _, collector := range []string{"sched", "faults", "oom", "network", "tcp"} {
		if v := values[`cgscope_collector_enabled{collector="`+collector+`"}`]; v != 1 {
			t.Errorf("collector %s enabled = %v", collector, v)
		}
	}
}

func cpuStatUsage(t *testing.T, abs string) float64 {
	data, err := os.ReadFile(filepath.Join(abs, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, _ := strconv.ParseFloat(v, 64)
			return us / 1e6
		}
	}
	t.Fatal("no usage_usec")
	return 0
}

func grepLines(text, needle string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, needle) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The cap folds cgroups beyond it into cgroup="other" and says how many.
func TestCgroupCapFoldsIntoOther(t *testing.T) {
	d := startCgscope(t, t.Cleanup, "--cgroup.max-exported=3", "--no-collector.cgroupfs")
	for i := 0; i < 5; i++ { // five busy cgroups, more than the cap
		_, abs := cgroup2(t)
		w := workload(t, filepath.Join(artifacts(t), "gosplit"), "-duration=100ms")
		joinCgroup(t, abs, w.Process.Pid)
		w.Wait()
	}
	body, _ := httpGet(t, d.url("/metrics"))
	values := parseMetrics(t, string(body))
	cgroups := map[string]bool{}
	for k := range values {
		if strings.HasPrefix(k, "cgscope_cgroup_cpu_seconds_total{") {
			cgroups[k] = true
		}
	}
	if len(cgroups) > 4 {
		t.Errorf("%d cpu series with --cgroup.max-exported=3 (want at most 3 + other)", len(cgroups))
	}
	if values[`cgscope_cgroups_folded{reason="over_limit"}`] == 0 {
		t.Errorf("nothing folded into other on a host with more than 3 cgroups:\n%s", grepLines(string(body), "cgscope_cgroups"))
	}
	if _, ok := values[cgroupSeries("cgscope_cgroup_cpu_seconds_total", "other")]; !ok {
		t.Errorf("no cgroup=\"other\" series")
	}
}

// Bad cgroup flags are refused before anything is attached.
func TestBadCgroupFlags(t *testing.T) {
	bin := filepath.Join(artifacts(t), "cgscope")
	for _, args := range [][]string{
		{"--cgroup.include=("},
		{"--cgroup.exclude=[z-a]"},
		{"--cgroup.max-exported=0"},
		{"--cgroup.max-tracked=0"},
		{"--cgroup.max-depth=-1"},
	} {
		start := time.Now()
		out, err := exec.Command(bin, append(args, "--web.listen-address="+freeAddr(t))...).CombinedOutput()
		exit, ok := err.(*exec.ExitError)
		if !ok || exit.ExitCode() == 0 {
			t.Errorf("%v: err=%v, want a non-zero exit", args, err)
			continue
		}
		flag := strings.SplitN(strings.TrimPrefix(args[0], "--"), "=", 2)[0]
		if !strings.Contains(string(out), flag) {
			t.Errorf("%v: message does not name %s: %s", args, flag, out)
		}
		if strings.Contains(string(out), "profiling") && strings.Contains(string(out), "cpus=") {
			t.Errorf("%v: attached before refusing: %s", args, out)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("%v: took %s to refuse", args, time.Since(start))
		}
	}
}

// --web.config.file (exporter-toolkit) puts TLS and basic auth on every endpoint.
func TestWebConfigTLSAndBasicAuth(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSignedCert(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "web.yml")
	os.WriteFile(config, []byte(fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  sre: %s\n",
		certFile, keyFile, hash)), 0o600)

	bin := filepath.Join(artifacts(t), "cgscope")
	addr := freeAddr(t)
	cmd := exec.Command(bin, "--web.listen-address="+addr, "--web.config.file="+config)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	get := func(user, pass string) int {
		req, _ := http.NewRequest("GET", "https://"+addr+"/metrics", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(15 * time.Second)
	for get("sre", "s3cret") != 200 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if code := get("sre", "s3cret"); code != 200 {
		t.Fatalf("with credentials over HTTPS: %d", code)
	}
	if code := get("", ""); code != 401 {
		t.Errorf("without credentials: %d, want 401", code)
	}
	if code := get("sre", "wrong"); code != 401 {
		t.Errorf("wrong password: %d, want 401", code)
	}
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("plain HTTP served with TLS configured")
		}
	}
}

func writeSelfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "cgscope-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

// A deleted cgroup's series stay for the grace period, then go away.
func TestDeletedCgroupSeriesExpire(t *testing.T) {
	d := startCgscope(t, t.Cleanup, "--cgroup.grace-period=3s", "--no-collector.cgroupfs")
	rel, abs := cgroup2(t)
	w := workload(t, filepath.Join(artifacts(t), "gosplit"), "-duration=200ms")
	joinCgroup(t, abs, w.Process.Pid)
	w.Wait()
	series := cgroupSeries("cgscope_cgroup_cpu_seconds_total", rel)
	scrape := func() map[string]float64 {
		body, _ := httpGet(t, d.url("/metrics"))
		return parseMetrics(t, string(body))
	}
	if _, ok := scrape()[series]; !ok {
		t.Fatalf("no series for live cgroup %s", rel)
	}
	if err := os.Remove(abs); err != nil {
		t.Fatal(err)
	}
	if _, ok := scrape()[series]; !ok {
		t.Errorf("series gone right after deletion; want it kept for the grace period")
	}
	// Deletion is noticed within the 10 s listing interval, then 3 s grace.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, ok := scrape()[series]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("series of %s still exported 20 s after deletion", rel)
		}
		time.Sleep(time.Second)
	}
}
