// Scalar transcriptions of ggml-cpu's x86 (AVX2 path) k-quant dot products, for the parity probe.
// Build: gcc -O2 -mfma -mf16c -ffp-contract=off -shared -fPIC kquants.c -o kquants.so -lm
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

static float h2f(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); _Float16 f; memcpy(&f, &h, 2); return (float)f; }

static int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i; memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

// quantize_row_q8_K_ref: one row of n (multiple of 256) -> qs (n), d (n/256), bsums (n/16)
void quantize_q8K(const float *x, int n, int8_t *qs, float *d, int16_t *bsums) {
    for (int i = 0; i < n / 256; i++, x += 256) {
        float max = 0, amax = 0;
        for (int j = 0; j < 256; j++) { float ax = fabsf(x[j]); if (ax > amax) { amax = ax; max = x[j]; } }
        if (!amax) { d[i] = 0; memset(qs + 256 * i, 0, 256); memset(bsums + 16 * i, 0, 32); continue; }
        const float iscale = -127.f / max;
        for (int j = 0; j < 256; j++) { int v = nearest_int(iscale * x[j]); qs[256 * i + j] = v < 127 ? v : 127; }
        for (int j = 0; j < 16; j++) { int s = 0; for (int k = 0; k < 16; k++) s += qs[256 * i + 16 * j + k]; bsums[16 * i + j] = s; }
        d[i] = 1 / iscale;
    }
}

static float hsum8(const float *a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

static void scale_min_k4(const uint8_t *q, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) { sc[j] = q[j] & 63; mn[j] = q[j + 4] & 63; }
        else { sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
    }
}

// ggml_vec_dot_q4_K_q8_K, AVX2 branch
static float dot_q4K(const uint8_t *w, const int8_t *q8, const float *yd, const int16_t *bsums, int nb) {
    float acc[8] = {0}, accm[4] = {0};
    for (int i = 0; i < nb; i++, w += 144, q8 += 256, bsums += 16) {
        const float d = yd[i] * h2f(w);
        const float dmin = -yd[i] * h2f(w + 2);
        uint8_t sc[8], mn[8];
        scale_min_k4(w + 4, sc, mn);
        int q8s[8];
        for (int g = 0; g < 8; g++) q8s[g] = bsums[2 * g] + bsums[2 * g + 1];
        for (int l = 0; l < 4; l++) accm[l] = fmaf(dmin, (float)(mn[2 * l] * q8s[2 * l] + mn[2 * l + 1] * q8s[2 * l + 1]), accm[l]);
        int sumi[8] = {0};
        const uint8_t *qs = w + 16;
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 8; k++) {
                int lo = 0, hi = 0;
                for (int b = 4 * k; b < 4 * k + 4; b++) {
                    lo += (qs[32 * j + b] & 0xF) * q8[64 * j + b];
                    hi += (qs[32 * j + b] >> 4) * q8[64 * j + 32 + b];
                }
                sumi[k] += sc[2 * j] * lo + sc[2 * j + 1] * hi;
            }
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)sumi[k], acc[k]);
    }
    float m = (accm[0] + accm[2]) + (accm[1] + accm[3]);
    return hsum8(acc) + m;
}

// ggml_vec_dot_q6_K_q8_K, AVX2 branch (also what an AVX-512 build runs: there is no AVX-512 Q6_K kernel, and x86
// has no Q6_K repack). The 6-bit quants enter the integer dot UNSIGNED (0..63, maddubs); the -32 offset is taken off
// afterwards per lane: lane k (elements 4k..4k+3 of every 32-element chunk) subtracts 32*(bsums[2k]*sc[2k] +
// bsums[2k+1]*sc[2k+1]), i.e. the offset of elements 32k..32k+31. The per-lane integers therefore differ from a
// signed-quant lane split (same total), and so do the float roundings of acc[k] = fma(d, float(sumi[k]), acc[k]).
// signed_lanes = 1: the earlier (wrong) transcription with q - 32 inside each lane.
static float dot_q6K(const uint8_t *w, const int8_t *q8, const float *yd, const int16_t *bsums, int nb, int signed_lanes) {
    float acc[8] = {0};
    for (int i = 0; i < nb; i++, w += 210, q8 += 256, bsums += 16) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *scales = (const int8_t *)(w + 192);
        const float d = yd[i] * h2f(w + 208);
        int sumi[8] = {0};
        for (int j = 0; j < 2; j++) {
            for (int c = 0; c < 4; c++) {  // 32-element chunk c of this 128 half
                for (int e = 0; e < 32; e++) {
                    int low = (c & 1) ? ql[64 * j + 32 + e] : ql[64 * j + e];
                    low = (c >= 2) ? (low >> 4) : (low & 0xF);
                    int high = (qh[32 * j + e] >> (2 * c)) & 3;
                    int q = (low | (high << 4)) - (signed_lanes ? 32 : 0);
                    int s = scales[8 * j + 2 * c + (e >= 16)];
                    sumi[(e % 32) / 4] += s * q * q8[128 * j + 32 * c + e];
                }
            }
        }
        if (!signed_lanes)
            for (int k = 0; k < 8; k++) sumi[k] -= 32 * (bsums[2 * k] * scales[2 * k] + bsums[2 * k + 1] * scales[2 * k + 1]);
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)sumi[k], acc[k]);
    }
    return hsum8(acc);
}

