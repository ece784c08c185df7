// Exact float emulation helpers for the parity probe (research only, not part of kamado).
// Build: gcc -O2 -mfma -ffp-contract=off -shared -fPIC faemu.c -o faemu.so -lm
#include <math.h>
#include <stdint.h>
#include <string.h>

// ggml's vectorised expf (arm optimized-routines polynomial). variant 0: scalef form (2^n * round(1 + p)),
// variant 1: older form fma(j, k, k) with k = 2^n and j = p without the 1.
static float v_expf(float x, int variant) {
    if (x == -INFINITY) return 0.0f;
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    if (variant == 0 && fabsf(n) > 192) return n <= 0 ? 0.0f : INFINITY;  // ggml's blend outside the scalef range
    if (variant == 1 && fabsf(n) > 126) return expf(x);  // 2^n not representable (not reached in the probe)
    const float p = fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f));
    if (variant == 0) {
        const float j = fmaf(p, u, fmaf(0x1.ffffecp-1f, b, 1.0f));
        return ldexpf(j, (int)n);  // _mm512_scalef_ps: one rounding, also for subnormal results
    } else {
        const float j = fmaf(p, u, 0x1.ffffecp-1f * b);
        const float k = ldexpf(1.0f, (int)n);
        return fmaf(j, k, k);
    }
}

void v_expf_array(const float *x, float *y, int n, int variant) {
    for (int i = 0; i < n; i++) y[i] = v_expf(x[i], variant);
}

// ggml_vec_swiglu_f32 on AVX-512 (16 lanes; n % 16 == 0 here): y = x / (1 + v_expf(0 - x)) * g, each step rounded.
void swiglu(const float *x, const float *g, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = x[i] / (1.0f + v_expf(0.0f - x[i], 0)) * g[i];
}

// _mm512_reduce_add_ps as GCC implements it: halves 8+8, 4+4, then (0+2),(1+3), then the two.
static float reduce16(const float *v) {
    float a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) a[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++) b[i] = a[i] + a[i + 4];
    c[0] = b[0] + b[2];
    c[1] = b[1] + b[3];
    return c[0] + c[1];
}

#define TQ 64
#define TK 64

