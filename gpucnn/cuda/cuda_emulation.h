// cuda_emulation.h: just enough of CUDA C++ for kernels/*.cu to compile with a host C++20
// compiler and run on the CPU (the "emulated" backend; see gpucnn/cuda/emulator.py).
// GPUCNN_EMULATED is defined, so headers such as kernels/tc.cuh can swap inline PTX for an
// exact CPU model.
//
// Execution model
//   * Blocks run one after another on one OS thread, so a `__shared__` variable can be a
//     function-local `static`: every block sees its own contents for as long as it runs.
//   * Kernels without __syncthreads() or warp collectives run as plain nested loops over
//     blocks and threads.
//   * Kernels with them (the kernel scan in gpucnn/cuda/sources.py decides) run each thread
//     of a block as a fiber. A fiber runs until it reaches a barrier or a warp collective and
//     then switches back to a scheduler that resumes every runnable thread of the block in
//     order; the same order every run, so results are deterministic.
//   * __syncthreads(): released when every thread of the block waits there. A barrier that
//     only some threads reach (others exited) is reported as an error.
//   * Warp collectives (__shfl*_sync with width, __ballot_sync, __any_sync, __all_sync,
//     __syncwarp, and tc.cuh's mma/ldmatrix): warp = 32 consecutive linear thread ids. Each
//     lane parks at its warp's rendezvous; the last lane of the mask to arrive computes the
//     collective for all of them and releases them. Reported as errors, never hangs: lanes
//     whose masks or operations disagree, a mask without the calling lane or naming lanes
//     that do not exist, a lane that exits (or waits at __syncthreads) while others wait for
//     it, a mask naming a lane that has already exited. A shuffle that reads a lane outside
//     the mask gets 0xffffffff (NaN as a float), CUDA leaves it undefined.
//   * Context switch: a few lines of x86-64 assembly that save the callee-saved registers,
//     MXCSR/x87 control words and the stack pointer (no syscall; glibc's swapcontext makes a
//     sigprocmask syscall on every switch). Elsewhere, or with -DGPUCNN_EMU_UCONTEXT, ucontext.
//   * Any launch configuration CUDA would refuse (empty grid, more than 1024 threads...) is an
//     error too.
// Not emulated: dynamic (extern) shared memory, cooperative groups, textures, streams,
// __activemask and the __match/__reduce warp functions.
#pragma once

#define GPUCNN_EMULATED 1

#include <cfloat>
#include <cstdio>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>
#include <math.h>
#include <ucontext.h>

// CUDA device code (NVRTC) has no INFINITY/NAN macros; hide the host ones so kernels that
// rely on them fail here too instead of only on the GPU.
#undef INFINITY
#undef NAN

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

static dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

static constexpr int warpSize = 32;

// ---- math and bit helpers that CUDA device code takes for granted -------------------------
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define __expf(x) expf(x)
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

// Threads of a block never run concurrently here (fibers switch only at barriers and warp
// collectives), so a plain read-modify-write is atomic.
static inline float atomicAdd(float* address, float value) { float old = *address; *address = old + value; return old; }
static inline int atomicAdd(int* address, int value) { int old = *address; *address = old + value; return old; }

namespace gpucnn_emu {

struct KernelFault : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---- context switch ------------------------------------------------------------------------
#if defined(__x86_64__) && !defined(GPUCNN_EMU_UCONTEXT)
#define GPUCNN_EMU_FAST_SWITCH 1
// Saves rbp, rbx, r12-r15 and the MXCSR / x87 control words on the current stack, stores the
// stack pointer in *save_sp, loads load_sp and pops the same frame from there. Everything else
// is caller-saved in the System V ABI, so the C++ caller already preserves it.
extern "C" void gpucnn_emu_switch(void** save_sp, void* load_sp);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl gpucnn_emu_switch\n"
    ".hidden gpucnn_emu_switch\n"
    ".type gpucnn_emu_switch, @function\n"
    "gpucnn_emu_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    subq $8, %rsp\n"
    "    stmxcsr (%rsp)\n"
    "    fnstcw 4(%rsp)\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    ldmxcsr (%rsp)\n"
    "    fldcw 4(%rsp)\n"
    "    addq $8, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size gpucnn_emu_switch, .-gpucnn_emu_switch\n");
