#!/usr/bin/env python3
"""compare.py: runs BENCH.md's workloads on weft and its peers, side by side.

Called by bench/compare once weft and the peers are built (see there); it can
also be run directly: `python3 bench/compare.py --build build [<id>...]`.

What it does, per workload id (default: all of BENCH.md's, in its order):
- Runs weft-bench and every peer built for that workload alternately, for
  BENCH_ROUNDS rounds (5; --smoke: 1), the order rotated each round (A B C,
  B C A, C A B, ...) so no implementation always runs right after the same
  one: a run that leaves the kernel reclaiming gigabytes (Boost.Fiber's
  spawn peaks at 9.5 GB) slows whatever starts next. Each with the same
  --workers (weft's own default count, read once from `weft-bench startup`)
  and the same --size. Only `bench=` lines count; a run that exits non-zero
  or prints none failed. A failing peer is dropped with a note; a failing
  weft makes the exit status 1.
- Takes the median per (bench, impl, workers, metric) and prints one table:
  weft's value, each peer's value, and weft/peer. For time and memory lower
  is better, so a ratio < 1 favours weft; for the metrics marked ^
  (requests_per_s, nodes_per_s, speedup*, efficiency*) higher is better.
- scale: fib and uts at workers = 1, 2, 4, ... and nproc, for weft, OpenMP,
  oneTBB and Go; speedup T1/Tp and efficiency T1/(p*Tp) per implementation,
  printed as bench=scale lines and written to <build>/bench/scale.csv, the
  machine to scale-machine.txt, and a gnuplot picture to scale.png.
  `--replot DIR` redraws DIR/scale.png from the scale.csv and
  scale-machine.txt in DIR, for a run made where gnuplot is missing.
- http: each available server (nginx, Go's net/http; weft is n/a until weft
  has an I/O layer) on a free 127.0.0.1 port, loaded by
  `wrk -t1 -c64 -d10s --latency` (1 s in smoke mode); requests_per_s and
  p99_latency (us) are printed as bench=http lines. A run with socket errors
  or non-2xx/3xx responses is invalid.
Raw result lines of every run go to <build>/bench/compare-raw.txt.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

IDS = ["ctx", "yield", "spawn", "skynet", "fib", "uts", "pingpong", "timers",
       "park", "http", "scale", "startup"]
# Peer column order in the table.
PEER_ORDER = ["boost_fcontext", "swapcontext", "go", "boost_fiber", "openmp",
              "tbb", "nginx"]
# Tiny sizes for --smoke (what --size means per id: bench/main.c).
SMOKE_SIZE = {"ctx": 100000, "yield": 20000, "spawn": 10000, "skynet": 10000,
              "fib": 18, "uts": 16, "pingpong": 10000, "timers": 2000,
              "park": 2000, "startup": 3}
def rotated(items, r):
    """items in round r's order: the list rotated left by r."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


HIGHER_IS_BETTER = re.compile(r"^(requests_per_s|nodes_per_s|speedup.*|efficiency.*)$")
LINE = re.compile(r"^bench=(\S+) impl=(\S+) workers=(\d+) metric=(\S+) "
                  r"value=(-?[0-9.]+(?:[eE][-+]?\d+)?) unit=(\S+)")


def log(msg):
    print("compare: " + msg, file=sys.stderr, flush=True)


class Results:
    """Values per (bench, impl, workers, metric), in order of first sight."""

    def __init__(self):
        self.values = {}
        self.units = {}

    def add(self, bench, impl, workers, metric, value, unit):
        key = (bench, impl, int(workers), metric)
        self.values.setdefault(key, []).append(float(value))
        self.units[key] = unit

    def median(self, key):
        return statistics.median(self.values[key])