// ggml-cpu's tiled flash attention for one head of one sequence.
// Q (nq, DK) float, K (nk, DK) float (already fp16-rounded), V (nk, DV); qpos/kpos positions; causal mask.
// opts bit0: expf variant; bit1: plain row-order sum of the 16 exp values instead of reduce16;
// bit2: exp via libm expf instead of v_expf; bit3: divide by S instead of multiplying by 1/S
void fa_tiled(const float *Q, const float *K, const float *V, const int *qpos, const int *kpos,
              int nq, int nk, int DK, int DV, float scale, float *out, int opts) {
    static float KQ[TQ * TK], VKQ[TQ * 512];
    float S[TQ], M[TQ];
    int variant = opts & 1;
    for (int iq = 0; iq < nq; iq += TQ) {
        int rows = nq - iq < TQ ? nq - iq : TQ;
        for (int t = 0; t < TQ; t++) { S[t] = 0.0f; M[t] = -INFINITY; }
        memset(VKQ, 0, sizeof(float) * TQ * DV);
        for (int ic = 0; ic < nk; ic += TK) {
            int kv = nk - ic < TK ? nk - ic : TK;
            int can_skip = 1;
            for (int t = 0; t < rows && can_skip; t++)
                for (int j = 0; j < kv; j++)
                    if (kpos[ic + j] <= qpos[iq + t]) { can_skip = 0; break; }
            if (can_skip) continue;
            for (int t = 0; t < TQ; t++) {
                for (int j = 0; j < TK; j++) {
                    float acc = 0.0f;
                    if (t < rows && j < kv) {
                        const float *q = Q + (size_t)(iq + t) * DK, *k = K + (size_t)(ic + j) * DK;
                        for (int d = 0; d < DK; d++) acc = fmaf(q[d], k[d], acc);
                    }
                    acc = acc * scale;
                    if (j >= kv) acc = -INFINITY;
                    if (t < rows) acc = acc + ((j < kv && kpos[ic + j] <= qpos[iq + t]) ? 0.0f : -INFINITY);
                    KQ[t * TK + j] = acc;
                }
            }
            int skip[TQ];
            for (int t = 0; t < TQ; t++) {
                float *row = KQ + t * TK;
                float mx = -INFINITY;
                for (int j = 0; j < TK; j++) mx = row[j] > mx ? row[j] : mx;
                skip[t] = 0;
                if (mx == -INFINITY) { skip[t] = 1; continue; }
                float Mold = M[t], Mnew = fmaxf(Mold, mx);
                if (Mnew > Mold) {
                    float ms = expf(Mold - Mnew);
                    for (int d = 0; d < DV; d++) VKQ[t * DV + d] *= ms;
                    S[t] *= ms;
                }
                M[t] = Mnew;
                double sum = 0.0;
                for (int g = 0; g < TK; g += 16) {
                    float val[16];
                    for (int i = 0; i < 16; i++) {
                        float x = row[g + i] - Mnew;
                        val[i] = (opts & 4) ? expf(x) : v_expf(x, variant);
                        row[g + i] = val[i];
                    }
                    if (opts & 2) { float s = 0; for (int i = 0; i < 16; i++) s += val[i]; sum += (double)s; }
                    else sum += (double)reduce16(val);
                }
                S[t] = (float)((double)S[t] + sum);
            }
            for (int t = 0; t < TQ; t++)
                if (skip[t]) memset(KQ + t * TK, 0, sizeof(float) * TK);
            for (int t = 0; t < rows; t++) {
                for (int d = 0; d < DV; d++) {
                    float acc = VKQ[t * DV + d];
                    for (int j = 0; j < TK; j++) {
                        float v = j < kv ? V[(size_t)(ic + j) * DV + d] : 0.0f;
                        acc = fmaf(KQ[t * TK + j], v, acc);
                    }
                    VKQ[t * DV + d] = acc;
                }
            }
        }
        for (int t = 0; t < rows; t++) {
            float inv = S[t] == 0.0f ? 0.0f : 1.0f / S[t];
            for (int d = 0; d < DV; d++)
                out[(size_t)(iq + t) * DV + d] = (opts & 8) ? VKQ[t * DV + d] / S[t] : VKQ[t * DV + d] * inv;
        }
    }
}

// ggml's rotate_pairs for NEOX rope with GCC's contraction: a' = fma(x0, c, -(x1*s)), b' = fma(x0, s, x1*c).
// mode 0: no contraction (separately rounded products), mode 1: the contraction above,
// mode 2: the other contraction a' = fma(-x1, s, x0*c), b' = fma(x1, c, x0*s).
void rope_neox(const float *x, float *y, const float *cs /*(T, half, 2)*/, int T, int H, int D, int mode) {
    int half = D / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            const float *src = x + ((size_t)t * H + h) * D;
            float *dst = y + ((size_t)t * H + h) * D;
            for (int i = 0; i < half; i++) {
                float c = cs[((size_t)t * half + i) * 2], s = cs[((size_t)t * half + i) * 2 + 1];
                float x0 = src[i], x1 = src[i + half];
                if (mode == 0) { dst[i] = x0 * c - x1 * s; dst[i + half] = x0 * s + x1 * c; }
                else if (mode == 1) { dst[i] = fmaf(x0, c, -(x1 * s)); dst[i + half] = fmaf(x0, s, x1 * c); }
                else { dst[i] = fmaf(-x1, s, x0 * c); dst[i + half] = fmaf(x1, c, x0 * s); }
            }
        }
}

void sincos_table(const float *theta, float *cs, int n) {
    for (int i = 0; i < n; i++) { cs[2 * i] = cosf(theta[i]); cs[2 * i + 1] = sinf(theta[i]); }
}

static float f16r(float x) { return (float)(_Float16)x; }