struct Context {
    void* sp;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

enum class State : unsigned char { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
    Context context;
    State state;
    unsigned int x, y, z;
};

// One lane's request at a warp rendezvous. `compute` identifies the operation (lanes must
// agree on it, on `mask` and on `shape`) and, run by the last lane to arrive, reads every
// participating lane's `value`/`arg`/`ptr` and writes each one's `result` (or its outputs).
struct LaneCall;
typedef void (*WarpCompute)(LaneCall* lanes, unsigned int mask);
struct LaneCall {
    const char* name;
    WarpCompute compute;
    unsigned int mask;
    int shape;
    uint32_t value;
    int arg;
    const void* ptr[4];
    uint32_t result;
};

struct Warp {
    unsigned int arrived;  // lanes parked at the rendezvous
    unsigned int exited;   // lanes whose thread has returned
    LaneCall lane[32];
};

// One cp.async in flight: the source bytes are read at issue, land at the wait.
struct AsyncCopy {
    void* dst;
    unsigned char bytes[16];
    unsigned int size;
    int group;  // -1 until committed
};

struct AsyncState {
    std::vector<AsyncCopy> pending;
    int committed = 0;
};

static std::string last_error;
static bool fiber_mode = false;
static std::vector<Fiber> fibers;
static std::vector<Warp> warps;
static std::vector<AsyncState> async_state;
static std::vector<char> stacks;
static Context scheduler;
static size_t current = 0;  // linear thread id (x fastest) of the running thread
static size_t block_threads = 0;
static void (*fiber_body)(void*) = nullptr;
static void* fiber_arg = nullptr;
static const size_t kStackBytes = 64 * 1024;

static std::string hex(unsigned int v) {
    char text[16];
    std::snprintf(text, sizeof text, "0x%08x", v);
    return text;
}

static std::string block_name() {
    return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
           std::to_string(blockIdx.z) + ")";
}

static void switch_to(Context& from, Context& to) {
#ifdef GPUCNN_EMU_FAST_SWITCH
    gpucnn_emu_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

static void yield_to_scheduler() { switch_to(fibers[current].context, scheduler); }

static void barrier() {
    if (!fiber_mode) {
        throw KernelFault("__syncthreads() reached in a kernel the emulator runs without barriers");
    }
    fibers[current].state = State::AtBarrier;
    yield_to_scheduler();
}

static unsigned int lanes_of_warp(size_t warp) {
    size_t first = warp * 32;
    size_t n = block_threads - first < 32 ? block_threads - first : 32;
    return n == 32 ? 0xffffffffu : ((1u << n) - 1u);
}

static std::string where(size_t warp) { return "warp " + std::to_string(warp) + " of " + block_name(); }

[[noreturn]] static void disagree(size_t w, unsigned int lane, const LaneCall& call, unsigned int j) {
    const LaneCall& other = warps[w].lane[j];
    throw KernelFault("lanes of " + where(w) + " disagree: lane " + std::to_string(lane) + " calls " + call.name +
                      " (mask " + hex(call.mask) + ", shape " + std::to_string(call.shape) + ") while lane " +
                      std::to_string(j) + " waits in " + other.name + " (mask " + hex(other.mask) + ", shape " +
                      std::to_string(other.shape) + ")");
}

[[noreturn]] static void bad_mask(size_t w, unsigned int lane, const LaneCall& call, const std::string& why) {
    throw KernelFault(std::string(call.name) + " in lane " + std::to_string(lane) + " of " + where(w) + ": mask " +
                      hex(call.mask) + " " + why);
}

// Park the calling lane at its warp's rendezvous; returns its result once all lanes of the
// mask have arrived (the last one computes for all).
//
// Invariant that keeps the agreement check O(1) for the usual full mask: of two parked
// lanes, if one is in the other's mask, both asked for the same operation, mask and shape
// (checked when the later one arrived). So an arriving lane compares itself with one parked
// lane of its mask, and checks only the parked lanes outside its mask for a claim on it.
static uint32_t warp_collective(const LaneCall& call) {
    if (!fiber_mode) {
        throw KernelFault(std::string(call.name) + " reached in a kernel the emulator runs without fibers");
    }
    const size_t t = current, w = t / 32;
    const unsigned int lane = unsigned(t % 32), me = 1u << lane;
    Warp& warp = warps[w];
    if (!(call.mask & me)) bad_mask(w, lane, call, "does not name the calling lane");
    if (call.mask & ~lanes_of_warp(w)) {
        bad_mask(w, lane, call, "names lanes that do not exist (the block has " + std::to_string(block_threads) +
                                    " threads)");
    }
    if (unsigned int gone = call.mask & warp.exited) {
        bad_mask(w, lane, call, "names lane " + std::to_string(__builtin_ctz(gone)) + ", which has already exited");
    }
    if (unsigned int peers = warp.arrived & call.mask) {
        const unsigned int j = unsigned(__builtin_ctz(peers));
        const LaneCall& other = warp.lane[j];
        if (other.compute != call.compute || other.mask != call.mask || other.shape != call.shape) {
            disagree(w, lane, call, j);
        }
    }
    for (unsigned int others = warp.arrived & ~call.mask; others; others &= others - 1) {
        const unsigned int j = unsigned(__builtin_ctz(others));
        if (warp.lane[j].mask & me) disagree(w, lane, call, j);
    }
    warp.lane[lane] = call;
    warp.arrived |= me;
    if ((warp.arrived & call.mask) == call.mask) {
        call.compute(warp.lane, call.mask);
        warp.arrived &= ~call.mask;
        for (unsigned int rest = call.mask & ~me; rest; rest &= rest - 1)
            fibers[w * 32 + unsigned(__builtin_ctz(rest))].state = State::Ready;
        return warp.lane[lane].result;
    }
    fibers[t].state = State::AtWarp;
    yield_to_scheduler();
    return warps[w].lane[lane].result;
}

// A lane that exits while others wait for it would hang them on a GPU: report it.
static void check_exit() {
    const size_t t = current, w = t / 32;
    const unsigned int lane = unsigned(t % 32);
    const Warp& warp = warps[w];
    for (unsigned int j = 0; j < 32; ++j) {
        if ((warp.arrived >> j & 1u) && (warp.lane[j].mask >> lane & 1u)) {
            throw KernelFault("lane " + std::to_string(lane) + " of " + where(w) + " exited while lane " +
                              std::to_string(j) + " waits for it in " + warp.lane[j].name + " (mask " +
                              hex(warp.lane[j].mask) + ")");
        }
    }
}

static void finish_thread() {
    if (current < async_state.size()) {
        // Copies never waited for do not land: their destination stays poisoned.
        async_state[current].pending.clear();
        async_state[current].committed = 0;
    }
}

static void fiber_main() {
    try {
        fiber_body(fiber_arg);
        check_exit();
    } catch (const std::exception& error) {
        if (last_error.empty()) last_error = error.what();
    } catch (...) {
        if (last_error.empty()) last_error = "unknown C++ exception in a kernel thread";
    }
    finish_thread();
    fibers[current].state = State::Done;
    warps[current / 32].exited |= 1u << (current % 32);
    yield_to_scheduler();
    __builtin_unreachable();  // a finished fiber is never resumed
}

static void start_fiber(Fiber& f, size_t t) {
    char* stack = stacks.data() + t * kStackBytes;
#ifdef GPUCNN_EMU_FAST_SWITCH
    // The frame gpucnn_emu_switch pops: control words, r15..rbp, then `ret` into fiber_main
    // with the stack aligned as if fiber_main had been called.
    void** top = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t(15));
    uint32_t control[2] = {__builtin_ia32_stmxcsr(), 0};
    __asm__ volatile("fnstcw %0" : "=m"(*reinterpret_cast<uint16_t*>(&control[1])));
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&fiber_main);
    for (int i = 3; i <= 8; ++i) top[-i] = nullptr;
    std::memcpy(&top[-9], control, 8);
    f.context.sp = &top[-9];
#else
    getcontext(&f.context.uc);
    f.context.uc.uc_stack.ss_sp = stack;
    f.context.uc.uc_stack.ss_size = kStackBytes;
    f.context.uc.uc_link = &scheduler.uc;
    makecontext(&f.context.uc, fiber_main, 0);
#endif
}