// repacked q4_K_8x8 GEMM (AVX2/AVX-512): per output, acc = fma(float(sum_s sc_s*dot_s), d_w*d_a, acc) and
// accm = fma(float(sum_s mn_s*bsum_s), dmin_w*d_a, accm) over super-blocks, result acc - accm.
// variant 2: AMX order, one accumulator: c = fma(sumi, d_a*d_w, c); c = fma(mins, -(d_a*dmin_w), c)
static float dot_q4K_2acc(const uint8_t *w, const int8_t *q8, const float *yd, int nb, int variant) {
    float acc = 0, accm = 0;
    for (int i = 0; i < nb; i++, w += 144, q8 += 256) {
        uint8_t sc[8], mn[8];
        scale_min_k4(w + 4, sc, mn);
        int isum = 0, imin = 0;
        const uint8_t *qs = w + 16;
        if (variant == 3) {  // repack, one fma per pair of sub-blocks (AVX-512 gemm q4_K_8x8)
            for (int p = 0; p < 4; p++) {
                int ps = 0, pm = 0;
                for (int s = 2 * p; s < 2 * p + 2; s++) {
                    int dot = 0, bsum = 0;
                    for (int e = 0; e < 32; e++) {
                        int q = (s & 1) ? (qs[32 * (s / 2) + e] >> 4) : (qs[32 * (s / 2) + e] & 0xF);
                        dot += q * q8[32 * s + e];
                        bsum += q8[32 * s + e];
                    }
                    ps += sc[s] * dot;
                    pm += mn[s] * bsum;
                }
                acc = fmaf((float)ps, h2f(w) * yd[i], acc);
                accm = fmaf((float)pm, h2f(w + 2) * yd[i], accm);
            }
            continue;
        }
        for (int s = 0; s < 8; s++) {
            int dot = 0, bsum = 0;
            for (int e = 0; e < 32; e++) {
                int q = (s & 1) ? (qs[32 * (s / 2) + e] >> 4) : (qs[32 * (s / 2) + e] & 0xF);
                dot += q * q8[32 * s + e];
                bsum += q8[32 * s + e];
            }
            isum += sc[s] * dot;
            imin += mn[s] * bsum;
        }
        if (variant == 1) {
            acc = fmaf((float)isum, h2f(w) * yd[i], acc);
            accm = fmaf((float)imin, h2f(w + 2) * yd[i], accm);
        } else {
            acc = fmaf((float)isum, yd[i] * h2f(w), acc);
            acc = fmaf((float)imin, -(yd[i] * h2f(w + 2)), acc);
        }
    }
    return variant == 2 ? acc : acc - accm;
}

// y (M, N) = x (M, K) @ W^T with W's raw rows (N, row_bytes); qtype 12 = Q4_K, 14 = Q6_K (variant 1: signed lanes)
void matmul_k(const float *x, const uint8_t *w, int M, int N, int K, int qtype, float *y, int variant) {
    int nb = K / 256;
    int8_t qs[8192]; float d[32]; int16_t bs[512];
    size_t rb = (size_t)nb * (qtype == 12 ? 144 : 210);
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, qs, d, bs);
        for (int n = 0; n < N; n++)
            y[(size_t)m * N + n] = qtype == 12 ? (variant ? dot_q4K_2acc(w + n * rb, qs, d, nb, variant) : dot_q4K(w + n * rb, qs, d, bs, nb))
                                               : dot_q6K(w + n * rb, qs, d, bs, nb, variant);
    }
}

