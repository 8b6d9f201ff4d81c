// Command cgscope is the cgscope daemon: it profiles every process on the host
// with eBPF and serves the profiles and its own metrics over HTTP. `cgscope
// record` captures one profile to a file instead.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

// run parses args and runs the chosen command, returning the exit code.
func run(args []string) int {
	app := kingpin.New("cgscope", "eBPF CPU profiler and per-cgroup resource exporter.")
	app.Version(version)
	app.HelpFlag.Short('h')
	logCfg := &promslog.Config{}
	promslogflag.AddFlags(app, logCfg)
	prof := addProfilingFlags(app)

	serve := newServeCommand(app, prof)
	record := newRecordCommand(app, prof)

	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cgscope: %v (try --help)\n", namingFlag(app, args, err))
		return 2
	}
	slog.SetDefault(promslog.New(logCfg))
	if err := prof.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "cgscope: %v\n", err)
		return 2
	}
	switch cmd {
	case serve.cmd.FullCommand():
		err = serve.run()
	case record.cmd.FullCommand():
		err = record.run()
	}
	if err != nil {
		slog.Error("cgscope failed", "err", err)
		return 1
	}
	return 0
}

// namingFlag names the flag whose value err refuses: kingpin passes a
// value's own error on as it is ("time: invalid duration ..."), which does
// not say which flag was wrong. The flags are set again one by one until
// one fails the same way; nothing set here is used, for cgscope exits.
func namingFlag(app *kingpin.Application, args []string, err error) error {
	ctx, cerr := app.ParseContext(args)
	if cerr != nil || ctx == nil {
		return err
	}
	for _, e := range ctx.Elements {
		f, ok := e.Clause.(*kingpin.FlagClause)
		if !ok || e.Value == nil {
			continue
		}
		m := f.Model()
		if serr := m.Value.Set(*e.Value); serr != nil && serr.Error() == err.Error() {
			return fmt.Errorf("--%s=%q: %w", m.Name, *e.Value, err)
		}
	}
	return err
}