// 16-lane FMA dot product then _mm512_reduce_add_ps (llamafile tinyBLAS on AVX-512). n % 16 == 0.
static float dot16(const float *a, const float *b, int n) {
    float c[16] = {0};
    for (int l = 0; l < n; l += 16)
        for (int i = 0; i < 16; i++) c[i] = fmaf(a[l + i], b[l + i], c[i]);
    return reduce16(c);
}

// llama.cpp without flash attention: KQ = mul_mat(K f16, fp16(Q)), soft_max_ext over n_kv (groups of 16),
// KQV = mul_mat(V^T f16, fp16(P)). nkv: row length of the mask/cache view (>= nk, multiple of 16).
// opts bit0: expf variant; bit4: keep Q in float32; bit5: keep P in float32
void attn_nofa(const float *Q, const float *K, const float *V, const int *qpos, const int *kpos,
               int nq, int nk, int nkv, int DK, int DV, float scale, float *out, int opts) {
    static float qh[512], row[4096], vt[512 * 4096];
    for (int d = 0; d < DV; d++)
        for (int j = 0; j < nkv; j++) vt[(size_t)d * nkv + j] = j < nk ? V[(size_t)j * DV + d] : 0.0f;
    for (int t = 0; t < nq; t++) {
        for (int d = 0; d < DK; d++) qh[d] = (opts & 16) ? Q[(size_t)t * DK + d] : f16r(Q[(size_t)t * DK + d]);
        float mx = -INFINITY;
        for (int j = 0; j < nkv; j++) {
            float s = j < nk ? dot16(K + (size_t)j * DK, qh, DK) : 0.0f;
            s = s * scale;
            s = s + ((j < nk && kpos[j] <= qpos[t]) ? 0.0f : -INFINITY);
            row[j] = s;
            mx = s > mx ? s : mx;
        }
        double sum = 0.0;
        for (int g = 0; g < nkv; g += 16) {
            float val[16];
            for (int i = 0; i < 16; i++) { val[i] = v_expf(row[g + i] - mx, opts & 1); row[g + i] = val[i]; }
            sum += (double)reduce16(val);
        }
        sum = 1.0 / sum;
        float fs = (float)sum;
        for (int j = 0; j < nkv; j++) { row[j] *= fs; if (!(opts & 32)) row[j] = f16r(row[j]); }
        for (int d = 0; d < DV; d++) out[(size_t)t * DV + d] = dot16(vt + (size_t)d * nkv, row, nkv);
    }
}

// ggml_vec_dot_f16 on AVX-512: 4 accumulators x 16 lanes over steps of 64, then (0+2),(1+3), (0+1), reduce16.
static float dot_f16_avx512(const float *x, const float *y, int n) {
    float acc[4][16] = {{0}};
    for (int i = 0; i < n; i += 64)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 16; l++) acc[j][l] = fmaf(x[i + 16 * j + l], y[i + 16 * j + l], acc[j][l]);
    for (int l = 0; l < 16; l++) { acc[0][l] += acc[2][l]; acc[1][l] += acc[3][l]; }
    for (int l = 0; l < 16; l++) acc[0][l] += acc[1][l];
    return (float)(double)reduce16(acc[0]);
}

