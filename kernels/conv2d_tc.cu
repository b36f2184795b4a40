// conv2d_tc.cu: convolution forward, backward-data, backward-filter and a dense GEMM as
// implicit GEMMs on tensor cores (mma.sync), in two precisions:
//   *_tf32  operands rounded to TF32 (cvt.rna), fp32 accumulation, m16n8k8
//   *_bf16  operands rounded to bf16 (round to nearest even), fp32 accumulation, m16n8k16
// Every kernel takes and writes float32 arrays: operands are rounded while they travel
// from shared memory into mma fragments, so the op contract (fp32 in, fp32 out) holds.
//
// Layout: x, dx (N, C, H, W); w, dw (O, C, KH, KW); y, dy (N, O, OH, OW); NCHW float32.
// KHW = KH*KW, P = OH*OW. The GEMM D (M x NN) = A (M x K) * B (K x NN) of each kernel:
//
//   kernel                         rows M            columns NN        reduction K
//   conv2d_forward_tc_*            (n, oh, ow) N*P   o  O              (c, kh, kw)  C*KHW
//   conv2d_backward_data_tc_*      (n, h, w) N*H*W   c  C              (o, kh, kw)  O*KHW
//   conv2d_backward_filter_tc_*    o  O              (c, kh, kw) C*KHW (n, oh, ow)  N*P
//   gemm_tc_*                      i  M              j  NN             k            K
//
// backward_data is the flipped-filter delta convolution: row (n, h, w), tap (o, kh, kw)
// reads dy[n, o, (h + PH - kh) / SH, (w + PW - kw) / SW] when that lies on the stride-dilated
// delta grid and inside it, else 0. backward_filter (and gemm) split K over gridDim.z:
// block z writes its partial tile to out[z] (splits, M, NN) and splitk_reduce
// (conv2d_igemm.cu) adds the splits in a fixed order: deterministic, no atomics.
// gemm: A is a (M, K) row-major, or a (K, M) when trans_a; B is b (K, NN), or b (NN, K)
// when trans_b; c (M, NN) row-major. The fused epilogue of forward and gemm adds
// bias[column] when has_bias and clamps at 0 when relu (only without a K split).
//
// Thread mapping: 128 threads = 4 warps compute a 64 x 64 tile of D (blockIdx.x: row tile,
// blockIdx.y: column tile); warp w owns rows 32 (w & 1) .. +32 and columns 32 (w >> 1) .. +32
// as 2 x 4 mma tiles of 16 x 8 (32 fp32 accumulators per thread). K runs in chunks of 16
// through a 3-stage cp.async pipeline: while chunk c is multiplied, chunks c+1 and c+2 are
// in flight. Both tiles sit in shared memory as fp32 [row][k] (k contiguous), filled by
// cp.async with zero fill for everything outside the tensor (padding, the ragged edge of M,
// NN and K), so no shape needs to be a multiple of anything: 4 bytes per element in
// general, 16 bytes per 4 k where an operand's rows are contiguous and aligned (weights of
// forward when C*KH*KW % 4 == 0, gemm operands along K when K % 4 == 0, dy of
// backward_filter when OH*OW % 4 == 0).
//   Loads: an operand whose global addresses run along rows (im2col pixels, a transposed
//   matrix) is loaded "row-fast" (8 consecutive lanes take 8 consecutive rows, 4 lane groups
//   4 consecutive k: full 32-byte sectors; shared stores conflict-free at the tf32 pitch,
//   2-way at the bf16 one); one whose addresses run along k (weights, dy in backward_filter)
//   "k-fast" (16 lanes take one row's 16 consecutive k). Index decomposition (integer
//   division) happens once per thread: afterwards the filter-tap digits (c, kh, kw) are only
//   stepped with carries, so the K loop of forward has no division at all.
//   Fragments, tf32: ldmatrix.x4 on the fp32 tile. ldmatrix moves 8 x 8 matrices of 16-bit
//   pairs, i.e. 8 rows of 4 32-bit words, and gives lane l word l % 4 of row l / 4, which is
//   exactly the m16n8k8 tf32 A (and B, from the [column][k] tile) fragment layout; the row
//   pitch of 20 words keeps the 8 rows of every matrix on distinct banks. The fp32 words are
//   then rounded in registers (cvt.rna).
//   Fragments, bf16: each register packs two k-adjacent values, so a lane reads 64-bit
//   pairs (LDS.64) and packs them with cvt.rn.bf16x2; ldmatrix cannot help, because the
//   tile is fp32 (converting before shared memory would mean register-staged loads
//   instead of cp.async). The row pitch of 24 words makes those pair loads conflict-free.
#include "tc.cuh"

