/* CLEAR local-window attention for image queries on CPU (fp32, inference).
 *
 * An image query (y, x) attends to all T text keys plus the image keys (y+dy, x+dx) with dy² + dx² < r². For a
 * fixed dy those keys are one contiguous run of grid row y+dy, [x - w(dy), x + w(dy)] clipped to the grid, so
 * the kernel walks the window row by row instead of masking a square halo. Two horizontally adjacent queries
 * are handled together: their runs overlap in all but one key, so every key vector loaded from cache feeds
 * two queries (for r ≤ 8 the pair's run is ≤ 16 keys: one AVX-512 vector, or two AVX2 ones, per window row).
 *
 * Layouts (fp32; BH = batch·heads; L = T + H·W tokens; D a multiple of 16):
 *   q, out (B, heads, L, D) any strides but a unit one for D: the caller's own tensors, so no copies
 *   v      (B, heads, L, D) likewise
 *   kt     (BH, H, D, Wp)  image keys with each grid row transposed, so VL neighbouring keys are one vector
 *                          load; Wp ≥ W + 16 (zero padding) so a load never leaves the row
 *   ktxt   (BH, D, Tp)     text keys transposed, Tp ≥ T + 16
 *   half   (2R + 1)        w(dy) for dy = -R..R
 *   cls    (B, H·W) int32  each image query's routing class, or NULL: every query reads every text key
 *   tmask  (B, C, Tp) int32 per class, -1 for a text key it reads and 0 for one it does not (lane masks)
 * Only the image rows of out are written; the caller does the text queries.
 * Work items are (bh, grid row) pairs, taken atomically by `threads` OpenMP threads (pthreads without it).
 *
 * The vector type is exactly one native register (VL lanes): GCC lowers a wider generic vector through the
 * stack, which made the kernel 20x slower on AVX2 than its FLOP share when it used 16-lane vectors everywhere.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef VL /* set on the command line: the tests build every width on one machine */
#elif defined(__AVX512F__)
#define VL 16 /* lanes per register; also keys per chunk: one contiguous run of a grid row (or of the text) */
#define VB 8  /* value-pass block: 2 × 8 accumulators of 32 registers */
#elif defined(__AVX__)
#define VL 8
#define VB 4  /* 2 × 4 accumulators of 16 registers */
#else
#define VL 4  /* SSE, NEON */
#define VB 4
#endif
#ifndef VB
#define VB 4
#endif
#define GROUP 4 /* chunks scored together: 4 chunks × 2 queries = 8 independent FMA chains */
#define PAD 16  /* what the caller pads D, T and W by (keep in sync with LANES in local_attention.py) */

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));

typedef int32_t viu __attribute__((vector_size(VL * 4), aligned(4)));

static inline vf loadv(const float *p) { return *(const vfu *)p; }
static inline vi loadvi(const int32_t *p) { return *(const viu *)p; }
static inline vf selectv(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf splat(float x) { return (vf){} + x; }

typedef struct {
    const float *k, *v; /* first key column (transposed keys) and first value row of the chunk */
    int64_t ld;         /* stride between head dims in k */
    int32_t lo[2], hi[2]; /* lanes valid for query 0 / query 1 (inclusive; lo > hi: none) */
    int32_t n;          /* lanes valid for either query: the value rows to read */
} Chunk;

typedef struct {
    const float *q, *v, *kt, *ktxt;
    float *out;
    const int64_t *st; /* strides of q, v, out in floats: batch, head, token */
    const int32_t *half;
    const int32_t *cls, *tmask; /* routing (NULL: none): class per image query, text lane masks per class */
    float scale;
    int64_t heads, BH, H, W, D, T, Tp, Wp, R, C, max_chunks; /* max_chunks: a query pair's chunk list, at most */
    int64_t pair;  /* 1: two queries per pass (the default); 0: one, to measure what pairing buys */
    int64_t next;  /* next work item (bh·H + y) */
    int failed;    /* a worker could not allocate its buffers */
} Args;

/* exp(x) for x ≤ 0 (softmax after subtracting the max): Cephes' expf polynomial, 2^n through the exponent
   bits, round-to-nearest by the 1.5·2²³ trick. Relative error ≈ 1e-7. */
static inline vf exp_nonpos(vf x) {
    x = selectv(x < -87.0f, splat(-87.0f), x);
    x = selectv(x > 0.0f, splat(0.0f), x);
    const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)bits;
}

static inline float hmax(vf x) {
    float m = x[0];
    for (int j = 1; j < VL; ++j) m = x[j] > m ? x[j] : m;
    return m;
}

static inline float hsum(vf x) {
    float s = 0.0f;
    for (int j = 0; j < VL; ++j) s += x[j];
    return s;
}

