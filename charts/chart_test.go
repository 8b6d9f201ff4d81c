package charts

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/profiler"
)

// helmModule is the Helm CLI the chart is tested with, built from the Go
// module proxy (Helm has no Debian package).
const helmModule = "helm.sh/helm/v3/cmd/helm@v3.22.0"

const (
	chartDir          = "cgscope"
	allFeaturesValues = "cgscope/ci/all-features-values.yaml"
	privilegedValues  = "cgscope/ci/privileged-values.yaml"
	// kubeVersion is passed to helm template: Helm's offline default is
	// 1.20, older than any cluster the chart supports.
	kubeVersion = "1.31.0"
)

// tools are built once per test binary, on first use, so that
// `go test ./... -run SomethingElse` pays nothing.
var tools struct {
	dirOnce, helmOnce, cgscopeOnce sync.Once
	dir, helm                      string
	dirErr, helmErr, cgscopeErr    error
	// cgscopeFlags are the long flags `cgscope serve --help` lists.
	cgscopeFlags map[string]bool
}

func TestMain(m *testing.M) {
	code := m.Run()
	if tools.dir != "" {
		os.RemoveAll(tools.dir)
	}
	os.Exit(code)
}

// toolDir returns the temporary directory the tools are built into.
func toolDir(t *testing.T) string {
	t.Helper()
	tools.dirOnce.Do(func() { tools.dir, tools.dirErr = os.MkdirTemp("", "cgscope-chart-test-") })
	if tools.dirErr != nil {
		t.Fatal(tools.dirErr)
	}
	return tools.dir
}

// helmBinary builds the pinned Helm CLI once.
func helmBinary(t *testing.T) string {
	t.Helper()
	dir := toolDir(t)
	tools.helmOnce.Do(func() {
		tools.helmErr = buildHelm(dir)
		tools.helm = filepath.Join(dir, "helm")
	})
	if tools.helmErr != nil {
		t.Fatal(tools.helmErr)
	}
	return tools.helm
}

// cgscopeFlags builds cgscope once and returns the flags of its serve
// command.
func cgscopeFlags(t *testing.T) map[string]bool {
	t.Helper()
	dir := toolDir(t)
	tools.cgscopeOnce.Do(func() {
		bin := filepath.Join(dir, "cgscope")
		if tools.cgscopeErr = goCommand(10*time.Minute, "..", "build", "-o", bin, "./cmd/cgscope"); tools.cgscopeErr != nil {
			return
		}
		out, err := exec.Command(bin, "serve", "--help").CombinedOutput()
		if err != nil {
			tools.cgscopeErr = fmt.Errorf("cgscope serve --help: %v\n%s", err, out)
			return
		}
		tools.cgscopeFlags = helpFlagNames(string(out))
		if len(tools.cgscopeFlags) < 10 {
			tools.cgscopeErr = fmt.Errorf("found only %d flags in cgscope serve --help:\n%s", len(tools.cgscopeFlags), out)
		}
	})
	if tools.cgscopeErr != nil {
		t.Fatal(tools.cgscopeErr)
	}
	return tools.cgscopeFlags
}

// buildHelm installs the pinned Helm CLI into dir. The module download is
// the only network use of this test: it is retried, with a generous limit,
// so that a slow or briefly failing proxy does not fail the test.
func buildHelm(dir string) error {
	var errs []error
	for attempt, wait := range []time.Duration{0, 10 * time.Second, 30 * time.Second} {
		time.Sleep(wait)
		err := goCommand(15*time.Minute, dir, "install", helmModule)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt+1, err))
	}
	return fmt.Errorf("building %s: %w", helmModule, errors.Join(errs...))
}