#define TC_BM 64
#define TC_BN 64
#define TC_BK 16
#define TC_STAGES 3
#define TC_THREADS 128
#define TC_MIN_BLOCKS 4  // <= 128 registers a thread (no spills at sm_80/sm_90): 16 warps an SM

// 64-bit shared-memory load of two adjacent floats (LDS.64 on the GPU).
static __device__ __forceinline__ void tc_load_pair(const float* p, float& lo, float& hi)
{
#ifdef GPUCNN_EMULATED
    lo = p[0];
    hi = p[1];
#else
    const float2 v = *reinterpret_cast<const float2*>(p);
    lo = v.x;
    hi = v.y;
#endif
}

struct Tf32 {
    static constexpr int PITCH = 20;
};
struct Bf16 {
    static constexpr int PITCH = 24;
};

template <int PITCH>
struct alignas(16) TcTiles {
    float a[TC_STAGES][TC_BM][PITCH];
    float b[TC_STAGES][TC_BN][PITCH];
};

// ---- operand gathers: element (row, k) of a GEMM operand, or nullptr (read as 0) ------------
// Each splits the address into a per-row part (Row) and a per-k part (Kx). A thread's rows
// are fixed for the whole K loop and its k advance by TC_BK per chunk, so the loader
// decomposes each index once (integer division) and then only steps it: next_k moves a Kx
// by TC_BK, next_row a Row by 8 (the row-fast loader needs next_k, the k-fast one next_row).
// MAPPING says which loader an operand gets: ROW_FAST when consecutive rows are the
// contiguous direction in global memory, K_FAST when consecutive k are, RUNTIME when the
// gather decides per launch (gemm's transposes).
enum { ROW_FAST = 0, K_FAST = 1, RUNTIME = 2 };

// A walk over t = (ch, kh, kw), t < limit, with off = ch * plane: the filter taps of a
// convolution GEMM's K (forward, backward-data) or its columns (backward-filter). Stepping
// by a fixed amount needs at most one carry per digit, since each digit of the step is
// below its radix.
struct TapWalk {
    int limit, KH, KW, plane, d_off, d_kh, d_kw;
    struct Tap {
        int t, off, kh, kw;
    };
    __device__ Tap at(int t) const
    {
        const int KHW = KH * KW, ch = t / KHW, r = t - ch * KHW, kh = r / KW;
        return {t, ch * plane, kh, r - kh * KW};
    }
    __device__ void next(Tap& x, int step) const
    {
        x.t += step;
        x.off += d_off;
        x.kh += d_kh;
        x.kw += d_kw;
        if (x.kw >= KW) {
            x.kw -= KW;
            ++x.kh;
        }
        if (x.kh >= KH) {
            x.kh -= KH;
            x.off += plane;
        }
    }
};

static __device__ __forceinline__ TapWalk tc_tap_walk(int limit, int KH, int KW, int plane, int step)
{
    const int KHW = KH * KW, d_ch = step / KHW, r = step - d_ch * KHW, d_kh = r / KW;
    return {limit, KH, KW, plane, d_ch * plane, d_kh, r - d_kh * KW};
}

// Forward A: row (n, oh, ow), k (c, kh, kw) -> x[n, c, oh*SH - PH + kh, ow*SW - PW + kw].
struct Im2colRows {
    static constexpr int MAPPING = ROW_FAST;
    const float* x;
    TapWalk taps;  // K = C*KH*KW taps over planes of H*W
    int rows, C, H, W, SH, SW, PH, PW, OW, P;
    struct Row {
        const float* base;
        int h0, w0;
    };
    typedef TapWalk::Tap Kx;
    __device__ Row row(int m) const
    {
        if (m >= rows) return {nullptr, 0, 0};
        const int n = m / P, p = m - n * P, oh = p / OW;
        return {x + (size_t)n * C * H * W, oh * SH - PH, (p - oh * OW) * SW - PW};
    }
    __device__ Kx kx(int k) const { return taps.at(k); }
    __device__ void next_k(Kx& k) const { taps.next(k, TC_BK); }
    __device__ const float* at(const Row& r, const Kx& k) const
    {
        const int h = r.h0 + k.kh, w = r.w0 + k.kw;
        if (!r.base || k.t >= taps.limit || h < 0 || h >= H || w < 0 || w >= W) return nullptr;
        return r.base + k.off + h * W + w;
    }
};

