// Decode GEMV for Q4_K and Q6_K weights with the activations rounded to Q8_K (blocks of 256 int8 values and a float
// scale), as llama.cpp's CPU backend and kamado's CPU path round them; integer dot products (dp4a), so each block's
// sum is exact and only the float scaling of block sums rounds. Compiled at run time by NVRTC (q8k_gemv.py), with
// the shape constants below given as -D options. No #include: NVRTC's built-in declarations suffice.
//
// Layout: the weight's planes (layout.py), contiguous: Q4_K qs (rows, NB * 32 words), dm (rows, NB words: d low half,
// dmin high half), sc (rows, NB * 3 words); Q6_K ql (rows, NB * 32 words), qh (rows, NB * 16 words), sc (rows, NB * 4
// words of 4 int8 scales), d (rows, NB halves). Activations: xq (MX, K) int8, xd (MX, NB) float, xs (MX, K / 16) int
// (the sum of each 16 quants).
//
// Threads: a warp computes ROWS weight rows for all MX activation rows; lane t = lane % 8 holds 16 bytes of a block's
// 128 quant bytes, lane / 8 picks one of 4 blocks, so a warp-wide 16-byte load covers 4 blocks (512 bytes) of a row.
// The loads of U such steps (all rows) are issued before any of them is used: enough bytes in flight per warp to
// cover the memory latency, which the Triton GEMVs could not (docs/GPU.md, session 7).
//
// Defines: NB (blocks of 256 per row), ROWS, U, MX, WARPS, PLANES.
//
// PLANES = 2: x is carried as two int8 planes, the Q8_K quants q and the rounding's remainder r = round((x s - q) 254),
// as 2 M activation rows: row m + M is row m's remainder, its block scale d / 254 (quantize_q8k). The GEMV sums both
// (store_rows): about 15 bits of x instead of 8, so the product is as close to the unrounded one as a float GEMV's.

typedef unsigned int u32;

__device__ __forceinline__ float half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ int dot16(int4 w, int4 x) {  // 16 int8 products of 4 words each
    return __dp4a(w.w, x.w, __dp4a(w.z, x.z, __dp4a(w.y, x.y, __dp4a(w.x, x.x, 0))));
}

