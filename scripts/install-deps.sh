#!/usr/bin/env bash
# Installs what cgscope needs on a fresh Debian machine, only where missing.
#   install-deps.sh runtime   tracefs mounted (for tracepoint collectors)
#   install-deps.sh test      the above, plus compilers and tools the tests and benchmarks use
set -euo pipefail
mode=${1:-test}

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: run as root (cgscope loads eBPF programs)" >&2
	exit 1
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing

[ "$mode" = runtime ] && exit 0

# command -> Debian package
declare -A want=(
	[clang-19]=clang-19
	[llvm-strip-19]=llvm-19
	[bpftool]=bpftool
	[bpftrace]=bpftrace
	[perf]=linux-perf
	[gcc]=gcc
	[g++]=g++
	[readelf]=binutils
	[losetup]=mount
	[strip]=binutils
	[gdb]=gdb
	[setpriv]=util-linux
	[ip]=iproute2
	[prometheus]=prometheus
	[chromium]=chromium
)
missing=()
for cmd in "${!want[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
# Runtimes the tests name by path (a rustup or pyenv one may come first on PATH).
declare -A want_path=(
	[/usr/bin/rustc]=rustc
	[/usr/bin/python3]=python3
	# Debian 12's CPython: the interpreter tests and benchmark walk its stacks.
	[/usr/bin/python3.11]=python3.11
)
for path in "${!want_path[@]}"; do
	[ -x "$path" ] || missing+=("${want_path[$path]}")
done

if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