// Backward-data A: row (n, h, w), tap k (o, kh, kw) -> dy[n, o, (h + PH - kh) / SH,
// (w + PW - kw) / SW] when both divisions are exact and inside the delta map, else 0.
struct DeltaRows {
    static constexpr int MAPPING = ROW_FAST;
    const float* dy;
    TapWalk taps;  // K = O*KH*KW taps over planes of OH*OW
    int rows, O, W, HW, SH, SW, PH, PW, OH, OW;
    struct Row {
        const float* base;
        int th, tw;
    };
    typedef TapWalk::Tap Kx;
    __device__ Row row(int m) const
    {
        if (m >= rows) return {nullptr, 0, 0};
        const int n = m / HW, p = m - n * HW, h = p / W;
        return {dy + (size_t)n * O * OH * OW, h + PH, p - h * W + PW};
    }
    __device__ Kx kx(int k) const { return taps.at(k); }
    __device__ void next_k(Kx& k) const { taps.next(k, TC_BK); }
    __device__ const float* at(const Row& r, const Kx& k) const
    {
        const int th = r.th - k.kh, tw = r.tw - k.kw;
        if (!r.base || k.t >= taps.limit || th < 0 || tw < 0) return nullptr;
        const int oh = SH == 1 ? th : th / SH, ow = SW == 1 ? tw : tw / SW;  // skip the division at stride 1
        if (oh * SH != th || ow * SW != tw || oh >= OH || ow >= OW) return nullptr;
        return r.base + k.off + oh * OW + ow;
    }
};

// Backward-filter B: row (c, kh, kw), k (n, oh, ow) -> x[n, c, oh*SH - PH + kh, ow*SW - PW + kw].
struct Im2colCols {
    static constexpr int MAPPING = K_FAST;
    const float* x;
    TapWalk taps;  // C*KH*KW columns over planes of H*W, stepped by 8 rows
    int K, C, H, W, SH, SW, PH, PW, OW, P;
    typedef TapWalk::Tap Row;
    struct Kx {
        const float* base;
        int h0, w0;
    };
    __device__ Row row(int j) const { return taps.at(j); }
    __device__ void next_row(Row& r) const { taps.next(r, 8); }
    __device__ Kx kx(int k) const
    {
        if (k >= K) return {nullptr, 0, 0};
        const int n = k / P, p = k - n * P, oh = p / OW;
        return {x + (size_t)n * C * H * W, oh * SH - PH, (p - oh * OW) * SW - PW};
    }
    __device__ const float* at(const Row& r, const Kx& k) const
    {
        const int h = k.h0 + r.kh, w = k.w0 + r.kw;
        if (!k.base || r.t >= taps.limit || h < 0 || h >= H || w < 0 || w >= W) return nullptr;
        return k.base + r.off + h * W + w;
    }
};

// Strided operands: element (i, k) at base + i * rstride + (k / kdiv) * khi + (k % kdiv) * klo.
// The weights of forward and backward-data, dy of backward-filter, and both gemm operands in
// either orientation. row_fast when consecutive rows are the contiguous direction; vec4 when
// every aligned group of 4 k is 16 contiguous, 16-byte aligned bytes of one row (then a
// k-fast tile moves with 16-byte cp.async, 2 per thread instead of 8 4-byte ones).
struct Strided {
    static constexpr int MAPPING = RUNTIME;
    bool row_fast, vec4;
    const float* base;
    int rows, K, rstride, kdiv, khi, klo;
    struct Row {
        int i;
        long long off;
    };
    struct Kx {
        int k;
        long long off;
    };
    __device__ Row row(int i) const { return {i, (long long)i * rstride}; }
    __device__ void next_row(Row& r) const
    {
        r.i += 8;
        r.off += 8LL * rstride;
    }
    __device__ Kx kx(int k) const
    {
        const int q = kdiv == 1 ? k : k / kdiv;
        return {k, (long long)q * khi + (long long)(k - q * kdiv) * klo};
    }
    __device__ void next_k(Kx& k) const { k = kx(k.k + TC_BK); }
    __device__ const float* at(const Row& r, const Kx& k) const
    {
        return (r.i >= rows || k.k >= K) ? nullptr : base + r.off + k.off;
    }
};

