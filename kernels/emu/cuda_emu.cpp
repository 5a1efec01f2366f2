// cuda_emu.cpp: the emulation runtime (scheduler, registry, C entry points) plus every kernel
// source, compiled as ONE translation unit so the static registrars are always linked in.
// Built by build.rs with the system C++ compiler; called from src/backend/cuda/emu.rs.
#include "cuda_emu.hpp"

namespace cuda_emu {

thread_local Block* g_block = nullptr;
thread_local Fiber* g_cur = nullptr;
thread_local dim3 g_blockIdx_, g_blockDim_, g_gridDim_;

static const int MAX_KERNELS = 256;
static Entry g_entries[MAX_KERNELS];
static int g_num_entries = 0;

void register_kernel(const char* name, unsigned long params_size, KernelFn fn) {
    if (g_num_entries < MAX_KERNELS) g_entries[g_num_entries++] = Entry{name, params_size, fn};
}

static const Entry* find(const char* name) {
    for (int i = 0; i < g_num_entries; ++i)
        if (strcmp(g_entries[i].name, name) == 0) return &g_entries[i];
    return nullptr;
}

static void trampoline() {
    g_block->fn(g_block->params);
    g_cur->state = DONE;
    // returning resumes uc_link = the scheduler
}

static const size_t STACK = 128 * 1024;

// Runs one block to completion. Returns 0, or an error code with a message in `err`.
static int run_block(Block& b, char* stacks, bool reverse_threads, char* err, size_t err_len) {
    const int nt = b.nthreads;
    const int nwarps = (nt + 31) / 32;
    for (int t = 0; t < nt; ++t) {
        Fiber& f = b.fibers[t];
        f.tid.x = t % g_blockDim_.x;
        f.tid.y = (t / g_blockDim_.x) % g_blockDim_.y;
        f.tid.z = t / (g_blockDim_.x * g_blockDim_.y);
        f.state = RUNNABLE;
        f.warp_mask = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks + (size_t)t * STACK;
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &b.sched;
        makecontext(&f.ctx, trampoline, 0);
    }
    bool backwards = false;
    for (;;) {
        for (int k = 0; k < nt; ++k) {
            const int t = backwards ? nt - 1 - k : k;
            Fiber& f = b.fibers[t];
            if (f.state != RUNNABLE) continue;
            g_cur = &f;
            swapcontext(&b.sched, &f.ctx);
        }
        if (reverse_threads) backwards = !backwards;
        int live = 0, at_block = 0;
        for (int t = 0; t < nt; ++t) {
            if (b.fibers[t].state != DONE) ++live;
            if (b.fibers[t].state == AT_BLOCK) ++at_block;
        }
        if (live == 0) return 0;
        bool released = false;
        for (int w = 0; w < nwarps; ++w) {
            // lanes of warp w waiting at a warp sync point, and the union of their masks
            unsigned int waiting = 0, mask = 0;
            for (int l = 0; l < 32 && w * 32 + l < nt; ++l) {
                const Fiber& f = b.fibers[w * 32 + l];
                if (f.state == AT_WARP) {
                    waiting |= 1u << l;
                    mask |= f.warp_mask;
                }
            }
            if (!waiting) continue;
            for (int l = 0; l < 32; ++l) {
                if (!(mask & (1u << l))) continue;
                if (w * 32 + l >= nt || b.fibers[w * 32 + l].state == DONE) {
                    snprintf(err, err_len,
                             "warp %d: shuffle/syncwarp mask 0x%08x names lane %d, which has exited",
                             w, mask, l);
                    return 2;
                }
            }
            if ((waiting & mask) == mask) {
                for (int l = 0; l < 32; ++l)
                    if (waiting & (1u << l)) b.fibers[w * 32 + l].state = RUNNABLE;
                released = true;
            }
        }
        if (released) continue;
        if (at_block == live) {
            for (int t = 0; t < nt; ++t)
                if (b.fibers[t].state == AT_BLOCK) b.fibers[t].state = RUNNABLE;
            continue;
        }
        snprintf(err, err_len,
                 "deadlock: %d live threads, %d at __syncthreads, the rest at divergent warp syncs",
                 live, at_block);
        return 3;
    }
}

}  // namespace cuda_emu

