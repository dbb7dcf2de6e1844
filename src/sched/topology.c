/* The machine's shape, from hwloc: how many workers, where to pin them,
 * and in which order a thief visits victims.
 *
 * Workers default to one per core (not per hardware thread: two
 * coroutines on sibling hyperthreads share one core's execution units)
 * among the cores this process may run on: hwloc drops the PUs a cgroup
 * cpuset disallows, and HWLOC_TOPOLOGY_FLAG_RESTRICT_TO_CPUBINDING drops
 * those outside the process's affinity mask (taskset; hwloc ignores the
 * flag without HWLOC_TOPOLOGY_FLAG_IS_THISSYSTEM, and once did here, so
 * workers were bound to CPUs taskset had excluded). Worker i is bound to
 * the first allowed PU of core i mod cores.
 *
 * A cgroup CPU quota (v2's cpu.max, "200000 100000" being two CPUs'
 * worth of time; v1's cpu.cfs_quota_us over cpu.cfs_period_us) lowers
 * the default count to the quota, rounded up, as Go 1.25 does for
 * GOMAXPROCS: sixteen workers spinning on a container's two CPUs' worth
 * of time get it throttled. The quota is the smallest along the
 * process's cgroup path (weft__cgroup_cpus, read at the first start);
 * the cores stay as they are for binding and stealing.
 *
 * Stealing goes nearest first: for worker i, the other workers sorted by
 * the depth of the deepest object their cores share (same L2, then L3 or
 * die, then NUMA node, then the machine), so stolen work finds warm caches;
 * within one level the order is shuffled per steal round (worker.c) so
 * thieves do not all hit the same victim.
 *
 * The topology is loaded once per process (hwloc's discovery reads sysfs
 * and takes milliseconds, too much for every weft_start) and kept.
 *
 * Nor does the first weft_start wait for it. hwloc reads some forty sysfs
 * files per CPU: 1.5-2 ms on two CPUs, and more with more. A runtime can
 * start without the topology if it knows how many cores it may use, and
 * that is cheap: the caller's affinity mask, less the SMT siblings named
 * by each allowed CPU's thread_siblings_list (none to look for when
 * /sys/devices/system/cpu/smt/active says 0). So weft__topology_begin
 * counts the cores so, hands hwloc's discovery to a detached thread
 * (discover_later), and the workers start with a flat victim order,
 * each bound (when it is to be bound at all) to the lowest allowed CPU of
 * the quick count's core i, cores in the order of those CPUs
 * (weft__topology_pin_quick). Each worker looks for the finished topology
 * when it runs out of local work and every 61 scheduling rounds
 * (worker.c, place), then sorts its victims and binds itself by hwloc:
 * the same CPU wherever hwloc's core order follows the CPU numbers, as
 * it does on common machines; elsewhere the worker moves once. When the quick count fails
 * (no sysfs; more CPUs than CPU_SETSIZE) or no thread can be made, the
 * caller loads the topology itself, as before. A fork while the
 * discovery runs leaves the child without that thread: the child's first
 * weft_start begins again.
 *
 * The load asks hwloc for no more than the CPU side:
 *  - No plugins. hwloc dlopens every plugin it finds when its first
 *    topology is made (Debian's libhwloc-plugins: PCI, OpenCL, GL and
 *    libxml2 export, which pull in libpciaccess, libOpenCL, libX11 and
 *    libxml2): 5 ms of a 7 ms first start, for discovery weft never
 *    uses. hwloc's only switch for this is its environment, read once
 *    at that moment, so weft sets HWLOC_PLUGINS_BLACKLIST for the call
 *    and removes it again, unless the program set HWLOC_PLUGINS_BLACKLIST
 *    or HWLOC_PLUGINS_PATH itself (its choice then stands). Only while
 *    the calling thread is the process's only one: setenv and unsetenv
 *    race other threads' getenv (glibc may free the environment array
 *    they read) and forks; with other threads, the plugins load. Nothing
 *    is changed when another topology in the process already loaded them.
 *  - No x86 CPUID backend: it binds the calling thread to every PU in
 *    turn to read CPUID there (a migration per hardware thread), and
 *    Linux's sysfs, which hwloc reads anyway, has all weft uses: cores,
 *    packages, caches and NUMA nodes.
 *  - No I/O objects, and (hwloc 2.8+) no distance matrices, memory
 *    attributes or CPU kinds: the victim order below needs only the
 *    tree. */