static __device__ __forceinline__ Strided tc_strided(bool row_fast, const float* base, int rows, int K, int rstride,
                                                     int kdiv, int khi, int klo)
{
    const bool runs = kdiv == 1 ? khi == 1 : (klo == 1 && kdiv % 4 == 0 && khi % 4 == 0);
    const bool vec4 = !row_fast && runs && rstride % 4 == 0 && K % 4 == 0 &&
                      (reinterpret_cast<unsigned long long>(base) & 15) == 0;
    return {row_fast, vec4, base, rows, K, rstride, kdiv, khi, klo};
}

// ---- outputs: the epilogue's store of D[m][j] (+ bias[j], ReLU) --------------------------------
// NCHW tensor: row m = (n, p) with P positions per image, column j = channel of `channels`.
struct NchwOut {
    float* y;
    const float* bias;
    int relu, P, channels;
    __device__ void store(int m, int j, float v) const
    {
        const int n = m / P;
        if (bias) v += bias[j];
        if (relu) v = fmaxf(v, 0.0f);
        y[((size_t)n * channels + j) * P + (m - n * P)] = v;
    }
};

// Row-major matrix with leading dimension ld (already offset to this block's K split).
struct MatrixOut {
    float* c;
    const float* bias;
    int relu, ld;
    __device__ void store(int m, int j, float v) const
    {
        if (bias) v += bias[j];
        if (relu) v = fmaxf(v, 0.0f);
        c[(size_t)m * ld + j] = v;
    }
};

// ---- tile loader: one stage of one operand (64 rows x 16 k), 8 elements per thread -----------
// Row-fast: element i is row ((i & 1) * 4 + tid / 32) * 8 + tid % 8, k (tid / 8) % 4 + 4 (i / 2):
//   8 lanes take 8 consecutive rows (a 32-byte sector), 4 lane groups 4 consecutive k; the
//   thread keeps its 2 rows and 4 k positions and steps the latter by TC_BK per chunk.
// K-fast: element i is row tid / 16 + 8 i, k tid % 16 (16 lanes read 64 contiguous bytes);
//   vec4: vector i is row tid / 4 + 32 i, k 4 (tid % 4) .. +3.
template <class G>
struct TileLoader {
    const G& g;
    const float* fallback;  // the operand's base (aligned as its copies): source of a zero fill
    int tid, row0;
    typename G::Row rows[2];  // row-fast: this thread's rows
    typename G::Kx ks[4];     // row-fast: this thread's k positions in the next chunk
    typename G::Row first;    // k-fast: this thread's first row

    __device__ TileLoader(const G& gather, const float* any, int t, int r0, int k_begin)
        : g(gather), fallback(any), tid(t), row0(r0)
    {
        if (row_fast()) {
            rows[0] = g.row(row0 + (tid >> 5) * 8 + (tid & 7));
            rows[1] = g.row(row0 + (4 + (tid >> 5)) * 8 + (tid & 7));
#pragma unroll
            for (int j = 0; j < 4; ++j) ks[j] = g.kx(k_begin + ((tid >> 3) & 3) + 4 * j);
        } else {
            first = g.row(row0 + (tid >> 4));
        }
    }

    __device__ bool row_fast() const
    {
        if constexpr (G::MAPPING == RUNTIME) {
            return g.row_fast;
        } else {
            return G::MAPPING == ROW_FAST;
        }
    }

    template <int PITCH>
    __device__ void load(float (*s)[PITCH], int k0)
    {
        if constexpr (G::MAPPING != K_FAST) {
            if (row_fast()) {
                load_row_fast(s);
                return;
            }
        }
        if constexpr (G::MAPPING != ROW_FAST) load_k_fast(s, k0);
    }