__device__ __forceinline__ int4 and_mask(int4 v, int shift, int mask) {
    return make_int4((v.x >> shift) & mask, (v.y >> shift) & mask, (v.z >> shift) & mask, (v.w >> shift) & mask);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

constexpr int STEPS = (NB + 3) / 4;  // warp-wide steps of 4 blocks along a row

// y[m, n] for the warp's rows; acc[r][m] (and, with two planes, its remainder row's acc[r][m + MX / 2]) summed over
// the warp, lane 0 stores.
__device__ __forceinline__ void store_rows(float (&acc)[ROWS][MX], float* y, int row0, int n) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int m = 0; m < MX / PLANES; ++m) {
            float v = warp_sum(PLANES == 2 ? acc[r][m] + acc[r][m + MX / 2] : acc[r][m]);
            if (lane == 0 && row0 + r < n) y[(long)m * n + row0 + r] = v;
        }
    }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) q4k_q8k_gemv(
    const int4* __restrict__ qs, const u32* __restrict__ dm, const u32* __restrict__ sc, const int4* __restrict__ xq,
    const float* __restrict__ xd, const int* __restrict__ xs, float* __restrict__ y, int n) {
    const int lane = threadIdx.x & 31, t = lane & 7, g = lane >> 3;
    const int row0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS;
    const int c = t >> 1, h = t & 1;  // the lane's 32-byte chunk of the block and its half
    // low nibbles: values 64 c + 16 h + i (sub-block 2 c), high nibbles 32 further (sub-block 2 c + 1); i = 0..15
    const int scale_shift = 16 * (c & 1);  // the 2 scale bytes of sub-blocks 2c, 2c + 1 in their packed words
    long row_at[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) row_at[r] = min(row0 + r, n - 1);  // rows past n compute, never store
    float acc[ROWS][MX] = {};
    for (int s0 = 0; s0 < STEPS; s0 += U) {
        int4 w[U][ROWS];
        u32 s_0[U][ROWS], s_1[U][ROWS], s_2[U][ROWS], dmw[U][ROWS];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int b = min((s0 + u) * 4 + g, NB - 1);  // past the row's end: a valid block, its sum dropped below
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                w[u][r] = __ldg(qs + (row_at[r] * NB + b) * 8 + t);
                const u32* s = sc + (row_at[r] * NB + b) * 3;
                s_0[u][r] = __ldg(s);
                s_1[u][r] = __ldg(s + 1);
                s_2[u][r] = __ldg(s + 2);
                dmw[u][r] = __ldg(dm + row_at[r] * NB + b);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int b = (s0 + u) * 4 + g;
            if (s0 + u >= STEPS || b >= NB) continue;
#pragma unroll
            for (int m = 0; m < MX; ++m) {
                const int p = b * 256 + 64 * c + 16 * h;  // the low nibbles' first value
                const int4 x_lo = __ldg(xq + ((long)m * NB * 256 + p) / 16);
                const int4 x_hi = __ldg(xq + ((long)m * NB * 256 + p + 32) / 16);
                const int bs_lo = __ldg(xs + (long)m * NB * 16 + p / 16);
                const int bs_hi = __ldg(xs + (long)m * NB * 16 + p / 16 + 2);
                const float dx = __ldg(xd + (long)m * NB + b);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    const int lo = dot16(and_mask(w[u][r], 0, 0x0F0F0F0F), x_lo);
                    const int hi = dot16(and_mask(w[u][r], 4, 0x0F0F0F0F), x_hi);
                    // 6-bit scales and mins of sub-blocks 2c and 2c + 1 (ggml's get_scale_min_k4), as byte pairs
                    const u32 a0 = s_0[u][r] >> scale_shift, a1 = s_1[u][r] >> scale_shift, a2 = s_2[u][r] >> scale_shift;
                    const u32 scales = c < 2 ? a0 & 0x3F3F : (a2 & 0x0F0F) | ((a0 >> 2) & 0x3030);
                    const u32 mins = c < 2 ? a1 & 0x3F3F : ((a2 >> 4) & 0x0F0F) | ((a1 >> 2) & 0x3030);
                    const int dots = (int)(scales & 0xFF) * lo + (int)(scales >> 8) * hi;
                    const int offs = (int)(mins & 0xFF) * bs_lo + (int)(mins >> 8) * bs_hi;
                    const float d = half_to_float(dmw[u][r] & 0xFFFF), dmin = half_to_float(dmw[u][r] >> 16);
                    acc[r][m] += dx * (d * (float)dots - dmin * (float)offs);
                }
            }
        }
    }
    store_rows(acc, y, row0, n);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) q6k_q8k_gemv(
    const int4* __restrict__ ql, const int4* __restrict__ qh, const u32* __restrict__ sc,
    const unsigned short* __restrict__ dh, const int4* __restrict__ xq, const float* __restrict__ xd,
    const int* __restrict__ xs, float* __restrict__ y, int n) {
    const int lane = threadIdx.x & 31, t = lane & 7, g = lane >> 3;
    const int row0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS;
    // ggml's Q6_K: half hf = t / 4 of the block (128 values, 64 ql bytes, 32 qh bytes); ql byte 32 part + l of a half
    // holds value 32 part + l in its low nibble and 64 + 32 part + l in its high one, their 2 high bits at bits
    // 2 part and 4 + 2 part of qh byte l; a scale for each 16 values. This lane: part = (t % 4) / 2, l = 16 (t % 2) + i.
    const int hf = t >> 2, part = (t & 3) >> 1, l0 = 16 * (t & 1);
    const int first = 128 * hf + 32 * part + l0;  // the low nibbles' first value in the block
    long row_at[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) row_at[r] = min(row0 + r, n - 1);
    float acc[ROWS][MX] = {};
    for (int s0 = 0; s0 < STEPS; s0 += U) {
        int4 lw[U][ROWS], hw[U][ROWS];
        uint2 sw[U][ROWS];
        unsigned short dw[U][ROWS];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int b = min((s0 + u) * 4 + g, NB - 1);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                lw[u][r] = __ldg(ql + (row_at[r] * NB + b) * 8 + t);
                hw[u][r] = __ldg(qh + (row_at[r] * NB + b) * 4 + 2 * hf + (t & 1));
                sw[u][r] = __ldg(reinterpret_cast<const uint2*>(sc + (row_at[r] * NB + b) * 4) + hf);
                dw[u][r] = __ldg(dh + row_at[r] * NB + b);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int b = (s0 + u) * 4 + g;
            if (s0 + u >= STEPS || b >= NB) continue;
#pragma unroll
            for (int m = 0; m < MX; ++m) {
                const int p = b * 256 + first;
                const int4 x_lo = __ldg(xq + ((long)m * NB * 256 + p) / 16);
                const int4 x_hi = __ldg(xq + ((long)m * NB * 256 + p + 64) / 16);
                const int bs_lo = __ldg(xs + (long)m * NB * 16 + p / 16);
                const int bs_hi = __ldg(xs + (long)m * NB * 16 + p / 16 + 4);
                const float dx = __ldg(xd + (long)m * NB + b);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    const int4 q_lo = make_int4(
                        (lw[u][r].x & 0x0F0F0F0F) | (((hw[u][r].x >> (2 * part)) & 0x03030303) << 4),
                        (lw[u][r].y & 0x0F0F0F0F) | (((hw[u][r].y >> (2 * part)) & 0x03030303) << 4),
                        (lw[u][r].z & 0x0F0F0F0F) | (((hw[u][r].z >> (2 * part)) & 0x03030303) << 4),
                        (lw[u][r].w & 0x0F0F0F0F) | (((hw[u][r].w >> (2 * part)) & 0x03030303) << 4));
                    const int4 q_hi = make_int4(
                        ((lw[u][r].x >> 4) & 0x0F0F0F0F) | (((hw[u][r].x >> (2 * part + 4)) & 0x03030303) << 4),
                        ((lw[u][r].y >> 4) & 0x0F0F0F0F) | (((hw[u][r].y >> (2 * part + 4)) & 0x03030303) << 4),
                        ((lw[u][r].z >> 4) & 0x0F0F0F0F) | (((hw[u][r].z >> (2 * part + 4)) & 0x03030303) << 4),
                        ((lw[u][r].w >> 4) & 0x0F0F0F0F) | (((hw[u][r].w >> (2 * part + 4)) & 0x03030303) << 4));
                    // scales 8 hf + (t % 4) (low nibbles) and 4 further (high): byte t % 4 of the half's two words
                    const int sc_lo = (int)(sw[u][r].x << (24 - 8 * (t & 3))) >> 24;
                    const int sc_hi = (int)(sw[u][r].y << (24 - 8 * (t & 3))) >> 24;
                    const int dots = sc_lo * (dot16(q_lo, x_lo) - 32 * bs_lo) + sc_hi * (dot16(q_hi, x_hi) - 32 * bs_hi);
                    acc[r][m] += dx * half_to_float(dw[u][r]) * (float)dots;
                }
            }
        }
    }
    store_rows(acc, y, row0, n);
}