// ggml-cpu's one-row flash attention (ggml_compute_forward_flash_attn_ext_f16_one_chunk) for F16 K/V, one query
// row qh (fp16-rounded) over the cells j0..j1-1: running max M, sum S and the V accumulator acc (not yet divided).
// opts bit0: S = S*ms + vs contracted to fmaf; bit1: keep the V accumulator in float (not fp16)
static void onechunk_row(const float *qh, const float *K, const float *V, const int *kpos, int qp, int j0, int j1,
                         int DK, int DV, float scale, int opts, float *Mp, float *Sp, float *acc) {
    float M = -INFINITY, S = 0.0f;
    for (int d = 0; d < DV; d++) acc[d] = 0.0f;
    for (int j = j0; j < j1; j++) {
        if (kpos[j] > qp) continue;
        float s = dot_f16_avx512(K + (size_t)j * DK, qh, DK);
        s = s * scale;
        s += 0.0f;
        float Mold = M, ms = 1.0f, vs = 1.0f;
        if (s > M) {
            M = s;
            ms = expf(Mold - M);
            for (int d = 0; d < DV; d++) acc[d] = (opts & 2) ? acc[d] * ms : f16r(acc[d] * ms);
        } else {
            vs = expf(s - M);
        }
        for (int d = 0; d < DV; d++) {
            float r = fmaf(V[(size_t)j * DV + d], vs, acc[d]);
            acc[d] = (opts & 2) ? r : f16r(r);
        }
        S = (opts & 1) ? fmaf(S, ms, vs) : S * ms + vs;
    }
    *Mp = M;
    *Sp = S;
}

void fa_onechunk(const float *Q, const float *K, const float *V, const int *qpos, const int *kpos,
                 int nq, int nk, int DK, int DV, float scale, float *out, int opts) {
    float qh[512], acc[512], M, S;
    for (int t = 0; t < nq; t++) {
        for (int d = 0; d < DK; d++) qh[d] = f16r(Q[(size_t)t * DK + d]);
        onechunk_row(qh, K, V, kpos, qpos[t], 0, nk, DK, DV, scale, opts, &M, &S, acc);
        float inv = S == 0.0f ? 0.0f : 1.0f / S;
        for (int d = 0; d < DV; d++) out[(size_t)t * DV + d] = acc[d] * inv;
    }
}

// The split-KV path (one query row, >= 512 cells in the KV view): the n_kv cells are cut into nth chunks of
// ceil(n_kv / nth), each runs the one-row kernel to a partial (M, S, acc), and ggml_flash_attn_ext_reduce_partials
// merges them in chunk order: VKQ = VKQ*so + VKQc*sn, S = S*so + Sc*sn (so, sn = expf of the max differences), then
// VKQ * (1/S). Cells >= nk (the padded, masked part of the view) are skipped like masked ones.
// opts bits 0-1 as fa_onechunk; bits 2-3: reduce contraction 0 none, 1 fmaf(a, so, b*sn), 2 fmaf(b, sn, a*so).
void fa_splitkv(const float *Q, const int *kpos, const float *K, const float *V, int qp, int nk, int n_kv, int nth,
                int DK, int DV, float scale, float *out, int opts) {
    float qh[512], acc[512], vkq[512], M, S;
    for (int d = 0; d < DK; d++) qh[d] = f16r(Q[d]);
    for (int d = 0; d < DV; d++) vkq[d] = 0.0f;
    float Mf = -INFINITY, Sf = 0.0f;
    int cs = (n_kv + nth - 1) / nth, red = (opts >> 2) & 3;
    for (int c = 0; c < nth; c++) {
        int j0 = c * cs, j1 = j0 + cs < n_kv ? j0 + cs : n_kv;
        if (j0 >= n_kv) continue;
        onechunk_row(qh, K, V, kpos, qp, j0 < nk ? j0 : nk, j1 < nk ? j1 : nk, DK, DV, scale, opts, &M, &S, acc);
        if (S == 0.0f) continue;
        float Mn = fmaxf(Mf, M), so = expf(Mf - Mn), sn = expf(M - Mn);
        for (int d = 0; d < DV; d++)
            vkq[d] = red == 0 ? vkq[d] * so + acc[d] * sn : red == 1 ? fmaf(vkq[d], so, acc[d] * sn) : fmaf(acc[d], sn, vkq[d] * so);
        Sf = red == 0 ? Sf * so + S * sn : red == 1 ? fmaf(Sf, so, S * sn) : fmaf(S, sn, Sf * so);
        Mf = Mn;
    }
    float inv = Sf == 0.0f ? 0.0f : 1.0f / Sf;
    for (int d = 0; d < DV; d++) out[d] = vkq[d] * inv;
}