// ggml's fp16 GELU table entry for every fp16 bit pattern; mode 0: no contraction, 1: GCC-style fma contraction
void gelu_table(uint16_t *out, int mode) {
    const float SQRT_2_OVER_PI = 0.79788456080286535587989211986876f, GELU_COEF_A = 0.044715f;
    for (int i = 0; i < 65536; i++) {
        uint16_t h = i; _Float16 f; memcpy(&f, &h, 2); float x = (float)f;
        float r;
        if (mode == 0) r = 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * (1.0f + GELU_COEF_A * x * x)));
        else r = 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * fmaf(GELU_COEF_A * x, x, 1.0f)));
        _Float16 o = (_Float16)r; memcpy(&out[i], &o, 2);
    }
}

// Generic grid for the Q4_K float structure: scale sums grouped by gs sub-blocks, min sums by gm sub-blocks,
// sep: separate min accumulator subtracted at the end (1) or one accumulator (0, mins added with negative scale).
void matmul_q4K_grid(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int gs, int gm, int sep) {
    int nb = K / 256;
    int8_t q8all[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8all, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 144;
            const int8_t *q8 = q8all;
            float acc = 0, accm = 0;
            for (int i = 0; i < nb; i++, w += 144, q8 += 256) {
                uint8_t sc[8], mn[8];
                scale_min_k4(w + 4, sc, mn);
                int dots[8], bsum[8];
                const uint8_t *qs = w + 16;
                for (int s = 0; s < 8; s++) {
                    int dot = 0, b = 0;
                    for (int e = 0; e < 32; e++) {
                        int q = (s & 1) ? (qs[32 * (s / 2) + e] >> 4) : (qs[32 * (s / 2) + e] & 0xF);
                        dot += q * q8[32 * s + e]; b += q8[32 * s + e];
                    }
                    dots[s] = dot; bsum[s] = b;
                }
                float dd = h2f(w) * yd[i], dm = h2f(w + 2) * yd[i];
                for (int g = 0; g < 8; g += gs) {
                    int ps = 0; for (int s = g; s < g + gs; s++) ps += sc[s] * dots[s];
                    acc = fmaf((float)ps, dd, acc);
                    if (!sep && gm == gs) { int pm = 0; for (int s = g; s < g + gm; s++) pm += mn[s] * bsum[s]; acc = fmaf((float)pm, -dm, acc); }
                }
                if (sep || gm != gs)
                    for (int g = 0; g < 8; g += gm) {
                        int pm = 0; for (int s = g; s < g + gm; s++) pm += mn[s] * bsum[s];
                        if (sep) accm = fmaf((float)pm, dm, accm); else acc = fmaf((float)pm, -dm, acc);
                    }
            }
            y[(size_t)m * N + n] = sep ? acc - accm : acc;
        }
    }
}

// quantize_row_q8_0 (x86 AVX path): per 32: amax, d = fp16(amax/127), id = 127/amax, q = round-half-even(x*id)
static void quantize_q8_0(const float *x, int n, int8_t *q, float *d) {
    for (int b = 0; b < n / 32; b++, x += 32) {
        float amax = 0;
        for (int j = 0; j < 32; j++) { float a = fabsf(x[j]); amax = a > amax ? a : amax; }
        const float dd = amax / 127.f;
        d[b] = (float)(_Float16)dd;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        for (int j = 0; j < 32; j++) q[32 * b + j] = (int8_t)nearbyintf(x[j] * id);
    }
}

