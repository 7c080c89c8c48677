/*
 * qemu TCG plugin: count guest instructions only inside windows that the guest opens and closes
 * with two marker syscalls (numbers MARK_START / MARK_STOP, which no kernel implements).
 *
 * Each translated block gets a counter; a block's executions count only while a window is open.
 * At each MARK_STOP the plugin appends to the output file:
 *     window <n>
 *     <block start vaddr hex> <instructions in block> <executions>     (blocks executed in the window)
 *     end
 * The guest maps block addresses to library symbols afterwards. Counts are instructions executed
 * by the emulated CPU, not time.
 *
 * Usage: qemu-aarch64 -plugin ./libinsn_window.so,out=/path/counts.txt ...
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

typedef struct Block {
    uint64_t vaddr;
    uint64_t insns;
    uint64_t execs;
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
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == MARK_START) {
        for (Block *b = all_blocks; b; b = b->next_in_list) {
            b->execs = 0;
        }
        window_open = 1;
    } else if (num == MARK_STOP && window_open) {
        window_open = 0;
        fprintf(out, "window %d\n", window_count++);
        for (Block *b = all_blocks; b; b = b->next_in_list) {
            if (b->execs) {
                fprintf(out, "%" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->vaddr, b->insns, b->execs);
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
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_block_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