#include <hwloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../sysfile.h"
#include "sched.h"

/* Written once, before phase becomes READY (release); read after an
 * acquire load sees READY. */
static hwloc_topology_t topo;
static unsigned ncores;
static hwloc_obj_t *cores;

enum { NONE, LOADING, READY };
static _Atomic int phase = NONE;
static unsigned quick_count;                             /* while LOADING */
static int quick_first[CPU_SETSIZE]; /* core i's lowest allowed CPU, while LOADING */
static pthread_mutex_t phase_lock = PTHREAD_MUTEX_INITIALIZER; /* begin vs begin */

/* Every plugin Debian's hwloc 2.9 ships and later ones may add: the
 * names are the plugins' file names without ".so". */
#define PLUGINS_UNUSED                                                                             \
    "hwloc_pci,hwloc_opencl,hwloc_gl,hwloc_xml_libxml,hwloc_cuda,hwloc_nvml,hwloc_rsmi,"           \
    "hwloc_levelzero"

/* True when the calling thread is the process's only one: then changing
 * the environment cannot race another thread's getenv, setenv or fork. */
static int only_thread(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[128];
    long threads = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %ld", &threads) == 1)
            break;
    fclose(f);
    return threads == 1;
}

static int topology_init(hwloc_topology_t *out)
{
    const char *name = "HWLOC_PLUGINS_BLACKLIST";
    int mine = !getenv(name) && !getenv("HWLOC_PLUGINS_PATH") && only_thread() &&
               setenv(name, PLUGINS_UNUSED, 0) == 0;
    int rc = hwloc_topology_init(out);
    if (mine)
        unsetenv(name);
    return rc;
}

/* hwloc's discovery into `t`, made by topology_init; publishes the
 * result (an empty one on failure: no binding, a flat victim order). */
static void discover(hwloc_topology_t t)
{
    /* The process's binding (taskset) limits the cores; hwloc honours
     * the flag only with IS_THISSYSTEM. */
    unsigned long flags =
        HWLOC_TOPOLOGY_FLAG_IS_THISSYSTEM | HWLOC_TOPOLOGY_FLAG_RESTRICT_TO_CPUBINDING;
#if HWLOC_API_VERSION >= 0x00020800
    flags |= HWLOC_TOPOLOGY_FLAG_NO_DISTANCES | HWLOC_TOPOLOGY_FLAG_NO_MEMATTRS |
             HWLOC_TOPOLOGY_FLAG_NO_CPUKINDS;
#endif
    hwloc_topology_set_flags(t, flags);
    (void)hwloc_topology_set_components(t, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "x86");
    /* Only the CPU side matters: skip PCI and other I/O discovery. */
    hwloc_topology_set_io_types_filter(t, HWLOC_TYPE_FILTER_KEEP_NONE);
    if (hwloc_topology_load(t) != 0)
        goto fail;
    int type = HWLOC_OBJ_CORE;
    int n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    if (n <= 0) {
        type = HWLOC_OBJ_PU;
        n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    }
    if (n <= 0)
        goto fail;
    cores = calloc((size_t)n, sizeof *cores);
    if (!cores)
        goto fail;
    for (int i = 0; i < n; i++)
        cores[i] = hwloc_get_obj_by_type(t, (hwloc_obj_type_t)type, (unsigned)i);
    topo = t;
    ncores = (unsigned)n;
    atomic_store_explicit(&phase, READY, memory_order_release);
    return;
fail:
    hwloc_topology_destroy(t);
    atomic_store_explicit(&phase, READY, memory_order_release);
}

