// Command peer-go is the Go peer of weft-bench: the canonical workloads of
// BENCH.md written with goroutines, channels, sync.WaitGroup, time.Sleep and
// net/http, exactly as weft's bench/<id>.c writes them with coroutines, so the
// two can be compared side by side in one run (bench/compare).
//
//	peer-go <id> [--workers N] [--size N] [--k K] [--port P]
//
// ids: yield spawn skynet fib uts pingpong timers park http. `--workers` sets
// GOMAXPROCS (default runtime.NumCPU(); bench/compare passes weft's worker
// count). `--size` has the meaning each workload gives it in bench/main.c.
// Each workload verifies its checksum and only then prints, exactly,
//
//	bench=<id> impl=go workers=<n> metric=<name> value=<number> unit=<unit>
//
// and exits 1 on a wrong checksum, 2 on bad arguments. `http` serves
// "Hello, World!\n" on 127.0.0.1:<port> until killed (wrk measures it).
// Start-up of Go's runtime happens before main and is not measured.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type opts struct {
	workers int
	size    int64
	k       int64
	port    int
}

const impl = "go"

func line(id string, workers int, metric string, value float64, unit, note string) {
	// Whole bytes; 3 decimals, or 6 below 1 so small ratios keep digits.
	digits := 3
	if unit == "bytes" {
		digits = 0
	} else if value != 0 && value < 1 && value > -1 {
		digits = 6
	}
	if note != "" {
		note = "  " + note
	}
	fmt.Printf("bench=%s impl=%s workers=%d metric=%s value=%.*f unit=%s%s\n",
		id, impl, workers, metric, digits, value, unit, note)
}

func fail(id, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go %s: FAILED: %s\n", id, fmt.Sprintf(format, args...))
	os.Exit(1)
}

func sizeOr(o *opts, def int64) int64 {
	if o.size > 0 {
		return o.size
	}
	return def
}

func ns(d time.Duration) float64 { return float64(d.Nanoseconds()) }

// statusBytes reads a "Field:   N kB" line of /proc/self/status, in bytes.
func statusBytes(field string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), field) {
			fields := strings.Fields(s.Text())
			kib, _ := strconv.ParseFloat(fields[1], 64)
			return kib * 1024
		}
	}
	return -1
}

// peakRSS is the process's peak resident set (VmHWM), in bytes. Not
// getrusage's ru_maxrss, which Linux carries across execve from the harness
// that started this process.
func peakRSS() float64 { return statusBytes("VmHWM:") }

// vmRSS is the current resident set (VmRSS), in bytes.
func vmRSS() float64 { return statusBytes("VmRSS:") }

func median3(f func() time.Duration) time.Duration {
	d := []time.Duration{f(), f(), f()}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[1]
}

// yield: one P (GOMAXPROCS=1), K goroutines each calling runtime.Gosched in
// a loop; 10,000,000 yields in total (--size), K = 2 and 1000 (--k).
// Checksum: the per-goroutine counts sum to the total.
func benchYield(o *opts) {
	runtime.GOMAXPROCS(1)
	total := sizeOr(o, 10000000)
	ks := []int64{2, 1000}
	if o.k > 0 {
		ks = []int64{o.k}
	}
	for _, k := range ks {
		each := total / k
		counts := make([]int64, k)
		var wg sync.WaitGroup
		t0 := time.Now()
		for i := int64(0); i < k; i++ {
			wg.Add(1)
			go func(slot *int64) {
				var n int64
				for j := int64(0); j < each; j++ {
					runtime.Gosched()
					n++
				}
				*slot = n
				wg.Done()
			}(&counts[i])
		}
		wg.Wait()
		elapsed := time.Since(t0)
		var sum int64
		for _, c := range counts {
			sum += c
		}
		if sum != each*k {
			fail("yield", "counted %d yields, want %d", sum, each*k)
		}
		line("yield", 1, fmt.Sprintf("ns_per_yield_k%d", k), ns(elapsed)/float64(sum), "ns",
			fmt.Sprintf("K=%d goroutines, %d yields", k, sum))
	}
}