static std::string lanes_text(unsigned int mask) {
    std::string text;
    for (unsigned int j = 0; j < 32; ++j)
        if (mask >> j & 1u) text += (text.empty() ? "" : ",") + std::to_string(j);
    return text;
}

// Nothing can run: describe the first warp whose lanes wait for lanes that will never come.
static std::string deadlock(size_t threads) {
    for (size_t w = 0; w * 32 < threads; ++w) {
        const Warp& warp = warps[w];
        for (unsigned int j = 0; j < 32; ++j) {
            if (!(warp.arrived >> j & 1u)) continue;
            unsigned int missing = warp.lane[j].mask & ~warp.arrived;
            unsigned int at_barrier = 0;
            for (unsigned int k = 0; k < 32; ++k)
                if ((missing >> k & 1u) && fibers[w * 32 + k].state == State::AtBarrier) at_barrier |= 1u << k;
            return std::string(warp.lane[j].name) + " in " + where(w) + ": lane " + std::to_string(j) +
                   " waits (mask " + hex(warp.lane[j].mask) + ") for lanes " + lanes_text(missing) +
                   (at_barrier ? ", which wait at __syncthreads()" : ", which never arrive");
        }
    }
    return "threads of " + block_name() + " wait for each other";
}

// Run every thread of the current block as a fiber until all have returned.
static bool run_block_with_fibers(size_t threads) {
    if (fibers.size() < threads) fibers.resize(threads);
    if (stacks.size() < threads * kStackBytes) stacks.resize(threads * kStackBytes);
    size_t t = 0;
    for (unsigned int z = 0; z < blockDim.z; ++z)
        for (unsigned int y = 0; y < blockDim.y; ++y)
            for (unsigned int x = 0; x < blockDim.x; ++x, ++t) {
                Fiber& f = fibers[t];
                f.state = State::Ready;
                f.x = x; f.y = y; f.z = z;
                start_fiber(f, t);
            }
    for (Warp& w : warps) w.arrived = w.exited = 0;
    for (;;) {
        bool ran = false;
        for (t = 0; t < threads; ++t) {
            Fiber& f = fibers[t];
            if (f.state != State::Ready) continue;
            threadIdx = dim3(f.x, f.y, f.z);
            current = t;
            switch_to(scheduler, f.context);
            if (!last_error.empty()) return false;
            ran = true;
        }
        if (ran) continue;
        size_t done = 0, at_warp = 0;
        for (t = 0; t < threads; ++t) {
            done += fibers[t].state == State::Done;
            at_warp += fibers[t].state == State::AtWarp;
        }
        if (done == threads) return true;
        if (at_warp != 0) {
            last_error = deadlock(threads);
            return false;
        }
        if (done != 0) {
            last_error = "__syncthreads() reached by only some threads of " + block_name();
            return false;
        }
        for (t = 0; t < threads; ++t) fibers[t].state = State::Ready;  // every thread is at the barrier
    }
}