/* The discovery thread. It yields to the program's threads and the
 * workers (nice 19): its result only refines placement. */
static void *discovery_main(void *t)
{
    (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
    discover(t);
    return NULL;
}

/* A CPU list as sysfs writes it ("0-3,8,10-11"): the lowest CPU of it
 * that is in `allowed`, or -1. */
static int lowest_allowed(const char *list, const cpu_set_t *allowed)
{
    const char *p = list;
    while (*p >= '0' && *p <= '9') {
        char *end;
        long lo = strtol(p, &end, 10), hi = lo;
        if (*end == '-')
            hi = strtol(end + 1, &end, 10);
        for (long c = lo; c <= hi && c < CPU_SETSIZE; c++)
            if (CPU_ISSET((int)c, allowed))
                return (int)c;
        p = *end == ',' ? end + 1 : end;
    }
    return -1;
}

/* The cores among `allowed` (this thread's affinity), without hwloc:
 * each counted at the lowest allowed CPU among its SMT siblings, which
 * goes into first[] (ascending). 0 when sysfs cannot say. */
static unsigned count_cores(const cpu_set_t *allowed, int *first)
{
    char line[512];
    bool smt = !weft__read_line("/sys/devices/system/cpu/smt/active", line, sizeof line) ||
               line[0] != '0';
    unsigned n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, allowed))
            continue;
        if (!smt) {
            first[n++] = c;
            continue;
        }
        char path[96];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list",
                 c);
        if (!weft__read_line(path, line, sizeof line))
            return 0;
        int lowest = lowest_allowed(line, allowed);
        if (lowest < 0)
            return 0;
        if (lowest == c)
            first[n++] = c;
    }
    return n;
}

/* Starts discover(t) on a detached thread; false if it cannot be made.
 * On a two-CPU machine the first start's threads (the caller, the new
 * workers, the first coroutine) and a discovery taking 1.5-2 ms of CPU
 * meet on the same CPUs: the discovery thread runs at nice 19 and, when
 * the caller may run elsewhere, away from the caller's CPU (measured
 * here: the first start+spawn+join+stop took a median 2.5 ms with the
 * discovery inline, 2.1 ms on a plain thread, 1.0 ms so). */
static bool discover_later(hwloc_topology_t t, const cpu_set_t *allowed)
{
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return false;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    cpu_set_t away = *allowed;
    int here = sched_getcpu();
    if (here >= 0 && here < CPU_SETSIZE && CPU_COUNT(&away) > 1 && CPU_ISSET(here, &away)) {
        CPU_CLR(here, &away);
        pthread_attr_setaffinity_np(&attr, sizeof away, &away);
    }
    /* Signals stay with the program's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t thread;
    bool made = pthread_create(&thread, &attr, discovery_main, t) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return made;
}

static void forget_discovery(void)
{
    /* The child has no discovery thread: start over (its half-made
     * topology is left as it is). */
    pthread_mutex_init(&phase_lock, NULL);
    if (atomic_load_explicit(&phase, memory_order_relaxed) == LOADING)
        atomic_store_explicit(&phase, NONE, memory_order_relaxed);
}

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, forget_discovery);
}

unsigned weft__topology_begin(void)
{
    static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
    pthread_once(&fork_once, register_fork_handler);
    pthread_mutex_lock(&phase_lock);
    if (atomic_load_explicit(&phase, memory_order_acquire) == NONE) {
        hwloc_topology_t t;
        cpu_set_t allowed;
        unsigned quick = sched_getaffinity(0, sizeof allowed, &allowed) == 0
                             ? count_cores(&allowed, quick_first)
                             : 0;
        if (topology_init(&t) != 0) {
            atomic_store_explicit(&phase, READY, memory_order_release);
        } else if (quick == 0) {
            discover(t);
        } else {
            quick_count = quick;
            atomic_store_explicit(&phase, LOADING, memory_order_relaxed);
            if (!discover_later(t, &allowed))
                discover(t);
        }
    }
    unsigned n = weft__topology_cores();
    pthread_mutex_unlock(&phase_lock);
    return n;
}

