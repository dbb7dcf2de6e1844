/* The machine's shape, from hwloc: how many workers, where to pin them,
 * and in which order a thief visits victims.
 *
 * Workers default to one per core (not per hardware thread: two
 * coroutines on sibling hyperthreads share one core's execution units)
 * among the cores this process may run on: hwloc drops the PUs a cgroup
 * cpuset disallows, and HWLOC_TOPOLOGY_FLAG_RESTRICT_TO_CPUBINDING drops
 * those outside the affinity mask (taskset). Worker i is bound to the
 * first allowed PU of core i mod cores.
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
 * That first load is the bulk of a program's first weft_start, so it asks
 * hwloc for no more than the CPU side:
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
#include <stdio.h>
#include <stdlib.h>

#include "sched.h"

static hwloc_topology_t topo;
static unsigned ncores;
static hwloc_obj_t *cores;
static pthread_once_t once = PTHREAD_ONCE_INIT;

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

static void load(void)
{
    if (topology_init(&topo) != 0)
        goto fail;
    unsigned long flags = HWLOC_TOPOLOGY_FLAG_RESTRICT_TO_CPUBINDING;
#if HWLOC_API_VERSION >= 0x00020800
    flags |= HWLOC_TOPOLOGY_FLAG_NO_DISTANCES | HWLOC_TOPOLOGY_FLAG_NO_MEMATTRS |
             HWLOC_TOPOLOGY_FLAG_NO_CPUKINDS;
#endif
    hwloc_topology_set_flags(topo, flags);
    (void)hwloc_topology_set_components(topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "x86");
    /* Only the CPU side matters: skip PCI and other I/O discovery. */
    hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_NONE);
    if (hwloc_topology_load(topo) != 0) {
        hwloc_topology_destroy(topo);
        goto fail;
    }
    int type = HWLOC_OBJ_CORE;
    int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    if (n <= 0) {
        type = HWLOC_OBJ_PU;
        n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    }
    if (n <= 0) {
        hwloc_topology_destroy(topo);
        goto fail;
    }
    cores = calloc((size_t)n, sizeof *cores);
    if (!cores) {
        hwloc_topology_destroy(topo);
        goto fail;
    }
    for (int i = 0; i < n; i++)
        cores[i] = hwloc_get_obj_by_type(topo, (hwloc_obj_type_t)type, (unsigned)i);
    ncores = (unsigned)n;
    return;
fail:
    topo = NULL;
    ncores = 0;
}

unsigned weft__topology_cores(void)
{
    pthread_once(&once, load);
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

void weft__topology_victims(unsigned self, unsigned n, unsigned *victims, unsigned *level)
{
    pthread_once(&once, load);
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (i == self)
            continue;
        victims[k] = i;
        level[k] = shared_depth(self, i);
        k++;
    }
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
}

void weft__topology_pin(unsigned index)
{
    pthread_once(&once, load);
    if (!ncores)
        return;
    hwloc_obj_t core = cores[index % ncores];
    hwloc_bitmap_t set = hwloc_bitmap_dup(core->cpuset);
    if (!set)
        return;
    hwloc_bitmap_singlify(set); /* one PU of the core */
    (void)hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(set);
}