// Q4_0 / Q5_0 / Q8_0 (qtype 2 / 6 / 8) x Q8_0 activations, ggml's 8-lane order (vec_dot_*_q8_0 AVX2, tinyBLAS_Q0_AVX):
// lane j holds the int dot of elements 4j..4j+3 of each block; acc[j] = fma(d_w*d_x, dot, acc[j]); hsum8 at the end.
void matmul_legacy(const float *x, const uint8_t *w0, int M, int N, int K, int qtype, float *y) {
    int nb = K / 32;
    int bsz = qtype == 8 ? 34 : qtype == 6 ? 22 : 18;
    int8_t *wq = malloc((size_t)N * K); float *wd = malloc(sizeof(float) * N * nb);
    int8_t *xq = malloc(K); float *xd = malloc(sizeof(float) * nb);
    for (int n = 0; n < N; n++)
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = w0 + ((size_t)n * nb + b) * bsz;
            wd[n * nb + b] = h2f(blk);
            for (int j = 0; j < 32; j++) {
                int v;
                if (qtype == 8) v = (int8_t)blk[2 + j];
                else if (qtype == 2) v = (j < 16 ? (blk[2 + j] & 0xF) : (blk[2 + j - 16] >> 4)) - 8;
                else {
                    uint32_t qh; memcpy(&qh, blk + 2, 4);
                    int lo = j < 16 ? (blk[6 + j] & 0xF) : (blk[6 + j - 16] >> 4);
                    v = (lo | (((qh >> j) & 1) << 4)) - 16;
                }
                wq[(size_t)n * K + 32 * b + j] = v;
            }
        }
    for (int m = 0; m < M; m++) {
        quantize_q8_0(x + (size_t)m * K, K, xq, xd);
        for (int n = 0; n < N; n++) {
            const int8_t *w = wq + (size_t)n * K;
            float acc[8] = {0};
            for (int b = 0; b < nb; b++) {
                const float s = wd[n * nb + b] * xd[b];
                int dots[8];
                for (int l = 0; l < 8; l++) {
                    int dot = 0;
                    for (int e = 4 * l; e < 4 * l + 4; e++) dot += w[32 * b + e] * xq[32 * b + e];
                    dots[l] = dot;
                }
                for (int l = 0; l < 8; l++) acc[l] = fmaf(s, (float)dots[l], acc[l]);
            }
            y[(size_t)m * N + n] = hsum8(acc);
        }
    }
    free(wq); free(wd); free(xq); free(xd);
}

// Q6_K float-structure variants. variant 1: one accumulator, one fma per super-block with the whole int sum;
// variant 2: per 16-element group fma (d*scale) ... ; 3: 8 lanes but lane = element e%8*?; 4: exact double
void matmul_q6K_var(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int variant) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float acc = 0; double dacc = 0;
            for (int i = 0; i < nb; i++, w += 210) {
                const uint8_t *ql = w, *qh = w + 128;
                const int8_t *scales = (const int8_t *)(w + 192);
                const float d = yd[i] * h2f(w + 208);
                int isum = 0;
                for (int e = 0; e < 256; e++) {
                    int j = e / 128, r = e % 128, c = r / 32, t = r % 32;
                    int low = (c & 1) ? ql[64 * j + 32 + t] : ql[64 * j + t];
                    low = (c >= 2) ? (low >> 4) : (low & 0xF);
                    int high = (qh[32 * j + t] >> (2 * c)) & 3;
                    int q = (low | (high << 4)) - 32;
                    isum += scales[e / 16] * q * q8[256 * i + e];
                }
                if (variant == 1) acc = fmaf(d, (float)isum, acc);
                else if (variant == 5) acc = acc + d * (float)isum;
                else dacc += (double)d * isum;
            }
            y[(size_t)m * N + n] = (variant == 4) ? (float)dacc : acc;
        }
    }
}

static float reduce_halves(float *a, int n) {  // n lanes: a[i] += a[i+n/2] repeatedly (GCC _mm512/_mm256 reduce order)
    float t[16]; memcpy(t, a, sizeof(float) * n);
    while (n > 2) { n /= 2; for (int i = 0; i < n; i++) t[i] = t[i] + t[i + n]; }
    return t[0] + t[1];
}

// Q6_K with L lanes, lane(e) = (e % (4L)) / 4, acc[l] = fma(d, isum_l, acc[l]) per super-block; red 0: hsum8 (L=8 only), 1: halves
void matmul_q6K_lanes(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int L, int red) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float acc[16] = {0};
            for (int i = 0; i < nb; i++, w += 210) {
                const uint8_t *ql = w, *qh = w + 128;
                const int8_t *scales = (const int8_t *)(w + 192);
                const float d = yd[i] * h2f(w + 208);
                int isum[16] = {0};
                for (int e = 0; e < 256; e++) {
                    int j = e / 128, r = e % 128, c = r / 32, t = r % 32;
                    int low = (c & 1) ? ql[64 * j + 32 + t] : ql[64 * j + t];
                    low = (c >= 2) ? (low >> 4) : (low & 0xF);
                    int high = (qh[32 * j + t] >> (2 * c)) & 3;
                    int q = (low | (high << 4)) - 32;
                    isum[(e % (4 * L)) / 4] += scales[e / 16] * q * q8[256 * i + e];
                }
                for (int l = 0; l < L; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
            }
            y[(size_t)m * N + n] = (L == 8 && red == 0) ? hsum8(acc) : reduce_halves(acc, L);
        }
    }
}

