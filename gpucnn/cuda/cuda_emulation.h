// cuda_emulation.h: just enough of CUDA C++ for kernels/*.cu to compile with a host C++20
// compiler and run on the CPU (the "emulated" backend; see gpucnn/cuda/emulator.py).
//
// Execution model
//   * Blocks run one after another on one OS thread, so a `__shared__` variable can be a
//     function-local `static`: every block sees its own contents for as long as it runs.
//   * Kernels without __syncthreads() run as plain nested loops over blocks and threads.
//   * Kernels with __syncthreads() run each thread of a block as a fiber (ucontext); the
//     barrier switches back to a scheduler that resumes every thread of the block in turn.
//     A barrier that only some threads of a block reach is reported as an error, as is any
//     launch configuration CUDA would refuse (empty grid, more than 1024 threads...).
//   * Warp-level primitives (shuffles, votes, __syncwarp) are deliberately absent: a kernel
//     that uses one fails to compile here.
#pragma once

#include <cfloat>
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

// Threads of a block never run concurrently here (fibers switch only at barriers), so a
// plain read-modify-write is atomic.
static inline float atomicAdd(float* address, float value) { float old = *address; *address = old + value; return old; }
static inline int atomicAdd(int* address, int value) { int old = *address; *address = old + value; return old; }

namespace gpucnn_emu {

struct Fiber {
    ucontext_t context;
    bool done;
    bool at_barrier;
    unsigned int x, y, z;
};

static std::string last_error;
static bool fiber_mode = false;
static std::vector<Fiber> fibers;
static std::vector<char> stacks;
static ucontext_t scheduler;
static size_t current = 0;
static void (*fiber_body)(void*) = nullptr;
static void* fiber_arg = nullptr;
static const size_t kStackBytes = 64 * 1024;

struct KernelFault : std::runtime_error {
    using std::runtime_error::runtime_error;
};

static void barrier() {
    if (!fiber_mode) {
        throw KernelFault("__syncthreads() reached in a kernel the emulator runs without barriers");
    }
    fibers[current].at_barrier = true;
    swapcontext(&fibers[current].context, &scheduler);
}

static void fiber_entry() {
    try {
        fiber_body(fiber_arg);
    } catch (const std::exception& error) {
        if (last_error.empty()) last_error = error.what();
    }
    fibers[current].done = true;
    // returning resumes uc_link, the scheduler
}

// Run every thread of the current block as a fiber until all have returned.
static bool run_block_with_barriers(size_t threads) {
    if (fibers.size() < threads) fibers.resize(threads);
    if (stacks.size() < threads * kStackBytes) stacks.resize(threads * kStackBytes);
    size_t t = 0;
    for (unsigned int z = 0; z < blockDim.z; ++z)
        for (unsigned int y = 0; y < blockDim.y; ++y)
            for (unsigned int x = 0; x < blockDim.x; ++x, ++t) {
                Fiber& f = fibers[t];
                f.done = false;
                f.at_barrier = false;
                f.x = x; f.y = y; f.z = z;
                getcontext(&f.context);
                f.context.uc_stack.ss_sp = stacks.data() + t * kStackBytes;
                f.context.uc_stack.ss_size = kStackBytes;
                f.context.uc_link = &scheduler;
                makecontext(&f.context, fiber_entry, 0);
            }
    for (;;) {
        size_t finished = 0, waiting = 0;
        for (t = 0; t < threads; ++t) {
            Fiber& f = fibers[t];
            if (f.done) { ++finished; continue; }
            f.at_barrier = false;
            threadIdx = dim3(f.x, f.y, f.z);
            current = t;
            swapcontext(&scheduler, &f.context);
            if (!last_error.empty()) return false;
            if (f.done) ++finished; else ++waiting;
        }
        if (finished == threads) return true;
        if (finished != 0 && waiting != 0) {
            last_error = "__syncthreads() reached by only some threads of block (" + std::to_string(blockIdx.x) +
                         "," + std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + ")";
            return false;
        }
    }
}

template <class Body>
static void call_body(void* body) { (*static_cast<Body*>(body))(); }

// Launch `body` (one thread's work) over grid x block; returns 0, or 1 with last_error set.
template <class Body>
static int launch(const unsigned int* grid, const unsigned int* block, bool uses_barriers, Body body) {
    last_error.clear();
    for (int i = 0; i < 3; ++i) {
        if (grid[i] == 0 || block[i] == 0) { last_error = "invalid configuration: a grid or block dimension is 0"; return 1; }
    }
    size_t threads = size_t(block[0]) * block[1] * block[2];
    if (threads > 1024 || block[2] > 64) { last_error = "invalid configuration: more than 1024 threads per block"; return 1; }
    if (grid[1] > 65535 || grid[2] > 65535) { last_error = "invalid configuration: grid.y or grid.z above 65535"; return 1; }
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    try {
        for (unsigned int bz = 0; bz < gridDim.z; ++bz)
            for (unsigned int by = 0; by < gridDim.y; ++by)
                for (unsigned int bx = 0; bx < gridDim.x; ++bx) {
                    blockIdx = dim3(bx, by, bz);
                    if (uses_barriers) {
                        fiber_mode = true;
                        fiber_body = &call_body<Body>;
                        fiber_arg = &body;
                        bool ok = run_block_with_barriers(threads);
                        fiber_mode = false;
                        if (!ok) return 1;
                    } else {
                        for (unsigned int tz = 0; tz < blockDim.z; ++tz)
                            for (unsigned int ty = 0; ty < blockDim.y; ++ty)
                                for (unsigned int tx = 0; tx < blockDim.x; ++tx) {
                                    threadIdx = dim3(tx, ty, tz);
                                    body();
                                }
                    }
                }
    } catch (const std::exception& error) {
        fiber_mode = false;
        last_error = error.what();
        return 1;
    }
    return 0;
}

}  // namespace gpucnn_emu

static inline void __syncthreads() { gpucnn_emu::barrier(); }

extern "C" __attribute__((visibility("default"))) const char* gpucnn_emu_last_error() {
    return gpucnn_emu::last_error.c_str();
}
