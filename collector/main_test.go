package collector

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/internal/kerneltest"
)

// TestMain runs this package's own workloads (below) in a re-executed test
// binary, kerneltest's others, or else the tests.
func TestMain(m *testing.M) {
	if w := strings.Fields(os.Getenv(kerneltest.EnvWorkload)); len(w) > 0 {
		if run, ok := workloads[w[0]]; ok {
			os.Exit(run(w[1:]))
		}
	}
	kerneltest.Main(m)
}

// workloads a test starts in a cgroup with kerneltest.Cgroup.Command. They
// print "ready" when they have done their work and then wait for a line on
// stdin, or its end, so the test can read the kernel's figures of a
// process that is still there.
var workloads = map[string]func(args []string) int{
	// mix ROUNDS MIB BURN: ROUNDS pipe round trips between two threads
	// (voluntary switches, run-queue waits), MIB of fresh memory touched
	// (minor faults), two threads spinning BURN (involuntary switches).
	"mix": func(args []string) int {
		rounds, _ := strconv.Atoi(args[0])
		mib, _ := strconv.Atoi(args[1])
		burn, _ := time.ParseDuration(args[2])
		if err := pingPongPipes(rounds); err != nil {
			return fail(err)
		}
		if err := touchMemory(mib); err != nil {
			return fail(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); spinLocked(burn) }()
		}
		wg.Wait()
		return holdUntilStdin()
	},
	// pingpong DURATION: pipe round trips between two threads for a while.
	"pingpong": func(args []string) int {
		d, _ := time.ParseDuration(args[0])
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			if err := pingPongPipes(5000); err != nil {
				return fail(err)
			}
		}
		return holdUntilStdin()
	},
	// sleepers THREADS DURATION: threads that sleep 100 µs at a time for a
	// while, each wakeup a wait in the run queue.
	"sleepers": func(args []string) int {
		threads, _ := strconv.Atoi(args[0])
		d, _ := time.ParseDuration(args[1])
		deadline := time.Now().Add(d)
		var wg sync.WaitGroup
		for i := 0; i < threads; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				nap := syscall.Timespec{Nsec: 100_000}
				for time.Now().Before(deadline) {
					syscall.Nanosleep(&nap, nil)
				}
			}()
		}
		wg.Wait()
		return holdUntilStdin()
	},
	// steps: one step per line of stdin, each answered with "done":
	// "spin D" spins the main thread for D of CPU time; "thread D" spins a
	// new thread for D of CPU time, which then exits.
	"steps": func([]string) int {
		in := bufio.NewScanner(os.Stdin)
		fmt.Println("ready")
		for in.Scan() {
			cmd, arg, _ := strings.Cut(in.Text(), " ")
			d, _ := time.ParseDuration(arg)
			switch cmd {
			case "spin":
				spinLocked(d)
			case "thread":
				done := make(chan struct{})
				go func() {
					runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
					spin(d)
					close(done)
				}()
				<-done
			default:
				return fail(fmt.Errorf("unknown step %q", in.Text()))
			}
			fmt.Println("done")
		}
		return 0
	},
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// holdUntilStdin says "ready" and waits for a line on stdin, or its end.
func holdUntilStdin() int {
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

// pingPongPipes makes two OS threads wake each other rounds times through
// pipes, with blocking reads the Go runtime does not poll: every round trip
// is two voluntary switches and two wakeups.
func pingPongPipes(rounds int) error {
	var a, b [2]int
	if err := syscall.Pipe(a[:]); err != nil {
		return err
	}
	if err := syscall.Pipe(b[:]); err != nil {
		return err
	}
	defer func() {
		for _, fd := range []int{a[0], a[1], b[0], b[1]} {
			syscall.Close(fd)
		}
	}()
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		buf := make([]byte, 1)
		for i := 0; i < rounds; i++ {
			syscall.Read(a[0], buf)
			syscall.Write(b[1], buf)
		}
		close(done)
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := []byte{1}
	for i := 0; i < rounds; i++ {
		syscall.Write(a[1], buf)
		syscall.Read(b[0], buf)
	}
	<-done
	return nil
}

// touchMemory faults in mib of fresh anonymous memory page by page.
func touchMemory(mib int) error {
	mem, err := syscall.Mmap(-1, 0, mib<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return err
	}
	for i := 0; i < len(mem); i += os.Getpagesize() {
		mem[i] = 1
	}
	return syscall.Munmap(mem)
}

// spinLocked keeps a thread of its own busy for d of CPU time.
func spinLocked(d time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	spin(d)
}

// spin keeps the calling thread busy until it has had d of CPU time: the
// test machine's CPUs are shared, so wall time says little.
func spin(d time.Duration) {
	x := 0
	for start := threadCPUTime(); threadCPUTime()-start < d; {
		for j := 0; j < 100000; j++ {
			x += j
		}
	}
}

func threadCPUTime() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}