/* Scores of queries q0, q1 against G chunks: s[i][c] (VL lanes) = scale · Σ_d q_i[d] · k_c[d·ld_c + lane]. */
static inline __attribute__((always_inline)) void score_group(const float *q0, const float *q1, const Chunk *ch,
                                                              const int G, const int64_t D, const float scale,
                                                              vf *s0, vf *s1) {
    vf a[GROUP] = {}, b[GROUP] = {};
    for (int64_t d = 0; d < D; ++d) {
        const float x0 = q0[d], x1 = q1[d];
        for (int c = 0; c < G; ++c) {
            const vf k = loadv(ch[c].k + d * ch[c].ld);
            a[c] += x0 * k;
            b[c] += x1 * k;
        }
    }
    for (int c = 0; c < G; ++c) s0[c] = a[c] * scale, s1[c] = b[c] * scale;
}

static inline __attribute__((always_inline)) void query_pair(const Args *a, int64_t bh, int64_t y, int64_t x,
                                                             const int64_t D, Chunk *ch, vf *s0, vf *s1) {
    const int64_t W = a->W, R = a->R, x1 = a->pair && x + 1 < W ? x + 1 : x; /* odd width: last pairs itself */
    const int64_t b = bh / a->heads, h = bh % a->heads, *st = a->st, vn = st[5];
    const float *vb = a->v + b * st[3] + h * st[4], *vimg = vb + a->T * vn; /* this head's values: text, image */
    const float *q0 = a->q + b * st[0] + h * st[1] + (a->T + y * W + x) * st[2], *q1 = q0 + (x1 - x) * st[2];
    /* 1. chunk list: text keys, then each window row of image keys, VL at a time */
    int64_t n = 0;
    for (int64_t t0 = 0; t0 < a->T; t0 += VL, ++n) {
        const int32_t last = (int32_t)((a->T - t0 < VL ? a->T - t0 : VL) - 1);
        ch[n] = (Chunk){a->ktxt + bh * D * a->Tp + t0, vb + t0 * vn, a->Tp, {0, 0}, {last, last}, last + 1};
    }
    for (int64_t dy = -R; dy <= R; ++dy) {
        const int64_t yy = y + dy;
        if (yy < 0 || yy >= a->H) continue;
        const int64_t w = a->half[dy + R];
        const int64_t lo0 = x - w < 0 ? 0 : x - w, hi0 = x + w >= W ? W - 1 : x + w;
        const int64_t lo1 = x1 - w < 0 ? 0 : x1 - w, hi1 = x1 + w >= W ? W - 1 : x1 + w;
        for (int64_t c0 = lo0; c0 <= hi1; c0 += VL, ++n) {
            const int64_t end = hi1 - c0 + 1;
            ch[n] = (Chunk){a->kt + ((bh * a->H + yy) * D) * a->Wp + c0, vimg + (yy * W + c0) * vn, a->Wp,
                            {(int32_t)(lo0 - c0), (int32_t)(lo1 - c0)}, {(int32_t)(hi0 - c0), (int32_t)(hi1 - c0)},
                            (int32_t)(end < VL ? end : VL)};
        }
    }
    /* 2. scores */
    int64_t c = 0;
    for (; c + GROUP <= n; c += GROUP) score_group(q0, q1, ch + c, GROUP, D, a->scale, s0 + c, s1 + c);
    switch (n - c) {
        case 3: score_group(q0, q1, ch + c, 3, D, a->scale, s0 + c, s1 + c); break;
        case 2: score_group(q0, q1, ch + c, 2, D, a->scale, s0 + c, s1 + c); break;
        case 1: score_group(q0, q1, ch + c, 1, D, a->scale, s0 + c, s1 + c); break;
    }
    /* 3. softmax over each query's own lanes; lanes outside its window, and text keys its routing class does not
          read (the first nr chunks are the text's), get probability exactly 0. Image keys are never routed, so
          every query keeps at least itself. */
    vi lane;
    for (int j = 0; j < VL; ++j) lane[j] = j;
    const int32_t *r0 = NULL, *r1 = NULL;
    int64_t nr = 0;
    if (a->cls) {
        const int32_t *cb = a->cls + b * a->H * W + y * W;
        r0 = a->tmask + (b * a->C + cb[x]) * a->Tp, r1 = a->tmask + (b * a->C + cb[x1]) * a->Tp;
        nr = (a->T + VL - 1) / VL;
    }
    vf m0 = splat(-INFINITY), m1 = m0;
    for (c = 0; c < n; ++c) {
        vi ok0 = (lane >= ch[c].lo[0]) & (lane <= ch[c].hi[0]);
        vi ok1 = (lane >= ch[c].lo[1]) & (lane <= ch[c].hi[1]);
        if (c < nr) ok0 &= loadvi(r0 + c * VL), ok1 &= loadvi(r1 + c * VL);
        m0 = selectv(ok0 & (s0[c] > m0), s0[c], m0);
        m1 = selectv(ok1 & (s1[c] > m1), s1[c], m1);
    }
    const float max0 = hmax(m0), max1 = hmax(m1);
    vf sum0 = {}, sum1 = {};
    for (c = 0; c < n; ++c) {
        vi ok0 = (lane >= ch[c].lo[0]) & (lane <= ch[c].hi[0]);
        vi ok1 = (lane >= ch[c].lo[1]) & (lane <= ch[c].hi[1]);
        if (c < nr) ok0 &= loadvi(r0 + c * VL), ok1 &= loadvi(r1 + c * VL);
        s0[c] = selectv(ok0, exp_nonpos(s0[c] - max0), splat(0.0f));
        s1[c] = selectv(ok1, exp_nonpos(s1[c] - max1), splat(0.0f));
        sum0 += s0[c], sum1 += s1[c];
    }
    /* 4. weighted sum of value rows, each row read once for both queries, in blocks of VB vectors of D so
          the 2·VB accumulators stay in registers */
    const float inv0 = 1.0f / hsum(sum0), inv1 = 1.0f / hsum(sum1);
    float *out0 = a->out + b * st[6] + h * st[7] + (a->T + y * W + x) * st[8], *out1 = out0 + (x1 - x) * st[8];
    for (int64_t d0 = 0; d0 < D; d0 += VB * VL) {
        const int64_t nv = (D - d0) / VL < VB ? (D - d0) / VL : VB;
        vf o0[VB] = {}, o1[VB] = {};
        for (c = 0; c < n; ++c) {
            const float *p0 = (const float *)&s0[c], *p1 = (const float *)&s1[c];
            for (int32_t j = 0; j < ch[c].n; ++j) {
                const float *vr = ch[c].v + j * vn + d0;
                const float w0 = p0[j], w1 = p1[j];
                for (int64_t i = 0; i < nv; ++i) {
                    const vf vv = loadv(vr + i * VL);
                    o0[i] += w0 * vv;
                    o1[i] += w1 * vv;
                }
            }
        }
        for (int64_t i = 0; i < nv; ++i) *(vfu *)(out0 + d0 + i * VL) = o0[i] * inv0;
        for (int64_t i = 0; i < nv; ++i) *(vfu *)(out1 + d0 + i * VL) = o1[i] * inv1;
    }
}