    template <int PITCH>
    __device__ void load_row_fast(float (*s)[PITCH])
    {
        const int r_lo = tid & 7, kq = (tid >> 3) & 3;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int r = ((i & 1) * 4 + (tid >> 5)) * 8 + r_lo, kk = kq + 4 * (i >> 1);
            const float* src = g.at(rows[i & 1], ks[i >> 1]);
            tc_cp_async_4(&s[r][kk], src ? src : fallback, src != nullptr);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) g.next_k(ks[j]);
    }

    template <int PITCH>
    __device__ void load_k_fast(float (*s)[PITCH], int k0) const
    {
        if constexpr (G::MAPPING == RUNTIME) {
            if (g.vec4) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int r = (tid >> 2) + 32 * i, kk = 4 * (tid & 3);
                    const float* src = g.at(g.row(row0 + r), g.kx(k0 + kk));
                    tc_cp_async_16(&s[r][kk], src ? src : fallback, src != nullptr);
                }
                return;
            }
        }
        const int kk = tid & 15;
        const typename G::Kx k = g.kx(k0 + kk);
        typename G::Row row = first;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float* src = g.at(row, k);
            tc_cp_async_4(&s[(tid >> 4) + 8 * i][kk], src ? src : fallback, src != nullptr);
            g.next_row(row);
        }
    }
};

// ---- one K chunk (16) of the warp's 32 x 32 tile: 2 x 4 mma tiles --------------------------
template <int PITCH>
static __device__ __forceinline__ void tc_chunk_mma(float acc[2][4][4], const float (*sa)[PITCH],
                                                    const float (*sb)[PITCH], int lane, int wm, int wn, Tf32)
{
    const int q = lane >> 3, r8 = lane & 7;
#pragma unroll
    for (int ks = 0; ks < TC_BK; ks += 8) {
        uint32_t a[2][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            // matrices: rows 0-7 | 8-15 (q & 1) x k 0-3 | 4-7 (q >> 1) = fragment registers a0..a3
            tc_ldmatrix_x4(a[mi], &sa[wm * 32 + mi * 16 + (q & 1) * 8 + r8][ks + (q >> 1) * 4]);
#pragma unroll
            for (int i = 0; i < 4; ++i) a[mi][i] = tc_f32_to_tf32(__uint_as_float(a[mi][i]));
        }
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
            // matrices: k 0-3 | 4-7 (q & 1) x columns 0-7 | 8-15 (q >> 1) = b0, b1 of two n8 tiles
            uint32_t t[4];
            tc_ldmatrix_x4(t, &sb[wn * 32 + nj * 16 + (q >> 1) * 8 + r8][ks + (q & 1) * 4]);
#pragma unroll
            for (int i = 0; i < 4; ++i) b[2 * nj + (i >> 1)][i & 1] = tc_f32_to_tf32(__uint_as_float(t[i]));
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const float c[4] = {acc[mi][ni][0], acc[mi][ni][1], acc[mi][ni][2], acc[mi][ni][3]};
                tc_mma_tf32_m16n8k8(acc[mi][ni], a[mi], b[ni], c);
            }
    }
}

static __device__ __forceinline__ uint32_t tc_pair_bf16(const float* p)
{
    float lo, hi;
    tc_load_pair(p, lo, hi);
    return tc_pack_bf16x2(lo, hi);
}

template <int PITCH>
static __device__ __forceinline__ void tc_chunk_mma(float acc[2][4][4], const float (*sa)[PITCH],
                                                    const float (*sb)[PITCH], int lane, int wm, int wn, Bf16)
{
    const int g = lane >> 2, k2 = 2 * (lane & 3);
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
        const float* top = &sa[wm * 32 + mi * 16 + g][k2];
        const float* bottom = top + 8 * PITCH;
        a[mi][0] = tc_pair_bf16(top);
        a[mi][1] = tc_pair_bf16(bottom);
        a[mi][2] = tc_pair_bf16(top + 8);
        a[mi][3] = tc_pair_bf16(bottom + 8);
    }
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
        const float* col = &sb[wn * 32 + ni * 8 + g][k2];
        b[ni][0] = tc_pair_bf16(col);
        b[ni][1] = tc_pair_bf16(col + 8);
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const float c[4] = {acc[mi][ni][0], acc[mi][ni][1], acc[mi][ni][2], acc[mi][ni][3]};
            tc_mma_bf16_m16n8k16(acc[mi][ni], a[mi], b[ni], c);
        }
}

