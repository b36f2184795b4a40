// tc.cuh: tensor-core device functions for sm_80+ (mma.sync, ldmatrix, cp.async, TF32/BF16
// conversion). Under NVRTC each is one inline PTX instruction; under the emulated backend
// (GPUCNN_EMULATED, defined by gpucnn/cuda/cuda_emulation.h) an exact CPU model of it.
//
// Conversions (gpucnn/precision.py is the NumPy reference of both):
//   tc_f32_to_tf32(x)          cvt.rna.tf32.f32: nearest, ties away from zero; a float32 bit
//                              pattern with the low 13 mantissa bits zero.
//   tc_pack_bf16x2(lo, hi)     cvt.rn.bf16x2.f32: nearest even; lo in bits 0-15, hi in 16-31.
//
// mma (all 32 lanes of the warp, converged). g = lane / 4, t = lane % 4; A row-major (M x K),
// B column-major (K x N), C = D (16 x 8) fp32. Fragments, as the PTX ISA's "Matrix Fragments
// for mma.m16n8k8" (.tf32) and "for mma.m16n8k16" (.bf16):
//   tc_mma_tf32_m16n8k8   a[0] A[g][t]  a[1] A[g+8][t]  a[2] A[g][t+4]  a[3] A[g+8][t+4]
//                         b[0] B[t][g]  b[1] B[t+4][g]
//   tc_mma_bf16_m16n8k16  a[0] A[g][2t..2t+1]    a[1] A[g+8][2t..2t+1]
//                         a[2] A[g][2t+8..2t+9]  a[3] A[g+8][2t+8..2t+9]   (lower k in bits 0-15)
//                         b[0] B[2t..2t+1][g]    b[1] B[2t+8..2t+9][g]
//   c, d                  [0] (g, 2t)  [1] (g, 2t+1)  [2] (g+8, 2t)  [3] (g+8, 2t+1)
//   d may alias c. The tf32 mma reads only the top 19 bits of each a/b register (the low 13
//   are ignored), so pass tc_f32_to_tf32 results for round-to-nearest operands.
//   Emulation: every product of two TF32 or two BF16 values is exact in fp32, so only the
//   summation order matters; the hardware's is unspecified. The model adds c and the K
//   products in float64, in order k = 0, 1, ..., K-1, and rounds once to fp32. Results can
//   differ from a GPU in the last bits; integer-valued inputs are exact on both.
//
// ldmatrix (all 32 lanes): 8x8 matrices of 16-bit elements, one 16-byte row per lane address
// (16-byte aligned, shared memory): matrix i takes its rows from lanes 8i..8i+7. Lane l gets,
// of matrix i, in r[i]: row l/4, elements 2(l%4) and 2(l%4)+1 (the first in bits 0-15);
// .trans: elements (2(l%4), l/4) and (2(l%4)+1, l/4). _x2 uses the addresses of lanes 0-15.
// For 32-bit data (tf32) a row is 4 words and lane l gets word l%4 of row l/4.
//
// cp.async (per thread): tc_cp_async_16 / _4 copy 16 / 4 bytes global -> shared (.cg / .ca),
// both addresses aligned to the size; pred false = src-size 0: zero fill, src not read.
// tc_cp_async_commit closes a group; tc_cp_async_wait<N>() waits until at most N of the
// committed groups are pending; tc_cp_async_wait_all() waits for every copy (committed or
// not). Neither orders other threads: __syncthreads() after the wait, as on the GPU.
// Emulation: the source is read at issue, the destination is poisoned (all bits set: NaN)
// until the wait that covers the copy, which is when the data lands, so a kernel that
// reads before waiting sees NaN. Copies never waited for are dropped at thread exit.
#pragma once

#ifndef GPUCNN_EMULATED
typedef unsigned int uint32_t;  // NVRTC has no <cstdint>
#endif

