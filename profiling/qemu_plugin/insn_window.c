/*
 * qemu TCG plugin: count guest instructions only inside windows that the guest opens and closes
 * with two marker syscalls (numbers MARK_START / MARK_STOP, which no kernel implements).
 *
 * Each translated block gets a counter; a block's executions count only while a window is open.
 * With caches=1, every load and store inside a window also goes through NCACHES simulated caches
 * (64-byte lines, 16-way, least recently used; sizes CACHE_KB), and each block counts the lines it
 * missed in each: the traffic a cache of that size would send further out. Cache contents persist
 * from one window to the next, so a second window sees warm caches as repeated inferences do.
 * At each MARK_STOP the plugin appends to the output file:
 *     window <n>
 *     <block start vaddr hex> <instructions in block> <executions> [<missed lines per cache> ...]
 *     end
 * The guest maps block addresses to library symbols afterwards. Counts are instructions executed
 * by the emulated CPU, not time.
 *
 * Usage: qemu-aarch64 -plugin ./libinsn_window.so,out=/path/counts.txt[,caches=1] ...
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MARK_START 0x4d56
#define MARK_STOP 0x4d57
#define TABLE_BITS 20
#define NCACHES 6
#define WAYS 16
#define LINE_BITS 6
static const uint64_t CACHE_KB[NCACHES] = {128, 256, 512, 1024, 2048, 4096};

typedef struct Cache {
    uint64_t sets;
    uint64_t *tags;   /* sets x WAYS line addresses + 1 (0 = empty) */
    uint64_t *stamps; /* last use of each way */
} Cache;

static Cache caches[NCACHES];
static uint64_t clock_now;
static int simulate_caches;

typedef struct Block {
    uint64_t vaddr;
    uint64_t insns;
    uint64_t execs;
    uint64_t misses[NCACHES];
    struct Block *next_in_bucket;
    struct Block *next_in_list;
} Block;

static Block *buckets[1u << TABLE_BITS];
static Block *all_blocks;
static int window_open;
static int window_count;
static FILE *out;

static Block *block_for(uint64_t vaddr, uint64_t insns)
{
    uint64_t h = ((vaddr >> 2) ^ (vaddr >> 22) ^ insns) & ((1u << TABLE_BITS) - 1);
    for (Block *b = buckets[h]; b; b = b->next_in_bucket) {
        if (b->vaddr == vaddr && b->insns == insns) {
            return b;
        }
    }
    Block *b = calloc(1, sizeof(Block));
    b->vaddr = vaddr;
    b->insns = insns;
    b->next_in_bucket = buckets[h];
    buckets[h] = b;
    b->next_in_list = all_blocks;
    all_blocks = b;
    return b;
}

/* 1 when the line missed in `c` (and now holds it), 0 on a hit. */
static int touch(Cache *c, uint64_t line)
{
    uint64_t *tags = c->tags + (line % c->sets) * WAYS, *stamps = c->stamps + (line % c->sets) * WAYS;
    int oldest = 0;
    for (int w = 0; w < WAYS; w++) {
        if (tags[w] == line + 1) {
            stamps[w] = clock_now;
            return 0;
        }
        if (stamps[w] < stamps[oldest]) {
            oldest = w;
        }
    }
    tags[oldest] = line + 1;
    stamps[oldest] = clock_now;
    return 1;
}

static void on_memory(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    if (!window_open) {
        return;
    }
    Block *b = udata;
    uint64_t first = vaddr >> LINE_BITS;
    uint64_t last = (vaddr + (1u << qemu_plugin_mem_size_shift(info)) - 1) >> LINE_BITS;
    for (uint64_t line = first; line <= last; line++) {
        clock_now++;
        for (int i = 0; i < NCACHES; i++) {
            b->misses[i] += touch(&caches[i], line);
        }
    }
}

static void on_block_exec(unsigned int vcpu_index, void *udata)
{
    if (window_open) {
        ((Block *)udata)->execs++;
    }
}

static void on_block_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    Block *b = block_for(qemu_plugin_tb_vaddr(tb), qemu_plugin_tb_n_insns(tb));
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block_exec, QEMU_PLUGIN_CB_NO_REGS, b);
    if (simulate_caches) {
        for (size_t i = 0; i < qemu_plugin_tb_n_insns(tb); i++) {
            qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_memory, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, b);
        }
    }
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == MARK_START) {
        for (Block *b = all_blocks; b; b = b->next_in_list) {
            b->execs = 0;
            memset(b->misses, 0, sizeof(b->misses));
        }
        window_open = 1;
    } else if (num == MARK_STOP && window_open) {
        window_open = 0;
        fprintf(out, "window %d\n", window_count++);
        for (Block *b = all_blocks; b; b = b->next_in_list) {
            if (b->execs) {
                fprintf(out, "%" PRIx64 " %" PRIu64 " %" PRIu64, b->vaddr, b->insns, b->execs);
                for (int i = 0; simulate_caches && i < NCACHES; i++) {
                    fprintf(out, " %" PRIu64, b->misses[i]);
                }
                fprintf(out, "\n");
            }
        }
        fprintf(out, "end\n");
        fflush(out);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else if (strcmp(argv[i], "caches=1") == 0) {
            simulate_caches = 1;
        }
    }
    if (!path) {
        fprintf(stderr, "insn_window: give out=<file>\n");
        return -1;
    }
    out = fopen(path, "w");
    if (!out) {
        perror(path);
        return -1;
    }
    for (int i = 0; simulate_caches && i < NCACHES; i++) {
        caches[i].sets = CACHE_KB[i] * 1024 / (WAYS << LINE_BITS);
        caches[i].tags = calloc(caches[i].sets * WAYS, sizeof(uint64_t));
        caches[i].stamps = calloc(caches[i].sets * WAYS, sizeof(uint64_t));
    }
    if (simulate_caches) {
        fprintf(out, "caches");
        for (int i = 0; i < NCACHES; i++) {
            fprintf(out, " %" PRIu64, CACHE_KB[i] * 1024);
        }
        fprintf(out, "\n");
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_block_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