template <class Body>
static void call_body(void* body) { (*static_cast<Body*>(body))(); }

// Launch `body` (one thread's work) over grid x block; returns 0, or 1 with last_error set.
template <class Body>
static int launch(const unsigned int* grid, const unsigned int* block, bool uses_fibers, Body body) {
    last_error.clear();
    for (int i = 0; i < 3; ++i) {
        if (grid[i] == 0 || block[i] == 0) { last_error = "invalid configuration: a grid or block dimension is 0"; return 1; }
    }
    size_t threads = size_t(block[0]) * block[1] * block[2];
    if (threads > 1024 || block[2] > 64) { last_error = "invalid configuration: more than 1024 threads per block"; return 1; }
    if (grid[1] > 65535 || grid[2] > 65535) { last_error = "invalid configuration: grid.y or grid.z above 65535"; return 1; }
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    block_threads = threads;
    if (async_state.size() < threads) async_state.resize(threads);
    if (warps.size() < (threads + 31) / 32) warps.resize((threads + 31) / 32);
    try {
        for (unsigned int bz = 0; bz < gridDim.z; ++bz)
            for (unsigned int by = 0; by < gridDim.y; ++by)
                for (unsigned int bx = 0; bx < gridDim.x; ++bx) {
                    blockIdx = dim3(bx, by, bz);
                    if (uses_fibers) {
                        fiber_mode = true;
                        fiber_body = &call_body<Body>;
                        fiber_arg = &body;
                        bool ok = run_block_with_fibers(threads);
                        fiber_mode = false;
                        if (!ok) {
                            for (size_t i = 0; i < threads; ++i) { current = i; finish_thread(); }
                            return 1;
                        }
                    } else {
                        size_t t = 0;
                        for (unsigned int tz = 0; tz < blockDim.z; ++tz)
                            for (unsigned int ty = 0; ty < blockDim.y; ++ty)
                                for (unsigned int tx = 0; tx < blockDim.x; ++tx, ++t) {
                                    threadIdx = dim3(tx, ty, tz);
                                    current = t;
                                    body();
                                    finish_thread();
                                }
                    }
                }
    } catch (const std::exception& error) {
        fiber_mode = false;
        last_error = error.what();
        finish_thread();
        return 1;
    }
    return 0;
}

// ---- warp shuffles and votes ---------------------------------------------------------------
// Source lane as PTX shfl.sync defines it: c = ((32 - width) << 8) | clamp, segmask = c[12:8],
// maxLane = (lane & segmask) | (clamp & ~segmask); a source out of the segment reads the own lane.
enum ShuffleMode { kIdx, kUp, kDown, kXor };