static void *worker(void *arg) {
    Args *a = (Args *)arg;
    const int64_t cap = a->max_chunks + GROUP;
    Chunk *ch = malloc(cap * sizeof *ch);
    vf *s0 = aligned_alloc(64, cap * sizeof *s0), *s1 = aligned_alloc(64, cap * sizeof *s1);
    if (!(ch && s0 && s1)) __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
    else
        for (;;) {
            const int64_t item = __atomic_fetch_add(&a->next, 1, __ATOMIC_RELAXED);
            if (item >= a->BH * a->H) break;
            const int64_t bh = item / a->H, y = item % a->H;
            for (int64_t x = 0; x < a->W; x += 1 + a->pair) {
                /* a constant D lets the compiler keep the output accumulators in registers */
                switch (a->D) {
                    case 32: query_pair(a, bh, y, x, 32, ch, s0, s1); break;
                    case 64: query_pair(a, bh, y, x, 64, ch, s0, s1); break;
                    case 128: query_pair(a, bh, y, x, 128, ch, s0, s1); break;
                    default: query_pair(a, bh, y, x, a->D, ch, s0, s1);
                }
            }
        }
    free(ch), free(s0), free(s1);
    return NULL;
}

/* Returns 0 on success, -1 on bad arguments or if no worker could allocate its buffers (caller falls back). */
int local_attention_f32(const float *q, const float *v, float *out, const int64_t *strides, const float *kt,
                        const float *ktxt, const int32_t *half, const int32_t *cls, const int32_t *tmask, int64_t B,
                        int64_t heads, int64_t H, int64_t W, int64_t D, int64_t T, int64_t Tp, int64_t Wp, int64_t R,
                        int64_t C, float scale, int64_t pair, int threads) {
    if (D % PAD || D > 256 || Tp < T + PAD || Wp < W + PAD || (cls && (!tmask || C < 1))) return -1;
    int64_t max_chunks = (T + VL - 1) / VL;
    for (int64_t i = 0; i <= 2 * R; ++i) max_chunks += (2 * half[i] + 2 + VL - 1) / VL; /* a pair's run: 2w + 2 */
    Args a = {q, v, kt, ktxt, out, strides, half, cls, tmask, scale, heads, B * heads, H, W, D, T, Tp, Wp, R, C,
              max_chunks, pair != 0, 0, 0};
    threads = threads < 1 ? 1 : threads > 256 ? 256 : threads;
#if defined(_OPENMP) && !defined(NO_OPENMP) /* NO_OPENMP: the tests build the pthread path */
    /* In a torch process this is torch's own libgomp (same soname, already loaded), so the work runs on the
       threads that are still spinning after torch's last op instead of competing with them for the cores. */
#pragma omp parallel num_threads(threads)
    worker(&a);
#else
    pthread_t th[256];
    int started = 0;
    for (; started < threads - 1; ++started)
        if (pthread_create(&th[started], NULL, worker, &a)) break;
    worker(&a); /* the calling thread works too */
    for (int i = 0; i < started; ++i) pthread_join(th[i], NULL);
#endif
    return a.failed && a.next < a.BH * a.H ? -1 : 0;
}