unsigned weft__cpu_max_cpus(const char *line)
{
    char quota[32];
    unsigned long long period;
    if (sscanf(line, "%31s %llu", quota, &period) != 2 || period == 0 || quota[0] < '0' ||
        quota[0] > '9') /* "max", or v1's -1: no quota */
        return 0;
    char *end;
    unsigned long long q = strtoull(quota, &end, 10);
    if (*end != '\0' || q == 0)
        return 0;
    unsigned long long cpus = q / period + (q % period != 0);
    return cpus > 65535 ? 65535 : (unsigned)cpus;
}

/* One cgroup directory's quota in CPUs: v2's cpu.max, or v1's
 * cpu.cfs_quota_us and cpu.cfs_period_us; 0 for none. */
static unsigned dir_cpus(const char *dir, bool v2)
{
    char file[4200], quota[64], period[64], both[140];
    if (v2) {
        snprintf(file, sizeof file, "%s/cpu.max", dir);
        return weft__read_line(file, both, sizeof both) ? weft__cpu_max_cpus(both) : 0;
    }
    snprintf(file, sizeof file, "%s/cpu.cfs_quota_us", dir);
    if (!weft__read_line(file, quota, sizeof quota))
        return 0;
    snprintf(file, sizeof file, "%s/cpu.cfs_period_us", dir);
    if (!weft__read_line(file, period, sizeof period))
        return 0;
    quota[strcspn(quota, "\n")] = '\0';
    snprintf(both, sizeof both, "%s %s", quota, period);
    return weft__cpu_max_cpus(both);
}

unsigned weft__cgroup_cpus_at(const char *mount, const char *path, bool v2)
{
    char dir[4096];
    unsigned best = 0;
    if (snprintf(dir, sizeof dir, "%s%s", mount, strcmp(path, "/") == 0 ? "" : path) >=
        (int)sizeof dir)
        return 0;
    size_t mount_len = strlen(mount);
    for (;;) {
        unsigned cpus = dir_cpus(dir, v2);
        if (cpus && (!best || cpus < best))
            best = cpus;
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < mount_len)
            break;
        *slash = '\0'; /* up to the parent cgroup, as far as the mount */
    }
    return best;
}

/* Whether `word` is one of the comma-separated words of `list`. */
static bool has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; p; p = strchr(p, ',')) {
        if (*p == ',')
            p++;
        if (strncmp(p, word, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return true;
    }
    return false;
}

static unsigned cgroup_cpus;
static pthread_once_t cgroup_once = PTHREAD_ONCE_INIT;

static void read_cgroup_cpus(void)
{
    /* Where the hierarchies are mounted (/proc/self/mountinfo: mount
     * root in field 4, mount point in 5, then after " - " the type and
     * the options), and where the process sits in them (/proc/self/cgroup:
     * "0::/path" for v2, "N:cpu,cpuacct:/path" for v1). */
    char line[4096], mnt[2][1024] = { "", "" }, mroot[2][1024] = { "", "" };
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        char root[1024], point[1024], type[64], opts[1024];
        const char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %1023s %1023s", root, point) != 2 ||
            sscanf(dash + 3, "%63s %*s %1023s", type, opts) != 2)
            continue;
        int v = -1; /* 1: the v2 hierarchy; 0: v1's with the cpu controller */
        if (strcmp(type, "cgroup2") == 0)
            v = 1;
        else if (strcmp(type, "cgroup") == 0 && has_word(opts, "cpu"))
            v = 0;
        if (v >= 0 && !mnt[v][0]) {
            snprintf(mnt[v], sizeof mnt[v], "%s", point);
            snprintf(mroot[v], sizeof mroot[v], "%s", root);
        }
    }
    fclose(f);
    if (!(f = fopen("/proc/self/cgroup", "re")))
        return;
    unsigned best = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *ctl = strchr(line, ':'), *path = ctl ? strchr(ctl + 1, ':') : NULL;
        if (!path)
            continue;
        *path++ = '\0';
        ctl++;
        int v = *ctl == '\0' ? 1 : has_word(ctl, "cpu") ? 0 : -1;
        if (v < 0 || !mnt[v][0])
            continue;
        /* The path is from the hierarchy's root; the mount may show a
         * part of it (a container's). */
        size_t rl = strlen(mroot[v]);
        if (strcmp(mroot[v], "/") != 0 && strncmp(path, mroot[v], rl) == 0)
            path += rl;
        unsigned cpus = weft__cgroup_cpus_at(mnt[v], *path ? path : "/", v == 1);
        if (cpus && (!best || cpus < best))
            best = cpus;
    }
    fclose(f);
    cgroup_cpus = best;
}

