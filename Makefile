# cgscope — see README.md. Everything here runs as root on a Linux host with BTF.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
# Extra flags for `make run`, e.g. make run ARGS="--profiling.frequency=99"
ARGS      ?=
FUZZTIME  ?= 15s

.PHONY: all build run test fuzz generate bench lint deps clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/cgscope ./cmd/cgscope

# Builds and starts the daemon with defaults; the URL to open is printed.
run: build
	@scripts/install-deps.sh runtime
	@echo "cgscope: open http://127.0.0.1:9760/ (Ctrl-C stops)"
	./bin/cgscope $(ARGS)

# Installs what the tests need when missing, then runs every test on the real kernel.
# TestProcessChurn runs alone afterwards: it measures the daemon's RSS, and a
# host-wide profiler also holds what the other packages' test processes need.
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m -skip '^TestProcessChurn$$' ./...
	$(GO) test -count=1 -timeout 10m -run '^TestProcessChurn$$' ./internal/e2e
	$(MAKE) fuzz

# Short fuzz runs of the parsers of untrusted input (ELF objects, Go pclntab,
# call-frame information,
# /proc/PID/maps, cgroup paths).
FUZZ = -run '^$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s
fuzz:
	$(GO) test ./symbolizer $(FUZZ) -fuzz '^FuzzParseMaps$$'
	$(GO) test ./symbolizer $(FUZZ) -fuzz '^FuzzOpenObject$$'
	$(GO) test ./symbolizer $(FUZZ) -fuzz '^FuzzGoTable$$'
	$(GO) test ./internal/containerid $(FUZZ) -fuzz '^FuzzParseContainerPath$$'
	$(GO) test ./unwind $(FUZZ) -fuzz '^FuzzCompileSection$$'
	$(GO) test ./interp/ruby $(FUZZ) -fuzz '^FuzzReadObjectFacts$$'

# Regenerates the committed BPF objects and Go bindings with the pinned clang.
generate: deps
	cd bpf && $(GO) generate ./...

bench: deps build
	scripts/bench.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "not gofmt-ed"; exit 1; }
	$(GO) vet ./...

deps:
	@scripts/install-deps.sh test

clean:
	rm -rf bin out