template <int Mode>
static void shuffle_compute(LaneCall* lanes, unsigned int mask) {
    for (unsigned int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        const int width = lanes[lane].shape, b = lanes[lane].arg & 31;  // PTX reads b[4:0]
        const int segmask = (32 - width) & 31, clamp = Mode == kUp ? 0 : 31;
        const int max_lane = (int(lane) & segmask) | (clamp & ~segmask), min_lane = int(lane) & segmask;
        int j;
        bool in_range;
        if (Mode == kUp) { j = int(lane) - b; in_range = j >= max_lane; }
        else if (Mode == kDown) { j = int(lane) + b; in_range = j <= max_lane; }
        else if (Mode == kXor) { j = int(lane) ^ b; in_range = j <= max_lane; }
        else { j = min_lane | (b & ~segmask); in_range = j <= max_lane; }
        if (!in_range) j = int(lane);
        lanes[lane].result = (mask >> j & 1u) ? lanes[j].value : 0xffffffffu;
    }
}

static const char* const kShuffleNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
static const WarpCompute kShuffles[] = {shuffle_compute<kIdx>, shuffle_compute<kUp>, shuffle_compute<kDown>,
                                        shuffle_compute<kXor>};

static uint32_t shuffle(int mode, unsigned int mask, uint32_t value, int b, int width) {
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        throw KernelFault(std::string(kShuffleNames[mode]) + ": width " + std::to_string(width) +
                          " is not a power of two in 1..32");
    }
    LaneCall call{kShuffleNames[mode], kShuffles[mode], mask, width, value, b, {}, 0};
    return warp_collective(call);
}

static void ballot_compute(LaneCall* lanes, unsigned int mask) {
    unsigned int bits = 0;
    for (unsigned int j = 0; j < 32; ++j)
        if ((mask >> j & 1u) && lanes[j].value) bits |= 1u << j;
    for (unsigned int j = 0; j < 32; ++j)
        if (mask >> j & 1u) lanes[j].result = bits;
}

static void nothing_compute(LaneCall*, unsigned int) {}

static unsigned int ballot(const char* name, unsigned int mask, int predicate) {
    LaneCall call{name, ballot_compute, mask, 0, predicate != 0, 0, {}, 0};
    return warp_collective(call);
}

}  // namespace gpucnn_emu

static inline void __syncthreads() { gpucnn_emu::barrier(); }

static inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    gpucnn_emu::LaneCall call{"__syncwarp", gpucnn_emu::nothing_compute, mask, 0, 0, 0, {}, 0};
    gpucnn_emu::warp_collective(call);
}
static inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
    return gpucnn_emu::ballot("__ballot_sync", mask, predicate);
}
static inline int __any_sync(unsigned int mask, int predicate) {
    return gpucnn_emu::ballot("__any_sync", mask, predicate) != 0;
}
static inline int __all_sync(unsigned int mask, int predicate) {
    return gpucnn_emu::ballot("__all_sync", mask, predicate) == mask;
}

#define GPUCNN_EMU_SHUFFLES(T, TO_BITS, FROM_BITS)                                                          \
    static inline T __shfl_sync(unsigned int mask, T var, int src_lane, int width = warpSize) {             \
        return FROM_BITS(gpucnn_emu::shuffle(gpucnn_emu::kIdx, mask, TO_BITS(var), src_lane, width));       \
    }                                                                                                       \
    static inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {    \
        return FROM_BITS(gpucnn_emu::shuffle(gpucnn_emu::kUp, mask, TO_BITS(var), int(delta), width));      \
    }                                                                                                       \
    static inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {  \
        return FROM_BITS(gpucnn_emu::shuffle(gpucnn_emu::kDown, mask, TO_BITS(var), int(delta), width));    \
    }                                                                                                       \
    static inline T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = warpSize) {        \
        return FROM_BITS(gpucnn_emu::shuffle(gpucnn_emu::kXor, mask, TO_BITS(var), lane_mask, width));      \
    }
GPUCNN_EMU_SHUFFLES(float, __float_as_uint, __uint_as_float)
GPUCNN_EMU_SHUFFLES(int, (uint32_t), (int))
GPUCNN_EMU_SHUFFLES(unsigned int, (uint32_t), (unsigned int))
#undef GPUCNN_EMU_SHUFFLES

extern "C" __attribute__((visibility("default"))) const char* gpucnn_emu_last_error() {
    return gpucnn_emu::last_error.c_str();
}