using namespace cuda_emu;

// Flags for normkit_emu_launch.
#define NK_EMU_REVERSE_BLOCKS 1u
#define NK_EMU_REVERSE_THREADS 2u

extern "C" {

// Size of the parameter struct of `name`, or 0 when no such kernel is registered.
unsigned long normkit_emu_params_size(const char* name) {
    const Entry* e = find(name);
    return e ? e->params_size : 0;
}

// Number of registered kernels; `normkit_emu_kernel_name(i)` gives each name.
int normkit_emu_kernel_count(void) { return g_num_entries; }
const char* normkit_emu_kernel_name(int i) {
    return (i >= 0 && i < g_num_entries) ? g_entries[i].name : nullptr;
}

// Runs kernel `name` over grid x block with the parameter struct at `params`
// (`params_size` bytes). Returns 0 on success; otherwise writes a message into `err`.
int normkit_emu_launch(const char* name, const unsigned int grid[3], const unsigned int block[3],
                       const void* params, unsigned long params_size, unsigned int flags,
                       char* err, unsigned long err_len) {
    const Entry* e = find(name);
    if (!e) {
        snprintf(err, err_len, "no kernel named %s", name);
        return 1;
    }
    if (e->params_size != params_size) {
        snprintf(err, err_len, "%s: parameter struct is %lu bytes, caller passed %lu", name,
                 e->params_size, params_size);
        return 1;
    }
    const unsigned long nt = (unsigned long)block[0] * block[1] * block[2];
    if (nt == 0 || nt > 1024 || nt % 32 != 0 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0 ||
        grid[1] > 65535 || grid[2] > 65535) {
        snprintf(err, err_len, "%s: invalid launch grid (%u,%u,%u) block (%u,%u,%u)", name,
                 grid[0], grid[1], grid[2], block[0], block[1], block[2]);
        return 1;
    }
    Block b;
    b.nthreads = (int)nt;
    b.fn = e->fn;
    b.params = params;
    b.fibers = (Fiber*)calloc(nt, sizeof(Fiber));
    b.slots = (unsigned long long(*)[32])calloc((nt + 31) / 32, sizeof(unsigned long long[32]));
    char* stacks = (char*)malloc(nt * STACK);
    if (!b.fibers || !b.slots || !stacks) {
        free(b.fibers);
        free(b.slots);
        free(stacks);
        snprintf(err, err_len, "%s: out of memory", name);
        return 1;
    }
    Block* saved_block = g_block;
    g_block = &b;
    g_gridDim_ = dim3{grid[0], grid[1], grid[2]};
    g_blockDim_ = dim3{block[0], block[1], block[2]};
    const unsigned long long nblocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    int rc = 0;
    for (unsigned long long k = 0; k < nblocks && rc == 0; ++k) {
        const unsigned long long id = (flags & NK_EMU_REVERSE_BLOCKS) ? nblocks - 1 - k : k;
        g_blockIdx_ = dim3{(unsigned)(id % grid[0]), (unsigned)((id / grid[0]) % grid[1]),
                           (unsigned)(id / ((unsigned long long)grid[0] * grid[1]))};
        rc = run_block(b, stacks, (flags & NK_EMU_REVERSE_THREADS) != 0, err, err_len);
        if (rc != 0) {
            const size_t used = strlen(err);
            snprintf(err + used, err_len - used, " (kernel %s, block %u,%u,%u)", name,
                     g_blockIdx_.x, g_blockIdx_.y, g_blockIdx_.z);
        }
    }
    g_block = saved_block;
    g_cur = nullptr;
    free(b.fibers);
    free(b.slots);
    free(stacks);
    return rc;
}

}  // extern "C"

// The kernels themselves, unchanged.
#include "../layer_norm.cu"
#include "../group_norm.cu"
#include "../batch_norm.cu"
#include "../local_response_norm.cu"