unsigned weft__cgroup_cpus(void)
{
    /* Once per process, like the topology: reading mountinfo and the
     * cgroup files took ~100 us, as long as the rest of a restart. */
    pthread_once(&cgroup_once, read_cgroup_cpus);
    return cgroup_cpus;
}

bool weft__topology_ready(void)
{
    return atomic_load_explicit(&phase, memory_order_acquire) == READY;
}

unsigned weft__topology_cores(void)
{
    if (!weft__topology_ready())
        return quick_count ? quick_count : 1;
    return ncores ? ncores : 1;
}

static unsigned shared_depth(unsigned a, unsigned b)
{
    if (!ncores)
        return 0;
    hwloc_obj_t x = cores[a % ncores], y = cores[b % ncores];
    if (x == y)
        return 1000; /* the same core: workers > cores */
    hwloc_obj_t common = hwloc_get_common_ancestor_obj(topo, x, y);
    return common ? (unsigned)common->depth : 0;
}

bool weft__topology_victims(unsigned self, unsigned n, unsigned *victims, unsigned *level)
{
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (i == self)
            continue;
        victims[k] = i;
        level[k] = 0;
        k++;
    }
    /* No read of the topology before this: a compiler may hoist loads of
     * it out of a loop and above a condition, and the discovery thread
     * may still be writing it. */
    if (!weft__topology_ready())
        return false;
    for (unsigned i = 0; i < k; i++)
        level[i] = shared_depth(self, victims[i]);
    /* Insertion sort, deepest shared ancestor first (n is small). */
    for (unsigned i = 1; i < k; i++) {
        unsigned v = victims[i], l = level[i], j = i;
        while (j > 0 && level[j - 1] < l) {
            victims[j] = victims[j - 1];
            level[j] = level[j - 1];
            j--;
        }
        victims[j] = v;
        level[j] = l;
    }
    return true;
}

void weft__topology_pin_quick(unsigned index)
{
    /* quick_first was written before the workers were made; once the
     * topology is ready, weft__topology_pin binds instead. */
    if (atomic_load_explicit(&phase, memory_order_acquire) != LOADING || !quick_count)
        return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(quick_first[index % quick_count], &one);
    (void)sched_setaffinity(0, sizeof one, &one); /* 0: the calling thread */
}

void weft__topology_pin(unsigned index)
{
    if (!weft__topology_ready() || !ncores)
        return;
    hwloc_obj_t core = cores[index % ncores];
    hwloc_bitmap_t set = hwloc_bitmap_dup(core->cpuset);
    if (!set)
        return;
    hwloc_bitmap_singlify(set); /* one PU of the core */
    (void)hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(set);
}