// ---- the GEMM: D tile (blockIdx.x, blockIdx.y) over this block's K split (blockIdx.z) ---------
template <class Prec, class GA, class GB, class Out>
static __device__ __forceinline__ void tc_igemm(const GA& ga, const float* a_any, const GB& gb,
                                                const float* b_any, const Out& out, int M, int NN, int K,
                                                Prec prec)
{
    __shared__ TcTiles<Prec::PITCH> tiles;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp & 1, wn = warp >> 1;
    const int m0 = blockIdx.x * TC_BM, n0 = blockIdx.y * TC_BN;
    const int chunks = (K + TC_BK - 1) / TC_BK;
    const int per_split = (chunks + gridDim.z - 1) / gridDim.z;
    const int first = blockIdx.z * per_split;
    const int count = max(0, min(chunks, first + per_split) - first);
    TileLoader<GA> load_a(ga, a_any, tid, m0, first * TC_BK);
    TileLoader<GB> load_b(gb, b_any, tid, n0, first * TC_BK);

    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

    // One commit group per chunk, empty past the end, so wait<STAGES - 2> always means
    // "the chunk about to be multiplied has landed".
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < count) {
            load_a.load(tiles.a[s], (first + s) * TC_BK);
            load_b.load(tiles.b[s], (first + s) * TC_BK);
        }
        tc_cp_async_commit();
    }
    for (int c = 0; c < count; ++c) {
        tc_cp_async_wait<TC_STAGES - 2>();
        __syncthreads();  // chunk c visible to all; everyone is done with chunk c - 1's stage
        const int next = c + TC_STAGES - 1;
        if (next < count) {
            load_a.load(tiles.a[next % TC_STAGES], (first + next) * TC_BK);
            load_b.load(tiles.b[next % TC_STAGES], (first + next) * TC_BK);
        }
        tc_cp_async_commit();
        tc_chunk_mma(acc, tiles.a[c % TC_STAGES], tiles.b[c % TC_STAGES], lane, wm, wn, prec);
    }
    tc_cp_async_wait_all();

    // accumulator e of tile (mi, ni): row g + 8 (e / 2), column 2 (lane % 4) + e % 2
    const int g = lane >> 2, t2 = 2 * (lane & 3);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + wm * 32 + mi * 16 + g + 8 * (e >> 1);
                const int j = n0 + wn * 32 + ni * 8 + t2 + (e & 1);
                if (m < M && j < NN) out.store(m, j, acc[mi][ni][e]);
            }
}

// ---- the four operations, for either precision ----------------------------------------------
template <class Prec>
static __device__ __forceinline__ void tc_forward(float* y, const float* x, const float* w, const float* b,
                                                  int relu, int N, int C, int H, int W, int O, int KH, int KW,
                                                  int SH, int SW, int PH, int PW, int OH, int OW, Prec prec)
{
    const int KHW = KH * KW, K = C * KHW, P = OH * OW;
    const Im2colRows ga = {x, tc_tap_walk(K, KH, KW, H * W, TC_BK), N * P, C, H, W, SH, SW, PH, PW, OW, P};
    const Strided gb = tc_strided(false, w, O, K, K, 1, 1, 0);  // w[o * K + k]
    const NchwOut out = {y, b, relu, P, O};
    tc_igemm(ga, x, gb, w, out, N * P, O, K, prec);
}

template <class Prec>
static __device__ __forceinline__ void tc_backward_data(float* dx, const float* dy, const float* w, int N, int C,
                                                        int H, int W, int O, int KH, int KW, int SH, int SW,
                                                        int PH, int PW, int OH, int OW, Prec prec)
{
    const int KHW = KH * KW, K = O * KHW, HW = H * W;
    const DeltaRows ga = {dy, tc_tap_walk(K, KH, KW, OH * OW, TC_BK), N * HW, O, W, HW, SH, SW, PH, PW, OH, OW};
    // w[(o * C + c) * KHW + tap]: runs of KHW taps along k, so k-fast unless a 1x1 filter leaves
    // c as the only contiguous direction
    const Strided gb = tc_strided(KHW == 1, w, C, K, KHW, KHW, C * KHW, 1);
    const NchwOut out = {dx, nullptr, 0, HW, C};
    tc_igemm(ga, dy, gb, w, out, N * HW, C, K, prec);
}