#ifdef GPUCNN_EMULATED
namespace gpucnn_tc_emu {

static inline uint32_t tf32_bits(float x)
{
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (u | 0x00400000u) & 0xffffe000u;  // NaN
    return (u + 0x1000u) & 0xffffe000u;
}

static inline uint32_t bf16_bits(float x)
{
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (u | 0x00400000u) >> 16;  // NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline double tf32_operand(uint32_t r) { return (double)__uint_as_float(r & 0xffffe000u); }
static inline double bf16_operand(uint32_t half) { return (double)__uint_as_float((half & 0xffffu) << 16); }

// d = a * b + c for a 16 x K by K x 8 tile, summed in float64 in k order, rounded once.
template <int K>
static void mma_tile(const double (&a)[16][K], const double (&b)[K][8], const double (&c)[16][8],
                     gpucnn_emu::LaneCall* lanes)
{
    for (unsigned int lane = 0; lane < 32; ++lane) {
        const unsigned int g = lane >> 2, t = lane & 3;
        float* d = (float*)lanes[lane].ptr[0];
        for (int i = 0; i < 4; ++i) {
            const unsigned int m = g + 8 * (i >> 1), n = 2 * t + (i & 1);
            double sum = c[m][n];
            for (int k = 0; k < K; ++k) sum += a[m][k] * b[k][n];
            d[i] = (float)sum;
        }
    }
}

// Gathers every lane's fragments before writing any d (d may alias c).
static void gather_c(double (&c)[16][8], gpucnn_emu::LaneCall* lanes)
{
    for (unsigned int lane = 0; lane < 32; ++lane) {
        const unsigned int g = lane >> 2, t = lane & 3;
        const float* cf = (const float*)lanes[lane].ptr[3];
        for (int i = 0; i < 4; ++i) c[g + 8 * (i >> 1)][2 * t + (i & 1)] = cf[i];
    }
}

static void mma_tf32_compute(gpucnn_emu::LaneCall* lanes, unsigned int)
{
    double a[16][8], b[8][8], c[16][8];
    for (unsigned int lane = 0; lane < 32; ++lane) {
        const unsigned int g = lane >> 2, t = lane & 3;
        const uint32_t* ar = (const uint32_t*)lanes[lane].ptr[1];
        const uint32_t* br = (const uint32_t*)lanes[lane].ptr[2];
        a[g][t] = tf32_operand(ar[0]);
        a[g + 8][t] = tf32_operand(ar[1]);
        a[g][t + 4] = tf32_operand(ar[2]);
        a[g + 8][t + 4] = tf32_operand(ar[3]);
        b[t][g] = tf32_operand(br[0]);
        b[t + 4][g] = tf32_operand(br[1]);
    }
    gather_c(c, lanes);
    mma_tile<8>(a, b, c, lanes);
}

static void mma_bf16_compute(gpucnn_emu::LaneCall* lanes, unsigned int)
{
    double a[16][16], b[16][8], c[16][8];
    for (unsigned int lane = 0; lane < 32; ++lane) {
        const unsigned int g = lane >> 2, t = lane & 3;
        const uint32_t* ar = (const uint32_t*)lanes[lane].ptr[1];
        const uint32_t* br = (const uint32_t*)lanes[lane].ptr[2];
        for (int j = 0; j < 2; ++j) {
            a[g][2 * t + j] = bf16_operand(ar[0] >> (16 * j));
            a[g + 8][2 * t + j] = bf16_operand(ar[1] >> (16 * j));
            a[g][2 * t + 8 + j] = bf16_operand(ar[2] >> (16 * j));
            a[g + 8][2 * t + 8 + j] = bf16_operand(ar[3] >> (16 * j));
            b[2 * t + j][g] = bf16_operand(br[0] >> (16 * j));
            b[2 * t + 8 + j][g] = bf16_operand(br[1] >> (16 * j));
        }
    }
    gather_c(c, lanes);
    mma_tile<16>(a, b, c, lanes);
}

static void mma(const char* name, gpucnn_emu::WarpCompute compute, float* d, const uint32_t* a, const uint32_t* b,
                const float* c)
{
    gpucnn_emu::LaneCall call{name, compute, 0xffffffffu, 0, 0, 0, {d, a, b, c}, 0};
    gpucnn_emu::warp_collective(call);
}

template <int Matrices, bool Trans>
static void ldmatrix_compute(gpucnn_emu::LaneCall* lanes, unsigned int)
{
    for (unsigned int row = 0; row < 8 * Matrices; ++row) {
        if ((uintptr_t)lanes[row].ptr[1] % 16 != 0) {
            throw gpucnn_emu::KernelFault(std::string(lanes[row].name) + ": row address of lane " +
                                          std::to_string(row) + " is not 16-byte aligned");
        }
    }
    uint32_t out[32][4];
    for (unsigned int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < Matrices; ++i) {
            const unsigned int q = lane & 3, p = lane >> 2;
            uint16_t lo, hi;
            if (Trans) {  // elements (2q, p) and (2q+1, p)
                std::memcpy(&lo, (const unsigned char*)lanes[8 * i + 2 * q].ptr[1] + 2 * p, 2);
                std::memcpy(&hi, (const unsigned char*)lanes[8 * i + 2 * q + 1].ptr[1] + 2 * p, 2);
            } else {  // row p, elements 2q and 2q+1
                std::memcpy(&lo, (const unsigned char*)lanes[8 * i + p].ptr[1] + 4 * q, 2);
                std::memcpy(&hi, (const unsigned char*)lanes[8 * i + p].ptr[1] + 4 * q + 2, 2);
            }
            out[lane][i] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
    for (unsigned int lane = 0; lane < 32; ++lane) {
        uint32_t* r = (uint32_t*)lanes[lane].ptr[0];
        for (int i = 0; i < Matrices; ++i) r[i] = out[lane][i];
    }
}

template <int Matrices, bool Trans>
static void ldmatrix(const char* name, uint32_t* r, const void* row)
{
    gpucnn_emu::LaneCall call{name, ldmatrix_compute<Matrices, Trans>, 0xffffffffu, 0, 0, 0, {r, row}, 0};
    gpucnn_emu::warp_collective(call);
}

static void cp_async(const char* name, void* dst, const void* src, unsigned int size, bool pred)
{
    if ((uintptr_t)dst % size != 0 || (pred && (uintptr_t)src % size != 0)) {
        throw gpucnn_emu::KernelFault(std::string(name) + ": address not " + std::to_string(size) + "-byte aligned");
    }
    gpucnn_emu::AsyncCopy copy;
    copy.dst = dst;
    copy.size = size;
    copy.group = -1;
    if (pred) std::memcpy(copy.bytes, src, size);
    else std::memset(copy.bytes, 0, size);
    std::memset(dst, 0xff, size);  // poison until the wait
    gpucnn_emu::async_state[gpucnn_emu::current].pending.push_back(copy);
}

static void cp_async_commit()
{
    gpucnn_emu::AsyncState& state = gpucnn_emu::async_state[gpucnn_emu::current];
    for (gpucnn_emu::AsyncCopy& copy : state.pending)
        if (copy.group < 0) copy.group = state.committed;
    ++state.committed;
}

// Land every copy of a group older than the newest `keep` committed groups (all copies: keep < 0).
static void cp_async_wait(int keep)
{
    gpucnn_emu::AsyncState& state = gpucnn_emu::async_state[gpucnn_emu::current];
    std::vector<gpucnn_emu::AsyncCopy> still;
    for (const gpucnn_emu::AsyncCopy& copy : state.pending) {
        if (keep < 0 || (copy.group >= 0 && copy.group < state.committed - keep)) std::memcpy(copy.dst, copy.bytes, copy.size);
        else still.push_back(copy);
    }
    state.pending.swap(still);
}

}  // namespace gpucnn_tc_emu
#endif  // GPUCNN_EMULATED

static __device__ __forceinline__ uint32_t tc_f32_to_tf32(float x)
{
#ifdef GPUCNN_EMULATED
    return gpucnn_tc_emu::tf32_bits(x);
#else
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}

static __device__ __forceinline__ uint32_t tc_pack_bf16x2(float lo, float hi)
{
#ifdef GPUCNN_EMULATED
    return gpucnn_tc_emu::bf16_bits(lo) | (gpucnn_tc_emu::bf16_bits(hi) << 16);
#else
    uint32_t r;  // cvt.rn.bf16x2.f32 d, a, b puts a in the upper half
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

static __device__ __forceinline__ void tc_mma_tf32_m16n8k8(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                           const float c[4])
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::mma("tc_mma_tf32_m16n8k8", gpucnn_tc_emu::mma_tf32_compute, d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

static __device__ __forceinline__ void tc_mma_bf16_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                            const float c[4])
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::mma("tc_mma_bf16_m16n8k16", gpucnn_tc_emu::mma_bf16_compute, d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

#ifndef GPUCNN_EMULATED
static __device__ __forceinline__ uint32_t tc_shared_address(const void* p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}
#endif

static __device__ __forceinline__ void tc_ldmatrix_x4(uint32_t r[4], const void* smem)
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::ldmatrix<4, false>("tc_ldmatrix_x4", r, smem);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(tc_shared_address(smem)) : "memory");
#endif
}

static __device__ __forceinline__ void tc_ldmatrix_x2(uint32_t r[2], const void* smem)
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::ldmatrix<2, false>("tc_ldmatrix_x2", r, smem);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(tc_shared_address(smem)) : "memory");
#endif
}

