package benchutil

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Metrics is one scrape of cgscope's /metrics: every sample by its series
// as written (`name` or `name{labels}`).
type Metrics struct {
	At     time.Time
	Series map[string]float64
}

var scrapeClient = &http.Client{Timeout: 10 * time.Second}

// Scrape reads cgscope's /metrics text exposition on 127.0.0.1:port.
func Scrape(port int) (Metrics, error) {
	m := Metrics{At: time.Now(), Series: map[string]float64{}}
	resp, err := scrapeClient.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// Label values may hold spaces: a series with labels ends at its
		// last brace.
		end := strings.LastIndexByte(line, '}') + 1
		if end == 0 {
			end = strings.IndexByte(line, ' ')
		}
		if end <= 0 {
			continue
		}
		fields := strings.Fields(line[end:])
		if len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			m.Series[line[:end]] = v
		}
	}
	return m, sc.Err()
}

// Get returns one series, or 0 when it is absent.
func (m Metrics) Get(series string) float64 { return m.Series[series] }

// Has reports whether the series is present.
func (m Metrics) Has(series string) bool {
	_, ok := m.Series[series]
	return ok
}

// Sum adds up every series of the metric family name.
func (m Metrics) Sum(name string) float64 {
	var s float64
	for k, v := range m.Series {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// ByLabel returns the series of the family name that have only the label
// given, by its value: `name{label="v"}` as v.
func (m Metrics) ByLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	prefix := name + "{" + label + `="`
	for k, v := range m.Series {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if val, ok := strings.CutSuffix(rest, `"}`); ok && !strings.ContainsAny(val, `"{}`) {
			out[val] = v
		}
	}
	return out
}

// HeldBPF returns the ids of the BPF programs and maps a process holds a
// file descriptor to, from /proc/PID/fdinfo: a program's own descriptor,
// or a link's (which names its program). A program its own process keeps
// only attached, with no descriptor, is not found here.
func HeldBPF(pid int) (progs, maps map[int]bool, err error) {
	progs, maps = map[int]bool{}, map[int]bool{}
	dir := fmt.Sprintf("/proc/%d", pid)
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return nil, nil, err
	}
	for _, fd := range fds {
		link, err := os.Readlink(dir + "/fd/" + fd.Name())
		if err != nil || !strings.HasPrefix(link, "anon_inode:bpf") {
			continue
		}
		b, err := os.ReadFile(dir + "/fdinfo/" + fd.Name())
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			id, err := strconv.Atoi(strings.TrimSpace(v))
			switch {
			case err != nil:
			case k == "map_id":
				maps[id] = true
			case k == "prog_id": // program and link descriptors
				progs[id] = true
			}
		}
	}
	return progs, maps, nil
}