// goCommand runs the go tool in dir; GOBIN is dir itself (for go install),
// and the caller's GOFLAGS and workspace are ignored.
func goCommand(timeout time.Duration, dir string, args ...string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = abs
	cmd.Env = append(os.Environ(), "GOBIN="+abs, "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// helpFlagNames returns the long flag names in kingpin's help text, each
// --[no-]NAME flag as both NAME and no-NAME.
func helpFlagNames(help string) map[string]bool {
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--(\[no-\])?([a-z0-9][a-z0-9.-]*)`).FindAllStringSubmatch(help, -1) {
		names[m[2]] = true
		if m[1] != "" {
			names["no-"+m[2]] = true
		}
	}
	return names
}

// helm runs the built Helm CLI and returns its standard output; on failure
// the error carries standard error.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := helmBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// Keep Helm away from the user's configuration and caches.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// manifests are the objects one `helm template` rendered, decoded strictly.
type manifests struct {
	daemonSets      []*appsv1.DaemonSet
	services        []*corev1.Service
	serviceAccounts []*corev1.ServiceAccount
	secrets         []*corev1.Secret
	configMaps      []*corev1.ConfigMap
	serviceMonitors []*monitoringv1.ServiceMonitor
	podMonitors     []*monitoringv1.PodMonitor
}

// render runs helm template on chart with args (values files, --set) and
// decodes every document into the API type of its kind.
func render(t *testing.T, chart string, args ...string) *manifests {
	t.Helper()
	out, err := helm(t, append([]string{"template", "cgscope", chart, "--namespace", "cgscope", "--kube-version", kubeVersion}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeManifests(out)
	if err != nil {
		t.Fatalf("%v\nmanifests:\n%s", err, out)
	}
	return m
}

// decodeManifests splits a YAML stream and decodes each document strictly
// (unknown or duplicate fields are errors) into the Go type of the
// Kubernetes or Prometheus Operator API for its apiVersion and kind. A kind
// the chart is not expected to produce is an error.
func decodeManifests(stream string) (*manifests, error) {
	m := &manifests{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(stream)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return m, nil
		}
		if err != nil {
			return nil, err
		}
		var probe map[string]any
		if err := yaml.Unmarshal(doc, &probe); err != nil {
			return nil, err
		}
		if probe == nil {
			continue // only comments
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, err
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 DaemonSet":
			obj = appendNew(&m.daemonSets)
		case "v1 Service":
			obj = appendNew(&m.services)
		case "v1 ServiceAccount":
			obj = appendNew(&m.serviceAccounts)
		case "v1 Secret":
			obj = appendNew(&m.secrets)
		case "v1 ConfigMap":
			obj = appendNew(&m.configMaps)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			obj = appendNew(&m.serviceMonitors)
		case "monitoring.coreos.com/v1 PodMonitor":
			obj = appendNew(&m.podMonitors)
		default:
			return nil, fmt.Errorf("unexpected kind %q (apiVersion %q) in:\n%s", tm.Kind, tm.APIVersion, doc)
		}
		if err := decodeStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s: not a valid %s: %w\n%s", tm.Kind, tm.APIVersion, err, doc)
		}
	}
}

// appendNew appends a new, empty object to list and returns it, for a
// document to be decoded into.
func appendNew[T any](list *[]*T) *T {
	o := new(T)
	*list = append(*list, o)
	return o
}

// decodeStrict decodes a YAML document as the API server does: field names
// are case-sensitive (encoding/json would take hostPid for hostPID), and an
// unknown or duplicate field is an error.
func decodeStrict(doc []byte, obj any) error {
	data, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(data, obj)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// agent returns the only DaemonSet and its cgscope container.
func (m *manifests) agent(t *testing.T) (*appsv1.DaemonSet, *corev1.Container) {
	t.Helper()
	if len(m.daemonSets) != 1 {
		t.Fatalf("want 1 DaemonSet, got %d", len(m.daemonSets))
	}
	ds := m.daemonSets[0]
	if n := len(ds.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("want 1 container, got %d", n)
	}
	return ds, &ds.Spec.Template.Spec.Containers[0]
}

// flagValue returns the value of --name=VALUE in args.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func wantArg(t *testing.T, args []string, name, want string) {
	t.Helper()
	if got, ok := flagValue(args, name); !ok || got != want {
		t.Errorf("--%s: got %q (present %v), want %q; args %q", name, got, ok, want, args)
	}
}

// checkFlagsExist fails for every flag in args that `cgscope serve --help`
// does not list: the chart and the binary must not drift apart.
func checkFlagsExist(t *testing.T, args []string) {
	t.Helper()
	known := cgscopeFlags(t)
	if len(args) == 0 || args[0] != "serve" {
		t.Fatalf("args do not start with the serve command: %q", args)
	}
	for _, a := range args[1:] {
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			t.Errorf("argument %q is not a --flag", a)
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if !known[name] {
			t.Errorf("the chart passes --%s, which `cgscope serve --help` does not list", name)
		}
	}
}

// mount is a volume mount with the volume behind it.
type mount struct {
	corev1.VolumeMount
	volume corev1.Volume
}

// mounts returns the container's mounts by mount path.
func mounts(t *testing.T, ds *appsv1.DaemonSet, c *corev1.Container) map[string]mount {
	t.Helper()
	volumes := map[string]corev1.Volume{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if _, dup := volumes[v.Name]; dup {
			t.Errorf("volume %q defined twice", v.Name)
		}
		volumes[v.Name] = v
	}
	out := map[string]mount{}
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok {
			t.Errorf("mount %s names no volume (%q)", vm.MountPath, vm.Name)
		}
		out[vm.MountPath] = mount{VolumeMount: vm, volume: v}
	}
	return out
}

// wantHostMount checks a read-only mount of host path at the same path.
func wantHostMount(t *testing.T, ms map[string]mount, path string, typ corev1.HostPathType) {
	t.Helper()
	m, ok := ms[path]
	switch {
	case !ok:
		t.Errorf("no mount at %s", path)
	case m.volume.HostPath == nil || m.volume.HostPath.Path != path:
		t.Errorf("mount %s: want hostPath %s, got %+v", path, path, m.volume.VolumeSource)
	case m.volume.HostPath.Type == nil || *m.volume.HostPath.Type != typ:
		t.Errorf("mount %s: want hostPath type %q, got %v", path, typ, m.volume.HostPath.Type)
	case !m.ReadOnly:
		t.Errorf("mount %s is writable", path)
	}
}

func env(c *corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// valuesFile reads a values file into a generic map.
func valuesFile(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// lookup walks dotted keys through nested maps.
func lookup(v map[string]any, path string) any {
	var cur any = v
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

func TestLint(t *testing.T) {
	for _, values := range []string{"", allFeaturesValues, privilegedValues} {
		t.Run(filepath.Base(values), func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir}
			if values != "" {
				args = append(args, "--values", values)
			}
			out, err := helm(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Errorf("helm lint output:\n%s", out)
			}
		})
	}
}

// With default values: a DaemonSet on every node, with host PIDs, the
// documented capabilities and nothing more, a read-only root filesystem,
// the host mounts the code needs, and flags the binary knows.
func TestDefaults(t *testing.T) {
	m := render(t, chartDir)
	ds, c := m.agent(t)
	pod := ds.Spec.Template.Spec

	if !pod.HostPID {
		t.Error("hostPID is off: cgscope would see only its own pod's processes")
	}
	if pod.HostNetwork {
		t.Error("hostNetwork is on: not needed")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token, but cgscope does not use the API server")
	}
	if len(m.serviceAccounts) != 1 || m.serviceAccounts[0].AutomountServiceAccountToken == nil || *m.serviceAccounts[0].AutomountServiceAccountToken {
		t.Error("want one ServiceAccount with automountServiceAccountToken: false")
	} else if pod.ServiceAccountName != m.serviceAccounts[0].Name {
		t.Errorf("pod uses service account %q, chart creates %q", pod.ServiceAccountName, m.serviceAccounts[0].Name)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "" && tl.Operator == corev1.TolerationOpExists && tl.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not tolerate every taint: cgscope would miss tainted nodes", pod.Tolerations)
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no container securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged by default")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem is writable")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("not UID 0: the added capabilities would not be effective")
	}
	checkCapabilities(t, sc, nil)
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeUnconfined {
		t.Errorf("seccomp profile %+v, want Unconfined (values.yaml default)", sc.SeccompProfile)
	}
	if sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Errorf("AppArmor profile %+v, want Unconfined (values.yaml default)", sc.AppArmorProfile)
	}

	ms := mounts(t, ds, c)
	wantHostMount(t, ms, "/sys/kernel/btf", corev1.HostPathDirectory)
	wantHostMount(t, ms, "/sys/fs/cgroup", corev1.HostPathDirectory)
	wantHostMount(t, ms, "/sys/kernel/tracing", corev1.HostPathDirectory)
	// Every socket cgscope probes by default, except cri-dockerd's and
	// microk8s's (README: set cri.socketPath), lies in a mounted directory.
	for _, dir := range []string{"/run/containerd", "/run/crio", "/run/k3s/containerd"} {
		wantHostMount(t, ms, dir, corev1.HostPathDirectoryOrCreate)
	}
	for path, mt := range ms {
		if !mt.ReadOnly {
			t.Errorf("mount %s is writable; the default (in-memory history) writes nothing", path)
		}
	}
	if _, ok := flagValue(c.Args, "kubernetes.cri-endpoint"); ok {
		t.Errorf("--kubernetes.cri-endpoint passed by default: cgscope should probe: %q", c.Args)
	}

	nodeName, ok := env(c, "NODE_NAME")
	if !ok || nodeName.ValueFrom == nil || nodeName.ValueFrom.FieldRef == nil || nodeName.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME is not from the downward API's spec.nodeName: %+v", nodeName)
	}

	defaults := valuesFile(t, filepath.Join(chartDir, "values.yaml"))
	wantArg(t, c.Args, "profiling.frequency", fmt.Sprint(lookup(defaults, "profiling.frequency")))
	wantArg(t, c.Args, "profiling.interval", fmt.Sprint(lookup(defaults, "profiling.interval")))
	wantArg(t, c.Args, "storage.memory-limit", fmt.Sprint(lookup(defaults, "storage.memoryLimit")))
	port := fmt.Sprint(lookup(defaults, "web.port"))
	wantArg(t, c.Args, "web.listen-address", ":"+port)
	if _, ok := flagValue(c.Args, "web.config.file"); ok {
		t.Error("--web.config.file passed without a web configuration")
	}
	checkFlagsExist(t, c.Args)

	if len(c.Ports) != 1 || c.Ports[0].Name != "http-metrics" || fmt.Sprint(c.Ports[0].ContainerPort) != port {
		t.Errorf("container ports %+v, want http-metrics on %s", c.Ports, port)
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "http-metrics" || p.HTTPGet.Scheme != corev1.URISchemeHTTP {
			t.Errorf("%s probe %+v, want GET http /healthz on http-metrics", name, p)
		}
	}
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
		t.Errorf("want CPU and memory requests and a memory limit, got %+v", c.Resources)
	}
	if !lim.Cpu().IsZero() {
		t.Error("CPU limit by default: throttling would delay draining the kernel maps")
	}

	if len(m.services) != 1 {
		t.Fatalf("want 1 Service, got %d", len(m.services))
	}
	checkSelects(t, "Service", m.services[0].Spec.Selector, ds)
	if sp := m.services[0].Spec.Ports; len(sp) != 1 || sp[0].TargetPort.String() != "http-metrics" {
		t.Errorf("Service ports %+v, want one to http-metrics", sp)
	}
	if len(m.secrets)+len(m.serviceMonitors)+len(m.podMonitors) != 0 {
		t.Error("Secrets or monitors rendered by default")
	}
}

// checkCapabilities wants drop ALL and add exactly the documented set
// (profiler.LeastCapabilities, which TestLeastPrivilege runs cgscope with)
// plus extra.
func checkCapabilities(t *testing.T, sc *corev1.SecurityContext, extra []string) {
	t.Helper()
	if sc.Capabilities == nil {
		t.Fatal("no capabilities in the securityContext")
	}
	if got := sc.Capabilities.Drop; len(got) != 1 || got[0] != "ALL" {
		t.Errorf("capabilities dropped: %v, want [ALL]", got)
	}
	var got, want []string
	for _, c := range sc.Capabilities.Add {
		got = append(got, string(c))
	}
	want = append(slices.Clone(profiler.LeastCapabilities), extra...)
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("capabilities added: %v, want %v", got, want)
	}
}

// checkSelects fails unless selector is non-empty and matches the pods.
func checkSelects(t *testing.T, what string, selector map[string]string, ds *appsv1.DaemonSet) {
	t.Helper()
	if len(selector) == 0 {
		t.Errorf("%s selects everything", what)
	}
	for k, v := range selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("%s selects %s=%s, which the pods do not carry", what, k, v)
		}
	}
}

// Every optional feature on: monitors, web TLS and basic auth, OTLP,
// remote write, a fixed CRI socket, on-disk history, dashboards elsewhere.
func TestAllFeatures(t *testing.T) {
	m := render(t, chartDir, "--values", allFeaturesValues)
	ds, c := m.agent(t)
	vals := valuesFile(t, allFeaturesValues)
	checkFlagsExist(t, c.Args)

	// Web configuration: the generated Secret, mounted, passed, with TLS
	// from the tls Secret; probes that need no credentials.
	if len(m.secrets) != 1 {
		t.Fatalf("want 1 Secret (web config), got %d", len(m.secrets))
	}
	webCfg := m.secrets[0]
	var cfg struct {
		BasicAuthUsers map[string]string `json:"basic_auth_users"`
		TLS            struct {
			Cert string `json:"cert_file"`
			Key  string `json:"key_file"`
		} `json:"tls_server_config"`
	}
	if err := decodeStrict([]byte(webCfg.StringData["web-config.yml"]), &cfg); err != nil {
		t.Fatalf("web-config.yml: %v\n%s", err, webCfg.StringData["web-config.yml"])
	}
	if len(cfg.BasicAuthUsers) != 1 || cfg.TLS.Cert != "/etc/cgscope/tls/tls.crt" || cfg.TLS.Key != "/etc/cgscope/tls/tls.key" {
		t.Errorf("web config %+v: want the basic auth user and the mounted TLS Secret", cfg)
	}
	ms := mounts(t, ds, c)
	if w := ms["/etc/cgscope/web"]; w.volume.Secret == nil || w.volume.Secret.SecretName != webCfg.Name || !w.ReadOnly {
		t.Errorf("web config Secret %s not mounted read-only at /etc/cgscope/web: %+v", webCfg.Name, w)
	}
	if w := ms["/etc/cgscope/tls"]; w.volume.Secret == nil || w.volume.Secret.SecretName != lookup(vals, "web.tlsSecret") || !w.ReadOnly {
		t.Errorf("TLS Secret not mounted read-only at /etc/cgscope/tls: %+v", w)
	}
	wantArg(t, c.Args, "web.config.file", "/etc/cgscope/web/web-config.yml")
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.TCPSocket == nil || p.HTTPGet != nil {
			t.Errorf("%s probe %+v: with basic auth /healthz needs credentials; want a TCP probe", name, p)
		}
	}

	// Pushing.
	wantArg(t, c.Args, "otlp.endpoint", fmt.Sprint(lookup(vals, "otlp.endpoint")))
	wantArg(t, c.Args, "otlp.protocol", "grpc")
	wantArg(t, c.Args, "otlp.signals", "profiles,metrics")
	wantArg(t, c.Args, "otlp.interval", "30s")
	wantArg(t, c.Args, "otlp.max-request-size", "16MiB")
	if !slices.Contains(c.Args, "--otlp.insecure") {
		t.Error("--otlp.insecure missing")
	}
	headers, ok := env(c, "OTEL_EXPORTER_OTLP_HEADERS")
	if !ok || headers.ValueFrom == nil || headers.ValueFrom.SecretKeyRef == nil ||
		headers.ValueFrom.SecretKeyRef.Name != "otlp-credentials" || headers.ValueFrom.SecretKeyRef.Key != "headers" {
		t.Errorf("OTEL_EXPORTER_OTLP_HEADERS not from the Secret: %+v", headers)
	}
	wantArg(t, c.Args, "remote-write.url", fmt.Sprint(lookup(vals, "remoteWrite.url")))
	wantArg(t, c.Args, "remote-write.protocol", "2.0")
	wantArg(t, c.Args, "remote-write.interval", "30s")
	if !slices.Contains(c.Args, "--remote-write.header=X-Scope-OrgID=team-a") {
		t.Errorf("plain remote-write header missing: %q", c.Args)
	}
	// A secret header is an env var from the Secret that the kubelet
	// substitutes into the argument: the names must agree.
	ref := regexp.MustCompile(`^--remote-write\.header=Authorization=\$\(([A-Z0-9_]+)\)$`)
	var secretHeaderVar string
	for _, a := range c.Args {
		if mm := ref.FindStringSubmatch(a); mm != nil {
			secretHeaderVar = mm[1]
		}
	}
	if e, ok := env(c, secretHeaderVar); secretHeaderVar == "" || !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
		e.ValueFrom.SecretKeyRef.Name != "remote-write-credentials" || e.ValueFrom.SecretKeyRef.Key != "authorization" {
		t.Errorf("Authorization header: argument variable %q, env %+v", secretHeaderVar, e)
	}

	// The CRI socket given: its directory mounted, passed as an endpoint.
	wantHostMount(t, ms, "/run/containerd", corev1.HostPathDirectory)
	if _, probed := ms["/run/crio"]; probed {
		t.Error("probe directories mounted although cri.socketPath is set")
	}
	wantArg(t, c.Args, "kubernetes.cri-endpoint", "unix:///run/containerd/containerd.sock")

	// On-disk history on the node.
	st := ms["/var/lib/cgscope"]
	if st.volume.HostPath == nil || st.volume.HostPath.Path != lookup(vals, "storage.hostPath") || st.ReadOnly {
		t.Errorf("history: want a writable hostPath %v at /var/lib/cgscope, got %+v", lookup(vals, "storage.hostPath"), st)
	}
	wantArg(t, c.Args, "storage.path", "/var/lib/cgscope")
	wantArg(t, c.Args, "storage.retention", "48h")
	wantArg(t, c.Args, "storage.size-limit", "2GiB")
	if _, ok := flagValue(c.Args, "storage.memory-limit"); ok {
		t.Error("--storage.memory-limit passed with on-disk history")
	}

	for _, f := range []string{"--no-collector.faults", "--no-collector.tcp", "--cgroup.max-exported=500"} {
		if !slices.Contains(c.Args, f) {
			t.Errorf("%s missing from %q", f, c.Args)
		}
	}
	wantArg(t, c.Args, "profiling.frequency", "99")
	checkCapabilities(t, c.SecurityContext, []string{"SYS_ADMIN"})
	if p := c.SecurityContext.AppArmorProfile; p == nil || p.Type != corev1.AppArmorProfileTypeLocalhost || p.LocalhostProfile == nil || *p.LocalhostProfile != "cgscope" {
		t.Errorf("AppArmor profile %+v, want Localhost cgscope", p)
	}
	if ds.Spec.Template.Spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", ds.Spec.Template.Spec.PriorityClassName)
	}

	// Monitors: https with the configured TLS and basic auth, and the node
	// label the dashboards use.
	if len(m.serviceMonitors) != 1 || len(m.podMonitors) != 1 {
		t.Fatalf("want 1 ServiceMonitor and 1 PodMonitor, got %d and %d", len(m.serviceMonitors), len(m.podMonitors))
	}
	sm, pm := m.serviceMonitors[0], m.podMonitors[0]
	checkSelects(t, "ServiceMonitor", sm.Spec.Selector.MatchLabels, ds)
	checkSelects(t, "Service", m.services[0].Spec.Selector, ds)
	for k, v := range sm.Spec.Selector.MatchLabels {
		if m.services[0].Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%s, which the Service does not carry", k, v)
		}
	}
	checkSelects(t, "PodMonitor", pm.Spec.Selector.MatchLabels, ds)
	if len(sm.Spec.Endpoints) != 1 || len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("want one endpoint each, got %d and %d", len(sm.Spec.Endpoints), len(pm.Spec.PodMetricsEndpoints))
	}
	se, pe := sm.Spec.Endpoints[0], pm.Spec.PodMetricsEndpoints[0]
	type endpoint struct {
		port, scheme string
		relabel      []monitoringv1.RelabelConfig
		basicAuth    *monitoringv1.BasicAuth
		skipVerify   *bool
		honorLabels  bool
	}
	for name, e := range map[string]endpoint{
		"ServiceMonitor": {se.Port, schemeString(se.Scheme), se.RelabelConfigs, se.BasicAuth, skipVerify(safeTLS(se.TLSConfig)), se.HonorLabels},
		"PodMonitor":     {ptrString(pe.Port), schemeString(pe.Scheme), pe.RelabelConfigs, pe.BasicAuth, skipVerify(pe.TLSConfig), pe.HonorLabels},
	} {
		// Without honor_labels, the target's namespace/pod/container
		// (cgscope's own pod) overwrite the workload labels of every cgroup.
		if !e.honorLabels {
			t.Errorf("%s: honorLabels is off, so cgscope's namespace/pod/container labels would be overwritten", name)
		}
		if e.port != "http-metrics" || e.scheme != "https" {
			t.Errorf("%s endpoint: port %q scheme %q, want http-metrics https", name, e.port, e.scheme)
		}
		if !hasNodeRelabel(e.relabel) {
			t.Errorf("%s does not relabel __meta_kubernetes_pod_node_name into node: %+v", name, e.relabel)
		}
		if e.basicAuth == nil || e.basicAuth.Username.Name != "cgscope-scrape" || e.basicAuth.Password.Key != "password" {
			t.Errorf("%s basic auth %+v", name, e.basicAuth)
		}
		if e.skipVerify == nil || !*e.skipVerify {
			t.Errorf("%s TLS config not passed through", name)
		}
	}
	if len(se.RelabelConfigs) != 2 || len(se.MetricRelabelConfigs) != 1 {
		t.Errorf("ServiceMonitor: user relabelings not appended: %+v / %+v", se.RelabelConfigs, se.MetricRelabelConfigs)
	}

	checkDashboards(t, m, "monitoring", "grafana_dashboard", "cgscope")
	for _, cm := range m.configMaps {
		if cm.Annotations["grafana_folder"] != "cgscope" {
			t.Errorf("dashboard %s lacks the grafana_folder annotation", cm.Name)
		}
	}
}

func schemeString(s *monitoringv1.Scheme) string {
	if s == nil {
		return ""
	}
	return string(*s)
}

func ptrString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func safeTLS(c *monitoringv1.TLSConfig) *monitoringv1.SafeTLSConfig {
	if c == nil {
		return nil
	}
	return &c.SafeTLSConfig
}

// skipVerify returns InsecureSkipVerify of a TLS configuration, nil without one.
func skipVerify(c *monitoringv1.SafeTLSConfig) *bool {
	if c == nil {
		return nil
	}
	return c.InsecureSkipVerify
}

func hasNodeRelabel(rs []monitoringv1.RelabelConfig) bool {
	for _, r := range rs {
		if len(r.SourceLabels) == 1 && r.SourceLabels[0] == "__meta_kubernetes_pod_node_name" &&
			r.TargetLabel == "node" && (r.Action == "" || strings.EqualFold(r.Action, "replace")) {
			return true
		}
	}
	return false
}

// The privileged toggle replaces the capability list (old kernels).
func TestPrivileged(t *testing.T) {
	m := render(t, chartDir, "--values", privilegedValues)
	ds, c := m.agent(t)
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Fatalf("privileged=true does not run privileged: %+v", sc)
	}
	if sc.Capabilities != nil {
		t.Errorf("capabilities %+v listed for a privileged container", sc.Capabilities)
	}
	if sc.AllowPrivilegeEscalation != nil {
		t.Error("allowPrivilegeEscalation set: the API server rejects false with privileged")
	}
	if !ds.Spec.Template.Spec.HostPID {
		t.Error("hostPID off")
	}
	ms := mounts(t, ds, c)
	wantHostMount(t, ms, "/sys/kernel/btf", corev1.HostPathDirectory)
	wantHostMount(t, ms, "/sys/fs/cgroup", corev1.HostPathDirectory)
	wantHostMount(t, ms, "/sys/kernel/tracing", corev1.HostPathDirectory)
	if st := ms["/var/lib/cgscope"]; st.volume.EmptyDir == nil || st.ReadOnly {
		t.Errorf("history: want a writable emptyDir, got %+v", st)
	}
	wantArg(t, c.Args, "storage.path", "/var/lib/cgscope")
	checkFlagsExist(t, c.Args)
}

// Values that change the rendered arguments reach them; switching CRI off
// tells cgscope not to probe.
func TestValuesReachArgs(t *testing.T) {
	m := render(t, chartDir, "--set", "profiling.frequency=250,profiling.interval=5s,cri.enabled=false,collectors.oom=false,log.format=json,web.port=9999")
	ds, c := m.agent(t)
	wantArg(t, c.Args, "profiling.frequency", "250")
	wantArg(t, c.Args, "profiling.interval", "5s")
	wantArg(t, c.Args, "kubernetes.cri-endpoint", "none")
	wantArg(t, c.Args, "log.format", "json")
	wantArg(t, c.Args, "web.listen-address", ":9999")
	if !slices.Contains(c.Args, "--no-collector.oom") {
		t.Errorf("--no-collector.oom missing: %q", c.Args)
	}
	for path := range mounts(t, ds, c) {
		if strings.HasPrefix(path, "/run/") {
			t.Errorf("CRI directory %s mounted with cri.enabled=false", path)
		}
	}
	checkFlagsExist(t, c.Args)
}

// Kubernetes before 1.30 has no securityContext.appArmorProfile: the
// profile goes into the pod annotation instead.
func TestAppArmorAnnotationBefore130(t *testing.T) {
	out, err := helm(t, "template", "cgscope", chartDir, "--kube-version", "1.29.0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeManifests(out)
	if err != nil {
		t.Fatal(err)
	}
	ds, c := m.agent(t)
	if c.SecurityContext.AppArmorProfile != nil {
		t.Error("appArmorProfile field rendered for Kubernetes 1.29")
	}
	if got := ds.Spec.Template.Annotations["container.apparmor.security.beta.kubernetes.io/cgscope"]; got != "unconfined" {
		t.Errorf("AppArmor annotation %q, want unconfined", got)
	}
}

// checkDashboards wants one ConfigMap per dashboards/*.json of the real
// chart, labelled for Grafana's sidecar, holding the file byte for byte.
func checkDashboards(t *testing.T, m *manifests, namespace, labelKey, labelValue string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "dashboards", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	checkDashboardFiles(t, m, files, namespace, labelKey, labelValue)
}

func checkDashboardFiles(t *testing.T, m *manifests, files []string, namespace, labelKey, labelValue string) {
	t.Helper()
	if len(m.configMaps) != len(files) {
		t.Errorf("%d dashboard ConfigMaps for %d files %v", len(m.configMaps), len(files), files)
	}
	byFile := map[string]*corev1.ConfigMap{}
	for _, cm := range m.configMaps {
		if cm.Labels[labelKey] != labelValue {
			t.Errorf("ConfigMap %s: label %s=%q, want %q", cm.Name, labelKey, cm.Labels[labelKey], labelValue)
		}
		if cm.Namespace != namespace {
			t.Errorf("ConfigMap %s in namespace %q, want %q", cm.Name, cm.Namespace, namespace)
		}
		if len(cm.Data) != 1 {
			t.Errorf("ConfigMap %s holds %d keys, want 1", cm.Name, len(cm.Data))
		}
		for k := range cm.Data {
			byFile[k] = cm
		}
	}
	for _, f := range files {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cm, ok := byFile[filepath.Base(f)]
		if !ok {
			t.Errorf("no ConfigMap holds %s", f)
			continue
		}
		if got := cm.Data[filepath.Base(f)]; got != string(want) {
			t.Errorf("ConfigMap %s: data differs from %s (%d vs %d bytes)", cm.Name, f, len(got), len(want))
		}
		if !json.Valid(want) {
			t.Errorf("%s is not valid JSON", f)
		}
	}
}

// Every dashboards/*.json becomes a ConfigMap: the shipped ones, and one
// added to a copy of the chart (so that the test does not depend on which
// dashboards exist); dashboards.enabled=false renders none.
func TestDashboardConfigMaps(t *testing.T) {
	checkDashboards(t, render(t, chartDir), "cgscope", "grafana_dashboard", "1")
	if m := render(t, chartDir, "--set", "dashboards.enabled=false"); len(m.configMaps) != 0 {
		t.Errorf("dashboards.enabled=false rendered %d ConfigMaps", len(m.configMaps))
	}

	copyDir := filepath.Join(t.TempDir(), "cgscope")
	copyTree(t, chartDir, copyDir)
	extra := filepath.Join(copyDir, "dashboards", "Extra_Board.json")
	if err := os.MkdirAll(filepath.Dir(extra), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(extra, []byte("{\"title\": \"<extra> & \\\"quoted\\\"\",\n \"panels\": []}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := render(t, copyDir)
	files, _ := filepath.Glob(filepath.Join(copyDir, "dashboards", "*.json"))
	checkDashboardFiles(t, m, files, "cgscope", "grafana_dashboard", "1")
	if !slices.ContainsFunc(m.configMaps, func(cm *corev1.ConfigMap) bool { return cm.Name == "cgscope-dashboard-extra-board" }) {
		t.Error("no ConfigMap cgscope-dashboard-extra-board for dashboards/Extra_Board.json")
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Bad values fail at render time with a message naming the value, before
// anything reaches a cluster.
func TestBadValuesRejected(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"profiling.frequency=0", "/profiling/frequency"},
		{"profiling.frequency=1001", "/profiling/frequency"},
		{"profiling.interval=10", "/profiling/interval"},
		{"storage.type=tmpfs", "/storage/type"},
		{"storage.memoryLimit=32Mi", "/storage/memoryLimit"},
		{"otlp.protocol=http", "/otlp/protocol"},
		{"otlp.signals=traces", "/otlp/signals"},
		{"otlp.maxRequestSize=4M", "/otlp/maxRequestSize"},
		{"remoteWrite.protocol=3.0", "/remoteWrite/protocol"},
		{"cri.socketPath=/containerd.sock", "/cri/socketPath"},
		{"web.port=70000", "/web/port"},
		{"extraArgs[0]=serve", "/extraArgs/0"},
		{"frequency=99", "additional properties 'frequency' not allowed"},
		{"otlp.endpoint=x:4317,otlp.headersSecret.name=s", "otlp.headersSecret.key is required"},
		{"serviceMonitor.enabled=true,service.enabled=false", "serviceMonitor.enabled needs service.enabled"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			_, err := helm(t, "template", "cgscope", chartDir, "--set", tc.set)
			if err == nil {
				t.Fatalf("--set %s rendered", tc.set)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("--set %s: error does not name %q:\n%v", tc.set, tc.want, err)
			}
		})
	}
}

// NOTES.txt renders and tells how to reach the UI. helm template does not
// print notes and helm install --dry-run wants a cluster, so a copy of the
// chart renders NOTES.txt's text into a ConfigMap.
func TestNotes(t *testing.T) {
	copyDir := filepath.Join(t.TempDir(), "cgscope")
	copyTree(t, chartDir, copyDir)
	notes, err := os.ReadFile(filepath.Join(chartDir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	define := "{{- define \"test.notes\" -}}\n" + string(notes) + "\n{{- end }}\n"
	configMap := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"test.notes\" . | toJson }}\n"
	for name, text := range map[string]string{"_notes_test.tpl": define, "notes-test.yaml": configMap} {
		if err := os.WriteFile(filepath.Join(copyDir, "templates", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		values string
		want   []string
	}{
		{"", []string{"port-forward", "http://127.0.0.1:9760/", "set serviceMonitor.enabled or podMonitor.enabled", "grafana_dashboard=\"1\""}},
		{allFeaturesValues, []string{"port-forward", "https://127.0.0.1:9760/", "curl -k", "ServiceMonitor cgscope", "grafana_dashboard=\"cgscope\"", "OTLP", "Remote write (2.0)", "scraped twice"}},
	} {
		args := []string{"--show-only", "templates/notes-test.yaml"}
		if tc.values != "" {
			args = append(args, "--values", tc.values)
		}
		m := render(t, copyDir, args...)
		if len(m.configMaps) != 1 {
			t.Fatalf("want the notes ConfigMap, got %d ConfigMaps", len(m.configMaps))
		}
		text := m.configMaps[0].Data["notes"]
		for _, want := range tc.want {
			if !strings.Contains(text, want) {
				t.Errorf("values %q: NOTES lack %q:\n%s", tc.values, want, text)
			}
		}
		if strings.Contains(text, "<no value>") {
			t.Errorf("values %q: NOTES use an undefined value:\n%s", tc.values, text)
		}
	}
}

// The chart README documents every value (each leaf of values.schema.json's
// sections) and the reason for every capability.
func TestReadmeDocumentsValues(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var schema schemaNode
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	defaults := valuesFile(t, filepath.Join(chartDir, "values.yaml"))
	for _, path := range schema.leaves("") {
		if _, present := lookupPresent(defaults, path); !present {
			continue // e.g. appArmorProfile.localhostProfile: described in its type's row
		}
		if !bytes.Contains(readme, []byte("| `"+path+"` |")) {
			t.Errorf("README.md has no table row for value %s", path)
		}
	}
	for _, c := range profiler.LeastCapabilities {
		if !bytes.Contains(readme, []byte("| `CAP_"+c+"` |")) {
			t.Errorf("README.md does not say why CAP_%s is needed", c)
		}
	}
}

// lookupPresent is lookup that tells a null value from a missing key.
func lookupPresent(v map[string]any, path string) (any, bool) {
	keys := strings.Split(path, ".")
	cur := v
	for i, k := range keys {
		val, ok := cur[k]
		if !ok {
			return nil, false
		}
		if i == len(keys)-1 {
			return val, true
		}
		if cur, ok = val.(map[string]any); !ok {
			return nil, false
		}
	}
	return nil, false
}

// schemaNode is the part of JSON schema that values.schema.json uses to
// nest sections.
type schemaNode struct {
	Properties           map[string]schemaNode `json:"properties"`
	AdditionalProperties any                   `json:"additionalProperties"`
}

// leaves returns the dotted paths of the values: a closed object with
// properties is a section and is descended into; anything else is a value.
func (n schemaNode) leaves(prefix string) []string {
	var out []string
	for k, child := range n.Properties {
		path := strings.TrimPrefix(prefix+"."+k, ".")
		if len(child.Properties) > 0 && child.AdditionalProperties == false {
			out = append(out, child.leaves(path)...)
		} else {
			out = append(out, path)
		}
	}
	sort.Strings(out)
	return out
}

// values.yaml switches exactly the collectors cgscope has, with their
// defaults (collector.Table, where the --collector.NAME flags come from).
func TestValuesListEveryCollector(t *testing.T) {
	got, ok := valuesFile(t, filepath.Join(chartDir, "values.yaml"))["collectors"].(map[string]any)
	if !ok {
		t.Fatal("values.yaml has no collectors map")
	}
	for _, c := range collector.Table {
		if on, ok := got[c.Name].(bool); !ok || on != c.Default {
			t.Errorf("collectors.%s = %v, want %v", c.Name, got[c.Name], c.Default)
		}
		delete(got, c.Name)
	}
	for name := range got {
		t.Errorf("collectors.%s: cgscope has no such collector", name)
	}
}