// Q8_K rounding of gridDim.y activation rows (kamado.kernels.activations.round_q8_k): a warp per 256-block, 8 values a
// lane. s = 127 / max|x|, q = round-half-even(x s), d = 1 / s (a zero block: q = 0, d = 0); xs = the sum of each 16 q.
// PLANES = 2: also the remainder plane, rows gridDim.y.., r = round-half-even((x s - q) 254) (x s - q is exact), d / 254.
extern "C" __global__ void __launch_bounds__(128) quantize_q8k(const float* __restrict__ x, int stride_x,
                                                             signed char* __restrict__ xq, float* __restrict__ xd,
                                                             int* __restrict__ xs) {
    const int lane = threadIdx.x & 31;
    const int b = blockIdx.x * 4 + (threadIdx.x >> 5), m = blockIdx.y;
    if (b >= NB) return;
    const float* src = x + (long)m * stride_x + b * 256 + lane * 8;
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = src[i];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float s = amax > 0.0f ? 127.0f / amax : 0.0f;
    const float d = amax > 0.0f ? 1.0f / s : 0.0f;
#pragma unroll
    for (int plane = 0; plane < PLANES; ++plane) {
        int sum = 0;
        u32 packed[2] = {0, 0};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float scaled = v[i] * s;
            const int q = plane == 0 ? __float2int_rn(scaled) : __float2int_rn((scaled - rintf(scaled)) * 254.0f);
            sum += q;
            packed[i / 4] |= (u32)(q & 0xFF) << (8 * (i % 4));
        }
        const int row = m + plane * gridDim.y;
        u32* dst = reinterpret_cast<u32*>(xq + (long)row * NB * 256 + b * 256 + lane * 8);
        dst[0] = packed[0];
        dst[1] = packed[1];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);  // lanes 2j, 2j + 1 hold one 16-value group
        if ((lane & 1) == 0) xs[(long)row * NB * 16 + b * 16 + lane / 2] = sum;
        if (lane == 0) xd[(long)row * NB + b] = plane == 0 ? d : d / 254.0f;
    }
}