// Q6_K, one accumulator per output, one fma per group of G elements (G in 16..256)
void matmul_q6K_groups(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int G) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float acc = 0;
            for (int i = 0; i < nb; i++, w += 210) {
                const uint8_t *ql = w, *qh = w + 128;
                const int8_t *scales = (const int8_t *)(w + 192);
                const float d = h2f(w + 208) * yd[i];
                int isum = 0;
                for (int e = 0; e < 256; e++) {
                    int j = e / 128, r = e % 128, c = r / 32, t = r % 32;
                    int low = (c & 1) ? ql[64 * j + 32 + t] : ql[64 * j + t];
                    low = (c >= 2) ? (low >> 4) : (low & 0xF);
                    int high = (qh[32 * j + t] >> (2 * c)) & 3;
                    int q = (low | (high << 4)) - 32;
                    isum += scales[e / 16] * q * q8[256 * i + e];
                    if ((e + 1) % G == 0) { acc = fmaf((float)isum, d, acc); isum = 0; }
                }
            }
            y[(size_t)m * N + n] = acc;
        }
    }
}

// Q6_K generic C (ggml_vec_dot_q6_K_q8_K_generic): lane l = e % 8, sums[l] += d*aux32[l] (fma if contract), sequential final sum
void matmul_q6K_generic(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int contract) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float sums[8] = {0};
            for (int i = 0; i < nb; i++, w += 210) {
                const uint8_t *ql = w, *qh = w + 128;
                const int8_t *scales = (const int8_t *)(w + 192);
                int aux32[8] = {0};
                for (int e = 0; e < 256; e++) {
                    int j = e / 128, r = e % 128, c = r / 32, t = r % 32;
                    int low = (c & 1) ? ql[64 * j + 32 + t] : ql[64 * j + t];
                    low = (c >= 2) ? (low >> 4) : (low & 0xF);
                    int high = (qh[32 * j + t] >> (2 * c)) & 3;
                    int q = (low | (high << 4)) - 32;
                    aux32[e % 8] += scales[e / 16] * (q * q8[256 * i + e]);
                }
                const float d = h2f(w + 208) * yd[i];
                for (int l = 0; l < 8; l++) sums[l] = contract ? fmaf(d, (float)aux32[l], sums[l]) : sums[l] + d * (float)aux32[l];
            }
            float s = 0;
            for (int l = 0; l < 8; l++) s += sums[l];
            y[(size_t)m * N + n] = s;
        }
    }
}

// Q6_K search space: L lanes; lane map mode 0: (e % (4L))/4, 1: e % L, 2: (e/4) % L, 3: (e % 32)/4 + 8*((e/32)%2) (L=16);
// fma granularity: per super-block (gran 256) or per 128 (gran 128) or per 64; red 0: halves, 1: sequential, 2: pairs (a0+a1)+(a2+a3)...
static int q6_nofma = 0;
void set_q6_nofma(int v) { q6_nofma = v; }
void matmul_q6K_search(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int L, int map, int gran, int red) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float acc[32] = {0};
            for (int i = 0; i < nb; i++, w += 210) {
                const uint8_t *ql = w, *qh = w + 128;
                const int8_t *scales = (const int8_t *)(w + 192);
                const float d = yd[i] * h2f(w + 208);
                int isum[32] = {0};
                for (int e = 0; e < 256; e++) {
                    int j = e / 128, r = e % 128, c = r / 32, t = r % 32;
                    int low = (c & 1) ? ql[64 * j + 32 + t] : ql[64 * j + t];
                    low = (c >= 2) ? (low >> 4) : (low & 0xF);
                    int high = (qh[32 * j + t] >> (2 * c)) & 3;
                    int q = (low | (high << 4)) - 32;
                    int lane = map == 0 ? (e % (4 * L)) / 4 : map == 1 ? e % L : map == 2 ? (e / 4) % L : (e % 32) / 4 + 8 * ((e / 32) % 2);
                    isum[lane] += scales[e / 16] * q * q8[256 * i + e];
                    if ((e + 1) % gran == 0) {
                        for (int l = 0; l < L; l++) { acc[l] = q6_nofma ? acc[l] + d * (float)isum[l] : fmaf(d, (float)isum[l], acc[l]); isum[l] = 0; }
                    }
                }
            }
            float s;
            if (red == 0) s = reduce_halves(acc, L);
            else if (red == 1) { s = 0; for (int l = 0; l < L; l++) s += acc[l]; }
            else { float t[32]; memcpy(t, acc, sizeof(t)); int n2 = L; while (n2 > 1) { for (int l = 0; l < n2 / 2; l++) t[l] = t[2 * l] + t[2 * l + 1]; n2 /= 2; } s = t[0]; }
            y[(size_t)m * N + n] = s;
        }
    }
}

