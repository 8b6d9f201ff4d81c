package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// config is one way of running cgscope (or none: the baseline).
type config struct {
	name    string
	cgscope bool     // false: the baseline, no cgscope running
	args    []string // flags beyond the listen address
	// unavailable says why this configuration cannot run with the binary
	// measured; it is then reported as not run, never replaced.
	unavailable string
	// wantOffCPU is whether an off-CPU program must (true) or must not
	// (false) be loaded; nil when the configuration does not say.
	wantOffCPU *bool
	notes      []string
}

const (
	cfgBaseline      = "baseline (no cgscope)"
	cfgDefaults      = "defaults"
	cfgOffCPU        = "off-CPU on"
	cfgProfilingOnly = "profiling only"

	offCPUFlag = "profiling.off-cpu"
)

// offCPUPrefix starts the name of every off-CPU program (bpf/offcpu.bpf.c:
// offcpu_switch).
const offCPUPrefix = "offcpu"

// cgscopeFlags are the flags bin/cgscope knows, from --help-long: the
// boolean ones (with a --[no-] form) and the others.
type cgscopeFlags struct {
	bools, others map[string]bool
}

var flagRE = regexp.MustCompile(`^\s+(?:-\w, )?--(\[no-\])?([A-Za-z0-9][A-Za-z0-9._-]*)`)

// readFlags lists the flags of every command of the binary.
func readFlags(bin string) (cgscopeFlags, error) {
	out, _, err := benchutil.RunShort(20*time.Second, "", bin, "--help-long")
	if err != nil {
		return cgscopeFlags{}, fmt.Errorf("%s --help-long: %w", bin, err)
	}
	f := parseFlags(out)
	if len(f.bools)+len(f.others) == 0 {
		return f, fmt.Errorf("%s --help-long lists no flags", bin)
	}
	return f, nil
}

// parseFlags reads the flags from kingpin's help.
func parseFlags(help string) cgscopeFlags {
	f := cgscopeFlags{bools: map[string]bool{}, others: map[string]bool{}}
	for _, line := range strings.Split(help, "\n") {
		m := flagRE.FindStringSubmatch(line)
		switch {
		case m == nil:
		case m[1] != "":
			f.bools[m[2]] = true
		default:
			f.others[m[2]] = true
		}
	}
	return f
}

// collectors are the --[no-]collector.<name> switches, in the order of the
// help.
func (f cgscopeFlags) collectors() []string {
	var names []string
	for name := range f.bools {
		if c, ok := strings.CutPrefix(name, "collector."); ok && !strings.Contains(c, ".") {
			names = append(names, c)
		}
	}
	// The order of collector.Table for those it knows, then the others.
	slices.SortFunc(names, func(a, b string) int {
		ia, ib := tableIndex(a), tableIndex(b)
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	return names
}

func tableIndex(name string) int {
	for i, c := range collector.Table {
		if c.Name == name {
			return i
		}
	}
	return len(collector.Table)
}

// makeConfigs builds the configurations from what the binary knows, and
// says what differs from what the benchmark asks for.
func makeConfigs(f cgscopeFlags) (cfgs []*config, warnings []string) {
	on, off := true, false
	hasOffCPU := f.bools[offCPUFlag]
	cols := f.collectors()
	var source []string
	for _, c := range collector.Table {
		source = append(source, c.Name)
	}
	if len(cols) == 0 {
		warnings = append(warnings, "bin/cgscope --help-long lists no --[no-]collector.<name> flag: "+
			"\"profiling only\" cannot turn the collectors off")
	} else if !slices.Equal(sortedCopy(cols), sortedCopy(source)) {
		warnings = append(warnings, fmt.Sprintf("bin/cgscope's collectors (%s) are not those of this source tree's collector.Table (%s): "+
			"is bin/cgscope built from it? The binary's are used", strings.Join(cols, ", "), strings.Join(source, ", ")))
	}

	base := &config{name: cfgBaseline}
	defaults := &config{name: cfgDefaults, cgscope: true}
	offCPU := &config{name: cfgOffCPU, cgscope: true, wantOffCPU: &on}
	only := &config{name: cfgProfilingOnly, cgscope: true}
	for _, c := range cols {
		only.args = append(only.args, "--no-collector."+c)
	}
	// The flag is named even where it cannot run: the report says what was
	// meant, and that it did not run.
	offCPU.args = []string{"--" + offCPUFlag}
	switch {
	case hasOffCPU:
		only.args = append(only.args, "--no-"+offCPUFlag)
		only.wantOffCPU = &off
	case f.others[offCPUFlag]:
		offCPU.unavailable = fmt.Sprintf("bin/cgscope's --%s is not an on/off switch (--help-long shows no --[no-]%s): "+
			"the off-CPU configuration could not be run", offCPUFlag, offCPUFlag)
		only.notes = append(only.notes, fmt.Sprintf("bin/cgscope has no --no-%s, so it was not passed; "+
			"whether an off-CPU program was loaded anyway is checked below", offCPUFlag))
	default:
		offCPU.unavailable = fmt.Sprintf("bin/cgscope has no --%s flag (--help-long does not list it): "+
			"the off-CPU configuration could not be run", offCPUFlag)
		only.notes = append(only.notes, fmt.Sprintf("bin/cgscope has no --%s flag, so --no-%s was not passed; "+
			"whether an off-CPU program was loaded anyway is checked below", offCPUFlag, offCPUFlag))
	}
	return []*config{base, defaults, offCPU, only}, warnings
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// argv is the command line of cgscope in this configuration.
func (c *config) argv(bin string, port int) []string {
	return append([]string{bin, fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port)}, c.args...)
}

// flagsText is the configuration's flags for the report.
func (c *config) flagsText() string {
	if len(c.args) == 0 {
		return "no flags"
	}
	return "`" + strings.Join(c.args, " ") + "`"
}