static __device__ __forceinline__ void tc_ldmatrix_x4_trans(uint32_t r[4], const void* smem)
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::ldmatrix<4, true>("tc_ldmatrix_x4_trans", r, smem);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(tc_shared_address(smem)) : "memory");
#endif
}

static __device__ __forceinline__ void tc_ldmatrix_x2_trans(uint32_t r[2], const void* smem)
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::ldmatrix<2, true>("tc_ldmatrix_x2_trans", r, smem);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(tc_shared_address(smem)) : "memory");
#endif
}

static __device__ __forceinline__ void tc_cp_async_16(void* smem_dst, const void* gmem_src, bool pred)
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::cp_async("tc_cp_async_16", smem_dst, gmem_src, 16, pred);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(tc_shared_address(smem_dst)), "l"(gmem_src), "r"(pred ? 16 : 0) : "memory");
#endif
}

static __device__ __forceinline__ void tc_cp_async_4(void* smem_dst, const void* gmem_src, bool pred)
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::cp_async("tc_cp_async_4", smem_dst, gmem_src, 4, pred);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;"
                 :: "r"(tc_shared_address(smem_dst)), "l"(gmem_src), "r"(pred ? 4 : 0) : "memory");
#endif
}

static __device__ __forceinline__ void tc_cp_async_commit()
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
static __device__ __forceinline__ void tc_cp_async_wait()
{
#ifdef GPUCNN_EMULATED
    static_assert(N >= 0, "tc_cp_async_wait<N>: N must be >= 0");
    gpucnn_tc_emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
#endif
}

static __device__ __forceinline__ void tc_cp_async_wait_all()
{
#ifdef GPUCNN_EMULATED
    gpucnn_tc_emu::cp_async_wait(-1);
#else
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