template <class Prec>
static __device__ __forceinline__ void tc_backward_filter(float* partial, const float* dy, const float* x, int N,
                                                          int C, int H, int W, int O, int KH, int KW, int SH,
                                                          int SW, int PH, int PW, int OH, int OW, Prec prec)
{
    const int KHW = KH * KW, P = OH * OW, K = N * P, NCOL = C * KHW;
    const Strided ga = tc_strided(false, dy, O, K, P, P, O * P, 1);  // dy[(n * O + o) * P + p]
    const Im2colCols gb = {x, tc_tap_walk(NCOL, KH, KW, H * W, 8), K, C, H, W, SH, SW, PH, PW, OW, P};
    const MatrixOut out = {partial + (size_t)blockIdx.z * O * NCOL, nullptr, 0, NCOL};
    tc_igemm(ga, dy, gb, x, out, O, NCOL, K, prec);
}

template <class Prec>
static __device__ __forceinline__ void tc_gemm(float* c, const float* a, const float* b, const float* bias,
                                               int relu, int M, int NN, int K, int trans_a, int trans_b, Prec prec)
{
    // A[i][k]: a[i * K + k], or a[k * M + i] (trans_a); B[k][j] as the [j][k] tile: b[k * NN + j],
    // or b[j * K + k] (trans_b).
    const Strided ga = trans_a ? tc_strided(true, a, M, K, 1, 1, M, 0) : tc_strided(false, a, M, K, K, 1, 1, 0);
    const Strided gb = trans_b ? tc_strided(false, b, NN, K, K, 1, 1, 0) : tc_strided(true, b, NN, K, 1, 1, NN, 0);
    const MatrixOut out = {c + (size_t)blockIdx.z * M * NN, bias, relu, NN};
    tc_igemm(ga, a, gb, b, out, M, NN, K, prec);
}

// ---- kernels: outputs, inputs, sizes. blockDim = (128, 1, 1); grid (ceil(M / 64), ceil(NN / 64),
// splits). has_bias selects b (any float array otherwise); relu clamps the result at 0. ---------
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_forward_tc_tf32(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                       const float* __restrict__ b, int has_bias, int relu, int N, int C, int H, int W, int O,
                       int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW)
{
    tc_forward(y, x, w, has_bias ? b : nullptr, relu, N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW, Tf32{});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_forward_tc_bf16(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                       const float* __restrict__ b, int has_bias, int relu, int N, int C, int H, int W, int O,
                       int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW)
{
    tc_forward(y, x, w, has_bias ? b : nullptr, relu, N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW, Bf16{});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_backward_data_tc_tf32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                             int N, int C, int H, int W, int O, int KH, int KW, int SH, int SW, int PH, int PW,
                             int OH, int OW)
{
    tc_backward_data(dx, dy, w, N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW, Tf32{});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_backward_data_tc_bf16(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                             int N, int C, int H, int W, int O, int KH, int KW, int SH, int SW, int PH, int PW,
                             int OH, int OW)
{
    tc_backward_data(dx, dy, w, N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW, Bf16{});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_backward_filter_tc_tf32(float* __restrict__ partial, const float* __restrict__ dy,
                               const float* __restrict__ x, int N, int C, int H, int W, int O, int KH, int KW,
                               int SH, int SW, int PH, int PW, int OH, int OW)
{
    tc_backward_filter(partial, dy, x, N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW, Tf32{});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
conv2d_backward_filter_tc_bf16(float* __restrict__ partial, const float* __restrict__ dy,
                               const float* __restrict__ x, int N, int C, int H, int W, int O, int KH, int KW,
                               int SH, int SW, int PH, int PW, int OH, int OW)
{
    tc_backward_filter(partial, dy, x, N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW, Bf16{});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_tf32(float* __restrict__ c, const float* __restrict__ a, const float* __restrict__ b,
             const float* __restrict__ bias, int has_bias, int relu, int M, int NN, int K, int trans_a, int trans_b)
{
    tc_gemm(c, a, b, has_bias ? bias : nullptr, relu, M, NN, K, trans_a, trans_b, Tf32{});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_bf16(float* __restrict__ c, const float* __restrict__ a, const float* __restrict__ b,
             const float* __restrict__ bias, int has_bias, int relu, int M, int NN, int K, int trans_a, int trans_b)
{
    tc_gemm(c, a, b, has_bias ? bias : nullptr, relu, M, NN, K, trans_a, trans_b, Bf16{});
}