static int q6_at(const uint8_t *w, int e) {  // signed 6-bit quant of element e of one Q6_K block
    const uint8_t *ql = w, *qh = w + 128;
    int j = e / 128, r = e % 128, c = r / 32, t = r % 32;
    int low = (c & 1) ? ql[64 * j + 32 + t] : ql[64 * j + t];
    low = (c >= 2) ? (low >> 4) : (low & 0xF);
    return (low | (((qh[32 * j + t] >> (2 * c)) & 3) << 4)) - 32;
}

// Q6_K as the generic repacked GEMM (ggml_gemm_q6_K_NxM_q8_K_generic_impl<8,8>) computes it: per step k of 8 low and
// 8 high elements, sumf += (sumi_l*sc_l + sumi_h*sc_h) * d_w * d_a. mode 0: fma((float)isum*dw, da, sumf), 1: no fma
void matmul_q6K_genrepack(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int mode) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float sumf = 0;
            for (int i = 0; i < nb; i++, w += 210) {
                const int8_t *scales = (const int8_t *)(w + 192);
                const float dw = h2f(w + 208);
                for (int k = 0; k < 16; k++) {
                    int bl = (k / 8) * 128 + (k % 8) * 8, bh = bl + 64, sl = 0, sh = 0;
                    for (int t = 0; t < 8; t++) {
                        sl += q6_at(w, bl + t) * q8[256 * i + bl + t];
                        sh += q6_at(w, bh + t) * q8[256 * i + bh + t];
                    }
                    int isum = sl * scales[bl / 16] + sh * scales[bh / 16];
                    if (mode == 0) sumf = fmaf((float)isum * dw, yd[i], sumf);
                    else sumf = sumf + (float)isum * dw * yd[i];
                }
            }
            y[(size_t)m * N + n] = sumf;
        }
    }
}

// Q6_K AVX2 lanes with A interleaved accumulators (super-block i goes to acc[i % A]), combined pairwise at the end
void matmul_q6K_multiacc(const float *x, const uint8_t *w0, int M, int N, int K, float *y, int A, int comb) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float acc[4][8] = {{0}};
            for (int i = 0; i < nb; i++, w += 210) {
                const int8_t *scales = (const int8_t *)(w + 192);
                const float d = yd[i] * h2f(w + 208);
                int isum[8] = {0};
                for (int e = 0; e < 256; e++) isum[(e % 32) / 4] += scales[e / 16] * q6_at(w, e) * q8[256 * i + e];
                for (int l = 0; l < 8; l++) acc[i % A][l] = fmaf(d, (float)isum[l], acc[i % A][l]);
            }
            float t[8];
            for (int l = 0; l < 8; l++) {
                if (A == 1) t[l] = acc[0][l];
                else if (A == 2) t[l] = acc[0][l] + acc[1][l];
                else t[l] = comb ? (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]) : ((acc[0][l] + acc[1][l]) + acc[2][l]) + acc[3][l];
            }
            y[(size_t)m * N + n] = hsum8(t);
        }
    }
}

// ggml-cpu "tiled" K-quant matmul (tiled/tiled-kernel.cpp, VNNI microtile), no-min types: per 256-block,
// result = float(isum) * d_w; acc = acc + result * d_a (two products and a sum, each rounded, no fma)
void matmul_q6K_tiled(const float *x, const uint8_t *w0, int M, int N, int K, float *y) {
    int nb = K / 256;
    int8_t q8[8192]; float yd[32]; int16_t bs[512];
    for (int m = 0; m < M; m++) {
        quantize_q8K(x + (size_t)m * K, K, q8, yd, bs);
        for (int n = 0; n < N; n++) {
            const uint8_t *w = w0 + (size_t)n * nb * 210;
            float acc = 0;
            for (int i = 0; i < nb; i++, w += 210) {
                const int8_t *scales = (const int8_t *)(w + 192);
                int isum = 0;
                for (int e = 0; e < 256; e++) isum += scales[e / 16] * q6_at(w, e) * q8[256 * i + e];
                const float result = (float)isum * h2f(w + 208);
                acc = acc + result * yd[i];
            }
            y[(size_t)m * N + n] = acc;
        }
    }
}