// spawn: 1,000,000 goroutines each add 1 to an atomic counter; a WaitGroup
// waits for all. Checksum: counter == N.
func benchSpawn(o *opts) {
	n := sizeOr(o, 1000000)
	var counter int64
	var wg sync.WaitGroup
	t0 := time.Now()
	wg.Add(int(n))
	for i := int64(0); i < n; i++ {
		go func() {
			atomic.AddInt64(&counter, 1)
			wg.Done()
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if atomic.LoadInt64(&counter) != n {
		fail("spawn", "counter %d, want %d", counter, n)
	}
	line("spawn", o.workers, "ns_per_coroutine", ns(elapsed)/float64(n), "ns", fmt.Sprintf("%d goroutines", n))
	line("spawn", o.workers, "peak_rss", peakRSS(), "bytes", "")
}

// skynet: the Go original (github.com/atemerev/skynet): each parent makes an
// unbuffered channel, starts 10 children that send their sum on it, and
// receives 10 values. 1,000,000 leaves (--size, rounded down to a power of
// 10). Checksum: leaves*(leaves-1)/2 (499999500000).
func skynet(c chan<- int64, num, size int64) {
	if size == 1 {
		c <- num
		return
	}
	rc := make(chan int64)
	var sum int64
	for i := int64(0); i < 10; i++ {
		go skynet(rc, num+i*(size/10), size/10)
	}
	for i := 0; i < 10; i++ {
		sum += <-rc
	}
	c <- sum
}

func benchSkynet(o *opts) {
	leaves := int64(1)
	for leaves*10 <= sizeOr(o, 1000000) {
		leaves *= 10
	}
	c := make(chan int64)
	t0 := time.Now()
	go skynet(c, 0, leaves)
	sum := <-c
	elapsed := time.Since(t0)
	if want := leaves * (leaves - 1) / 2; sum != want {
		fail("skynet", "sum %d, want %d", sum, want)
	}
	line("skynet", o.workers, "ms", ns(elapsed)/1e6, "ms", fmt.Sprintf("%d leaves, sum=%d", leaves, sum))
	line("skynet", o.workers, "peak_rss", peakRSS(), "bytes", "")
}

// fib: naive fork-join fib(n) (n=30, --size): a goroutine computes fib(n-1),
// fib(n-2) is computed inline, a WaitGroup joins; no cutoff. Checksum: the
// serial fib of the same process. overhead_per_spawn = (workers*T_parallel -
// T_serial) / spawns: the CPU time beyond the serial work, per spawn.
func fibSerial(n int64) int64 {
	if n < 2 {
		return n
	}
	return fibSerial(n-1) + fibSerial(n-2)
}

func fibPar(n int64) int64 {
	if n < 2 {
		return n
	}
	var a int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		a = fibPar(n - 1)
		wg.Done()
	}()
	b := fibPar(n - 2)
	wg.Wait()
	return a + b
}

func fibSpawns(n int64) int64 {
	if n < 2 {
		return 0
	}
	var a, b int64 // spawns(i-2), spawns(i-1)
	for i := int64(2); i <= n; i++ {
		a, b = b, 1+a+b
	}
	return b
}

func benchFib(o *opts) {
	n := sizeOr(o, 30)
	var serial int64
	tSerial := median3(func() time.Duration {
		t0 := time.Now()
		serial = fibSerial(n)
		return time.Since(t0)
	})
	t0 := time.Now()
	got := fibPar(n)
	tPar := time.Since(t0)
	if got != serial || (n == 30 && got != 832040) {
		fail("fib", "fib(%d) = %d, want %d", n, got, serial)
	}
	spawns := fibSpawns(n)
	overhead := 0.0
	if spawns > 0 {
		overhead = (float64(o.workers)*ns(tPar) - ns(tSerial)) / float64(spawns)
	}
	line("fib", o.workers, "ms", ns(tPar)/1e6, "ms",
		fmt.Sprintf("fib(%d)=%d spawns=%d serial_ms=%.3f", n, got, spawns, ns(tSerial)/1e6))
	line("fib", o.workers, "overhead_per_spawn", overhead, "ns",
		"(workers*T_parallel - T_serial) / spawns")
}

// uts: the tree of BENCH.md, one goroutine per node (root children 2000,
// --size). Checksum: the node count equals the serial DFS count (456513).
func utsSM(x uint64) uint64 {
	z := x + 0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func utsChildren(seed uint64) int {
	if float64(seed>>11)*(1.0/(1<<53)) < 0.124 {
		return 8
	}
	return 0
}

func utsSerial(seed uint64) uint64 {
	n := uint64(1)
	for j := 0; j < utsChildren(seed); j++ {
		n += utsSerial(utsSM(seed*8 + uint64(j)))
	}
	return n
}

func utsSerialRoot(rootChildren int64) uint64 {
	n := uint64(1)
	for j := int64(0); j < rootChildren; j++ {
		n += utsSerial(utsSM(42*8 + uint64(j)))
	}
	return n
}

func utsPar(seed uint64) uint64 {
	c := utsChildren(seed)
	if c == 0 {
		return 1
	}
	var counts [8]uint64
	var wg sync.WaitGroup
	wg.Add(c)
	for j := 0; j < c; j++ {
		go func(j int) {
			counts[j] = utsPar(utsSM(seed*8 + uint64(j)))
			wg.Done()
		}(j)
	}
	wg.Wait()
	n := uint64(1)
	for _, x := range counts[:c] {
		n += x
	}
	return n
}

func utsParRoot(rootChildren int64) uint64 {
	counts := make([]uint64, rootChildren)
	var wg sync.WaitGroup
	wg.Add(int(rootChildren))
	for j := int64(0); j < rootChildren; j++ {
		go func(j int64) {
			counts[j] = utsPar(utsSM(42*8 + uint64(j)))
			wg.Done()
		}(j)
	}
	wg.Wait()
	n := uint64(1)
	for _, x := range counts {
		n += x
	}
	return n
}

func benchUts(o *opts) {
	rootChildren := sizeOr(o, 2000)
	var serial uint64
	tSerial := median3(func() time.Duration {
		t0 := time.Now()
		serial = utsSerialRoot(rootChildren)
		return time.Since(t0)
	})
	t0 := time.Now()
	got := utsParRoot(rootChildren)
	tPar := time.Since(t0)
	if got != serial || (rootChildren == 2000 && got != 456513) {
		fail("uts", "counted %d nodes, serial DFS counts %d", got, serial)
	}
	line("uts", o.workers, "ms", ns(tPar)/1e6, "ms", fmt.Sprintf("nodes=%d serial_ms=%.3f", got, ns(tSerial)/1e6))
	line("uts", o.workers, "nodes_per_s", float64(got)/tPar.Seconds(), "nodes/s", "")
	line("uts", o.workers, "speedup_vs_serial", ns(tSerial)/ns(tPar), "x", "")
}

// pingpong: the main goroutine and one other bounce a value over two
// unbuffered channels, N = 1,000,000 round trips (--size); run with
// GOMAXPROCS=1 and with all workers. Checksum: the final value == N.
func benchPingpong(o *opts) {
	n := sizeOr(o, 1000000)
	counts := []int{1, o.workers}
	if o.workers == 1 {
		counts = counts[:1]
	}
	for _, w := range counts {
		runtime.GOMAXPROCS(w)
		ping, pong := make(chan int64), make(chan int64)
		done := make(chan struct{})
		t0 := time.Now()
		go func() {
			for i := int64(0); i < n; i++ {
				v := <-ping
				pong <- v + 1
			}
			close(done)
		}()
		var v int64
		for i := int64(0); i < n; i++ {
			ping <- v
			v = <-pong
		}
		elapsed := time.Since(t0)
		<-done
		if v != n {
			fail("pingpong", "final value %d, want %d", v, n)
		}
		line("pingpong", w, "ns_per_roundtrip", ns(elapsed)/float64(n), "ns", fmt.Sprintf("%d round trips", n))
	}
	runtime.GOMAXPROCS(o.workers)
}

// timers: 100,000 goroutines (--size); goroutine i sleeps (i % 100) ms once.
// Lateness = wake - (time before the sleep + duration), never negative.
func benchTimers(o *opts) {
	n := sizeOr(o, 100000)
	late := make([]time.Duration, n)
	var woke int64
	var wg sync.WaitGroup
	wg.Add(int(n))
	t0 := time.Now()
	for i := int64(0); i < n; i++ {
		go func(i int64) {
			d := time.Duration(i%100) * time.Millisecond
			start := time.Now()
			time.Sleep(d)
			late[i] = time.Since(start) - d
			atomic.AddInt64(&woke, 1)
			wg.Done()
		}(i)
	}
	wg.Wait()
	wall := time.Since(t0)
	if woke != n {
		fail("timers", "%d of %d woke", woke, n)
	}
	var sum float64
	for i, l := range late {
		if l < 0 {
			fail("timers", "goroutine %d woke %v early", i, -l)
		}
		sum += ns(l)
	}
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	p99 := late[(99*len(late)+99)/100-1]
	line("timers", o.workers, "wall_ms", ns(wall)/1e6, "ms", fmt.Sprintf("%d sleepers", n))
	line("timers", o.workers, "mean_lateness", sum/float64(n)/1e3, "us", "")
	line("timers", o.workers, "p99_lateness", ns(p99)/1e3, "us", "")
}

// park: 100,000 goroutines (--size), each blocked receiving on its own
// unbuffered channel (made before the first VmRSS reading). rss_per_parked =
// (VmRSS with all parked - VmRSS before) / N. Then each is released with a
// send and all are awaited. Checksum: the values received sum to N(N+1)/2.
func benchPark(o *opts) {
	n := sizeOr(o, 100000)
	chans := make([]chan int64, n)
	for i := range chans {
		chans[i] = make(chan int64)
	}
	var got int64
	var parked, finished sync.WaitGroup
	parked.Add(int(n))
	finished.Add(int(n))
	before := vmRSS()
	for i := int64(0); i < n; i++ {
		go func(c chan int64) {
			parked.Done()
			v := <-c
			atomic.AddInt64(&got, v)
			finished.Done()
		}(chans[i])
	}
	parked.Wait()
	time.Sleep(50 * time.Millisecond)
	during := vmRSS()
	for i := int64(0); i < n; i++ {
		chans[i] <- i + 1
	}
	finished.Wait()
	if want := n * (n + 1) / 2; got != want {
		fail("park", "received sum %d, want %d", got, want)
	}
	line("park", o.workers, "rss_per_parked", (during-before)/float64(n), "bytes",
		fmt.Sprintf("%d parked, VmRSS %.0f -> %.0f", n, before, during))
}

// http: net/http, "Hello, World!\n" to every request, until killed.
func serveHTTP(o *opts) {
	body := []byte("Hello, World!\n")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	addr := fmt.Sprintf("127.0.0.1:%d", o.port)
	fmt.Fprintf(os.Stderr, "peer-go http: listening on %s, GOMAXPROCS=%d\n", addr, o.workers)
	if err := http.ListenAndServe(addr, mux); err != nil {
		fail("http", "%v", err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: peer-go <id> [--workers N] [--size N] [--k K] [--port P]\n"+
		"ids: yield spawn skynet fib uts pingpong timers park http")
	os.Exit(2)
}

func main() {
	benches := map[string]func(*opts){
		"yield": benchYield, "spawn": benchSpawn, "skynet": benchSkynet,
		"fib": benchFib, "uts": benchUts, "pingpong": benchPingpong,
		"timers": benchTimers, "park": benchPark, "http": serveHTTP,
	}
	if len(os.Args) < 2 {
		usage()
	}
	run, ok := benches[os.Args[1]]
	if !ok {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ContinueOnError)
	fs.Usage = usage
	workers := fs.Int("workers", 0, "GOMAXPROCS")
	size := fs.Int64("size", 0, "workload size")
	k := fs.Int64("k", 0, "yield: coroutines")
	port := fs.Int("port", 8080, "http: port on 127.0.0.1")
	if fs.Parse(os.Args[2:]) != nil || fs.NArg() != 0 || *workers < 0 || *size < 0 || *k < 0 {
		usage()
	}
	o := &opts{workers: *workers, size: *size, k: *k, port: *port}
	if o.workers == 0 {
		o.workers = runtime.NumCPU()
	}
	runtime.GOMAXPROCS(o.workers)
	run(o)
}