class Harness:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build)
        self.peers = os.path.join(self.build, "peers")
        self.out = os.path.join(self.build, "bench")
        os.makedirs(self.out, exist_ok=True)
        self.weft = os.path.join(self.out, "weft-bench")
        self.smoke = args.smoke
        self.rounds = int(os.environ.get("BENCH_ROUNDS", "1" if args.smoke else "5"))
        self.timeout = 120 if args.smoke else 900
        self.results = Results()
        self.notes = []
        self.weft_failed = False
        self.raw = open(os.path.join(self.out, "compare-raw.txt"), "w")
        notes = os.path.join(self.peers, "notes.txt")
        if os.path.exists(notes):
            self.notes += [l.strip() for l in open(notes) if l.strip()]
        self.workers = self.default_workers()

    # --- running one program -------------------------------------------------
    def binary(self, name):
        path = os.path.join(self.peers, name)
        return path if os.access(path, os.X_OK) else None

    def impls_for(self, bench):
        """[(impl, argv-prefix)] for a workload: weft first, then peers."""
        table = {
            "ctx": [("boost_fcontext", "ctx_boost"), ("swapcontext", "ctx_swapcontext")],
            "fib": [("go", "peer-go"), ("openmp", "fj_omp"), ("tbb", "fj_tbb")],
        }
        table["uts"] = table["fib"]
        fibers = [("go", "peer-go"), ("boost_fiber", "fiber")]
        for b in ("yield", "spawn", "skynet", "pingpong", "timers", "park"):
            table[b] = fibers
        impls = [("weft", [self.weft, bench])]
        for impl, prog in table.get(bench, []):
            path = self.binary(prog)
            if path:
                impls.append((impl, [path, bench]))
            else:
                self.note(f"{impl}: not built; no {bench} result")
        return impls

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def size_for(self, bench):
        if self.args.size:
            return self.args.size
        if self.smoke:
            return SMOKE_SIZE.get(bench)
        return None

    def run(self, impl, argv, bench, workers, size):
        """Runs one program; returns its parsed result lines or None."""
        cmd = list(argv) + ["--workers", str(workers)]
        if size:
            cmd += ["--size", str(size)]
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return self.failed(impl, bench, f"timed out after {self.timeout} s")
        except OSError as e:
            return self.failed(impl, bench, str(e))
        lines = [m.groups() for m in map(LINE.match, p.stdout.splitlines()) if m]
        self.raw.write(f"# {' '.join(cmd)}  (exit {p.returncode})\n{p.stdout}")
        self.raw.flush()
        if p.returncode != 0 or not lines:
            why = p.stderr.strip().splitlines()[-1:] or [f"exit status {p.returncode}"]
            if p.returncode < 0:
                why = [f"killed by signal {-p.returncode}"]
            return self.failed(impl, bench, why[0])
        log(f"  {impl:<14} {time.monotonic() - t0:6.2f} s")
        return lines

    def failed(self, impl, bench, why):
        if impl == "weft":
            self.weft_failed = True
            self.note(f"weft FAILED on {bench}: {why}")
        else:
            self.note(f"{impl} failed on {bench}: {why}; dropped")
        log(f"  {impl} FAILED on {bench}: {why}")
        return None

    def default_workers(self):
        """weft's default worker count, as weft-bench reports it."""
        try:
            p = subprocess.run([self.weft, "startup", "--size", "1"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, timeout=60)
            for m in map(LINE.match, p.stdout.splitlines()):
                if m:
                    return int(m.group(3))
        except (OSError, subprocess.TimeoutExpired):
            pass
        n = os.cpu_count() or 1
        self.note(f"weft-bench startup gave no worker count; using {n}")
        return n

    # --- the plain workloads ---------------------------------------------------
    def workload(self, bench):
        impls = self.impls_for(bench)
        size = self.size_for(bench)
        dead = set()
        for r in range(self.rounds):
            log(f"{bench}: round {r + 1}/{self.rounds}")
            for impl, argv in rotated(impls, r):
                if impl in dead:
                    continue
                lines = self.run(impl, argv, bench, self.workers, size)
                if lines is None:
                    dead.add(impl)
                    continue
                for b, i, w, metric, value, unit in lines:
                    self.results.add(b, i, w, metric, value, unit)

    # --- scale -------------------------------------------------------------------
    def scale(self):
        nproc = os.cpu_count() or 1
        counts, p = [], 1
        while p < nproc:
            counts.append(p)
            p *= 2
        counts.append(nproc)
        impls = [("weft", self.weft), ("openmp", self.binary("fj_omp")),
                 ("tbb", self.binary("fj_tbb")), ("go", self.binary("peer-go"))]
        for impl, path in impls:
            if not path:
                self.note(f"{impl}: not built, no scale result")
        impls = [(i, p) for i, p in impls if p]
        ms = {}  # (workload, impl, workers) -> [ms]
        for bench in ("fib", "uts"):
            size = self.size_for(bench)
            dead = set()
            # Every worker count in every round, not all rounds of one
            # count and then the next: this shared machine's speed drifts
            # (a serial fib once took twice as long for minutes on end),
            # and a drift between the p=1 and p=2 blocks once read as a
            # fib speedup of 1.14 (1.78 in the next run, interleaved).
            for r in range(self.rounds):
                for p in counts:
                    log(f"scale {bench} workers={p}: round {r + 1}/{self.rounds}")
                    for impl, path in rotated(impls, r):
                        if impl in dead:
                            continue
                        lines = self.run(impl, [path, bench], "scale/" + bench, p, size)
                        if lines is None:
                            dead.add(impl)
                            continue
                        for b, i, w, metric, value, unit in lines:
                            if metric == "ms":
                                ms.setdefault((bench, impl, p), []).append(float(value))
        rows = []
        for bench in ("fib", "uts"):
            for impl, _ in impls:
                if (bench, impl, 1) not in ms:
                    continue
                t1 = statistics.median(ms[(bench, impl, 1)])
                for p in counts:
                    if (bench, impl, p) not in ms:
                        continue
                    tp = statistics.median(ms[(bench, impl, p)])
                    rows.append((bench, impl, p, tp, t1 / tp, t1 / (p * tp)))
        for bench, impl, p, tp, speedup, efficiency in rows:
            for metric, value in ((f"speedup_{bench}", speedup), (f"efficiency_{bench}", efficiency)):
                what = "T1/Tp" if metric.startswith("speedup") else "T1/(p*Tp)"
                print(f"bench=scale impl={impl} workers={p} metric={metric} "
                      f"value={value:.3f} unit=x  {what}, median ms at p: {tp:.3f}",
                      flush=True)
                self.results.add("scale", impl, p, metric, value, "x")
        csv = os.path.join(self.out, "scale.csv")
        with open(csv, "w") as f:
            f.write("workload,impl,workers,ms,speedup,efficiency\n")
            for row in rows:
                f.write("%s,%s,%d,%.6f,%.6f,%.6f\n" % row)
        machine = self.machine(nproc)
        with open(os.path.join(self.out, "scale-machine.txt"), "w") as f:
            f.write(machine)
        log(f"wrote {csv}")
        self.plot(rows, counts, machine)

    def machine(self, nproc):
        model = "unknown"
        try:
            out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
            for line in out.splitlines():
                if line.startswith("Model name:"):
                    model = line.split(":", 1)[1].strip()
        except OSError:
            pass
        kernel = os.uname().release
        text = (f"nproc: {nproc}\nmodel name: {model}\nkernel: {os.uname().sysname} {kernel}\n"
                f"weft workers (default): {self.workers}\nrounds: {self.rounds}\n"
                f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
        return text

    def plot(self, rows, counts, machine):
        png = os.path.join(self.out, "scale.png")
        if not shutil.which("gnuplot"):
            self.note("gnuplot: not installed; scale.png not drawn (scale.csv has the data)")
            return
        if not rows:
            return
        impls = []
        for _, impl, *_ in rows:
            if impl not in impls:
                impls.append(impl)
        top = max(counts)
        ymax = max([top] + [s for _, _, _, _, s, _ in rows]) * 1.15
        model = machine.splitlines()[1].split(":", 1)[1].strip()
        gp = [f"set terminal pngcairo size 1100,480 noenhanced",
              f"set output '{png}'",
              f"set multiplot layout 1,2 title 'speedup T1/Tp vs workers, {model}, nproc {top}'",
              "set key left top", "set grid", "set xlabel 'workers'", "set ylabel 'speedup'",
              f"set xrange [1:{top}]", f"set yrange [0:{ymax:.2f}]",
              "set xtics (" + ", ".join(str(c) for c in counts) + ")"]
        for bench in ("fib", "uts"):
            plots = ["x title 'ideal' with lines dashtype 2 linecolor rgb 'gray'"]
            for impl in impls:
                pts = [(p, s) for b, i, p, _, s, _ in rows if b == bench and i == impl]
                if not pts:
                    continue
                name = f"$d_{bench}_{impl}"
                gp.append(f"{name} << EOD")
                gp += [f"{p} {s:.4f}" for p, s in pts]
                gp.append("EOD")
                plots.append(f"{name} using 1:2 title '{impl}' with linespoints linewidth 2 pointtype 7")
            gp.append(f"set title '{bench}'")
            gp.append("plot " + ", ".join(plots))
        gp.append("unset multiplot")
        script = os.path.join(self.out, "scale.gp")
        with open(script, "w") as f:
            f.write("\n".join(gp) + "\n")
        p = subprocess.run(["gnuplot", script], stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            # pngcairo may be missing from a gnuplot build; try libgd's png.
            with open(script, "w") as f:
                f.write("\n".join(["set terminal png size 1100,480"] + gp[1:]) + "\n")
            p = subprocess.run(["gnuplot", script], stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            self.note(f"gnuplot failed: {p.stderr.strip()[-200:]}")
        else:
            log(f"wrote {png}")

    # --- http -----------------------------------------------------------------------
    def http(self):
        self.note("weft: http is n/a until weft has an I/O layer")
        wrk = shutil.which("wrk")
        if not wrk:
            self.note("wrk: not installed; no http results")
            return
        servers = []
        nginx_path = os.path.join(self.peers, "nginx.path")
        if os.path.exists(nginx_path):
            servers.append(("nginx", self.start_nginx(open(nginx_path).read().strip())))
        go = self.binary("peer-go")
        if go:
            port = free_port()
            proc = subprocess.Popen([go, "http", "--workers", str(self.workers), "--port", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            servers.append(("go", (proc, port, None)))
        else:
            self.note("go: not built, no http result")
        live = []
        for name, server in servers:
            if server is None:
                continue
            proc, port, _ = server
            if wait_port(port, proc):
                live.append((name, server))
            else:
                self.note(f"{name}: http server did not come up on 127.0.0.1:{port}; dropped")
                stop(proc)
        duration = "1s" if self.smoke else "10s"
        try:
            dead = set()
            for r in range(self.rounds):
                log(f"http: round {r + 1}/{self.rounds}")
                for name, (proc, port, _) in rotated(live, r):
                    if name in dead:
                        continue
                    res = self.wrk(wrk, name, port, duration)
                    if res is None:
                        dead.add(name)
                        continue
                    rps, p99 = res
                    self.results.add("http", name, self.workers, "requests_per_s", rps, "req/s")
                    self.results.add("http", name, self.workers, "p99_latency", p99, "us")
        finally:
            for name, (proc, port, prefix) in live + [s for s in servers if s[1] and s not in live]:
                stop(proc)
                if prefix:
                    shutil.rmtree(prefix, ignore_errors=True)
        for name, _ in live:
            for metric, unit in (("requests_per_s", "req/s"), ("p99_latency", "us")):
                key = ("http", name, self.workers, metric)
                if key in self.results.values:
                    print(f"bench=http impl={name} workers={self.workers} metric={metric} "
                          f"value={self.results.median(key):.3f} unit={unit}  "
                          f"median of {len(self.results.values[key])} wrk runs", flush=True)

    def start_nginx(self, nginx):
        prefix = tempfile.mkdtemp(prefix="weft-bench-nginx-")
        os.chmod(prefix, 0o755)
        port = free_port()
        conf = open(os.path.join(self.peers, "nginx.conf.in")).read()
        conf = (conf.replace("@WORKERS@", str(self.workers)).replace("@PORT@", str(port))
                .replace("@PREFIX@", prefix))
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        err = open(os.path.join(prefix, "stderr.log"), "w")
        try:
            proc = subprocess.Popen([nginx, "-p", prefix, "-c", path, "-e",
                                     os.path.join(prefix, "error.log")],
                                    stdout=err, stderr=err, start_new_session=True)
        except OSError as e:
            self.note(f"nginx: {e}; dropped")
            shutil.rmtree(prefix, ignore_errors=True)
            return None
        return proc, port, prefix

    def wrk(self, wrk, name, port, duration):
        cmd = [wrk, "-t1", "-c64", "-d" + duration, "--latency", f"http://127.0.0.1:{port}/"]
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=120)
        except subprocess.TimeoutExpired:
            return self.failed(name, "http", "wrk timed out")
        out = p.stdout
        self.raw.write(f"# {' '.join(cmd)}  ({name}, exit {p.returncode})\n{out}")
        self.raw.flush()
        rps = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M)
        p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if p.returncode != 0 or not rps or not p99:
            return self.failed(name, "http", f"wrk output not understood (exit {p.returncode})")
        if errors and any(int(x) for x in errors.groups()):
            return self.failed(name, "http", "wrk reported socket errors: " + errors.group(0))
        if non2xx and int(non2xx.group(1)):
            return self.failed(name, "http", non2xx.group(0))
        scale = {"us": 1, "ms": 1e3, "s": 1e6}[p99.group(2)]
        log(f"  {name:<14} {float(rps.group(1)):.0f} req/s")
        return float(rps.group(1)), float(p99.group(1)) * scale

    # --- the table --------------------------------------------------------------------
    def table(self):
        rows, seen = [], set()
        for (bench, impl, workers, metric) in self.results.values:
            if (bench, metric, workers) not in seen:
                seen.add((bench, metric, workers))
                rows.append((bench, metric, workers))
        peers = [p for p in PEER_ORDER
                 if any(k[1] == p for k in self.results.values)]
        peers += sorted({k[1] for k in self.results.values} - set(peers) - {"weft"})
        header = ["workload", "metric", "workers", "unit", "weft"] + peers
        body = []
        for bench, metric, workers in rows:
            unit = next(u for k, u in self.results.units.items()
                        if (k[0], k[2], k[3]) == (bench, workers, metric))
            wkey = (bench, "weft", workers, metric)
            weft = self.results.median(wkey) if wkey in self.results.values else None
            cells = [bench, metric + (" ^" if HIGHER_IS_BETTER.match(metric) else ""),
                     str(workers), unit, fmt(weft) if weft is not None else "n/a"]
            for p in peers:
                key = (bench, p, workers, metric)
                if key not in self.results.values:
                    cells.append("-")
                    continue
                v = self.results.median(key)
                ratio = f"{weft / v:.3g}" if weft is not None and v else "n/a"
                cells.append(f"{fmt(v)} ({ratio})")
            body.append(cells)
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        print()
        print(f"weft vs peers: median of {self.rounds} alternating round(s) per cell; "
              f"workers={self.workers} unless the row says otherwise.")
        print("Peer cells: value (weft/peer). Lower is better, so weft/peer < 1 favours weft, "
              "except for metrics marked ^,\nwhere higher is better and weft/peer > 1 favours "
              "weft. '-': no result (see the notes). k/M/G: 10^3/10^6/10^9.")
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        print("  ".join("-" * w for w in widths))
        for cells in body:
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if self.notes:
            print("\nNotes:")
            for n in self.notes:
                print("  - " + n)
        sys.stdout.flush()


def fmt(v):
    """4 significant digits; k/M/G from 10,000 up, never an exponent."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div * (10 if suffix == "k" else 1):
            return f"{v / div:.4g}{suffix}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc):
    """Stops a server started in its own session (nginx's workers included)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def replot(folder):
    """Redraws folder/scale.png from the scale.csv and scale-machine.txt there."""
    rows = []
    try:
        with open(os.path.join(folder, "scale.csv")) as f:
            next(f)
            for line in f:
                b, i, p, tp, s, e = line.strip().split(",")
                rows.append((b, i, int(p), float(tp), float(s), float(e)))
        with open(os.path.join(folder, "scale-machine.txt")) as f:
            machine = f.read()
    except (OSError, ValueError, StopIteration) as e:
        log(f"--replot {folder}: {e}")
        return 2
    h = Harness.__new__(Harness)  # only plot's state: no runs, no build
    h.out, h.notes = folder, []
    h.plot(rows, sorted({r[2] for r in rows}), machine)
    for n in h.notes:
        log(n)
    return 1 if h.notes else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="*", metavar="id", help="workloads (default: all): " + " ".join(IDS))
    ap.add_argument("--build", default="build", help="build directory (default: build)")
    ap.add_argument("--size", type=int, help="passed to every workload run")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round")
    ap.add_argument("--replot", metavar="DIR", help="only redraw DIR/scale.png from DIR/scale.csv")
    args = ap.parse_args()
    if args.replot:
        return replot(args.replot)
    if args.size is not None and args.size <= 0:
        ap.error("--size must be positive")
    ids = args.ids or IDS
    for i in ids:
        if i not in IDS:
            ap.error(f"unknown workload '{i}' (ids: {' '.join(IDS)})")
    h = Harness(args)
    log(f"workers={h.workers} rounds={h.rounds}" + (" (smoke)" if h.smoke else ""))
    for bench in ids:
        if bench == "scale":
            h.scale()
        elif bench == "http":
            h.http()
        else:
            h.workload(bench)
    h.table()
    return 1 if h.weft_failed else 0


if __name__ == "__main__":
    sys.exit(main())
