/* CLEAR local-window attention for image queries on CPU (fp32, inference).
 *
 * An image query (y, x) attends to all T text keys plus the image keys (y+dy, x+dx) with dy² + dx² < r². For a
 * fixed dy those keys are one contiguous run of grid row y+dy, [x - w(dy), x + w(dy)] clipped to the grid, so
 * the kernel walks the window row by row instead of masking a square halo. Two horizontally adjacent queries
 * are handled together: their runs overlap in all but one key, so every key vector loaded from cache feeds
 * two queries (for r ≤ 8 the pair's run is ≤ 16 keys: one vector per window row).
 *
 * Layouts (contiguous fp32; BH = batch·heads; N = H·W image tokens; D a multiple of 16):
 *   q     (BH, N, D)      image queries, already multiplied by the softmax scale
 *   kt    (BH, H, D, Wp)  image keys with each grid row transposed, so 16 neighbouring keys are one vector
 *                         load; Wp ≥ W + 16 (zero padding) so a load never leaves the row
 *   v     (BH, N, D)      image values
 *   ktxt  (BH, D, Tp)     text keys transposed, Tp ≥ T + 16
 *   vtxt  (BH, T, D)      text values
 *   half  (2R + 1)        w(dy) for dy = -R..R
 *   out   (BH, N, D)
 * Work items are (bh, grid row) pairs, taken atomically by `threads` pthreads.
 * GCC vector extensions keep this portable: one AVX-512 register per v16 here, two AVX2 ones elsewhere.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16 /* keys per chunk: one contiguous run of a grid row (or of the text) */
#define GROUP 4  /* chunks scored together: 4 chunks × 2 queries = 8 independent FMA chains */

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

static inline v16 load16(const float *p) { return *(const v16u *)p; }
static inline v16 select16(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
static inline v16 splat(float x) { return (v16){} + x; }

typedef struct {
    const float *k, *v; /* first key column (transposed keys) and first value row of the chunk */
    int64_t ld;         /* stride between head dims in k */
    int32_t lo[2], hi[2]; /* lanes valid for query 0 / query 1 (inclusive; lo > hi: none) */
    int32_t n;          /* lanes valid for either query: the value rows to read */
} Chunk;

typedef struct {
    const float *q, *kt, *v, *ktxt, *vtxt;
    float *out;
    const int32_t *half;
    int64_t BH, H, W, D, T, Tp, Wp, R, max_chunks;
    int64_t pair;  /* 1: two queries per pass (the default); 0: one, to measure what pairing buys */
    int64_t next;  /* next work item (bh·H + y) */
    int failed;    /* a worker could not allocate its buffers */
} Args;

/* exp(x) for x ≤ 0 (softmax after subtracting the max): Cephes' expf polynomial, 2^n through the exponent
   bits, round-to-nearest by the 1.5·2²³ trick. Relative error ≈ 1e-7. */
static inline v16 exp_nonpos(v16 x) {
    x = select16(x < -87.0f, splat(-87.0f), x);
    x = select16(x > 0.0f, splat(0.0f), x);
    const v16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v16 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    return p * (v16)bits;
}

static inline float hmax(v16 x) {
    float m = x[0];
    for (int j = 1; j < LANES; ++j) m = x[j] > m ? x[j] : m;
    return m;
}

static inline float hsum(v16 x) {
    float s = 0.0f;
    for (int j = 0; j < LANES; ++j) s += x[j];
    return s;
}

/* Scores of queries q0, q1 against G chunks: s[i][c] (16 lanes) = Σ_d q_i[d] · k_c[d·ld_c + lane]. */
static inline __attribute__((always_inline)) void score_group(const float *q0, const float *q1, const Chunk *ch,
                                                              const int G, const int64_t D, v16 *s0, v16 *s1) {
    v16 a[GROUP] = {}, b[GROUP] = {};
    for (int64_t d = 0; d < D; ++d) {
        const float x0 = q0[d], x1 = q1[d];
        for (int c = 0; c < G; ++c) {
            const v16 k = load16(ch[c].k + d * ch[c].ld);
            a[c] += x0 * k;
            b[c] += x1 * k;
        }
    }
    for (int c = 0; c < G; ++c) s0[c] = a[c], s1[c] = b[c];
}

static inline __attribute__((always_inline)) void query_pair(const Args *a, int64_t bh, int64_t y, int64_t x,
                                                             const int64_t D, Chunk *ch, v16 *s0, v16 *s1) {
    const int64_t W = a->W, R = a->R, x1 = a->pair && x + 1 < W ? x + 1 : x; /* odd width: last pairs itself */
    const float *q0 = a->q + ((bh * a->H + y) * W + x) * D, *q1 = q0 + (x1 - x) * D;
    /* 1. chunk list: text keys, then each window row of image keys, 16 at a time */
    int64_t n = 0;
    for (int64_t t0 = 0; t0 < a->T; t0 += LANES, ++n) {
        const int32_t last = (int32_t)((a->T - t0 < LANES ? a->T - t0 : LANES) - 1);
        ch[n] = (Chunk){a->ktxt + bh * D * a->Tp + t0, a->vtxt + (bh * a->T + t0) * D, a->Tp, {0, 0}, {last, last},
                        last + 1};
    }
    for (int64_t dy = -R; dy <= R; ++dy) {
        const int64_t yy = y + dy;
        if (yy < 0 || yy >= a->H) continue;
        const int64_t w = a->half[dy + R];
        const int64_t lo0 = x - w < 0 ? 0 : x - w, hi0 = x + w >= W ? W - 1 : x + w;
        const int64_t lo1 = x1 - w < 0 ? 0 : x1 - w, hi1 = x1 + w >= W ? W - 1 : x1 + w;
        for (int64_t c0 = lo0; c0 <= hi1; c0 += LANES, ++n) {
            const int64_t end = hi1 - c0 + 1;
            ch[n] = (Chunk){a->kt + ((bh * a->H + yy) * D) * a->Wp + c0, a->v + ((bh * a->H + yy) * W + c0) * D,
                            a->Wp, {(int32_t)(lo0 - c0), (int32_t)(lo1 - c0)},
                            {(int32_t)(hi0 - c0), (int32_t)(hi1 - c0)}, (int32_t)(end < LANES ? end : LANES)};
        }
    }
    /* 2. scores */
    int64_t c = 0;
    for (; c + GROUP <= n; c += GROUP) score_group(q0, q1, ch + c, GROUP, D, s0 + c, s1 + c);
    switch (n - c) {
        case 3: score_group(q0, q1, ch + c, 3, D, s0 + c, s1 + c); break;
        case 2: score_group(q0, q1, ch + c, 2, D, s0 + c, s1 + c); break;
        case 1: score_group(q0, q1, ch + c, 1, D, s0 + c, s1 + c); break;
    }
    /* 3. softmax over each query's own lanes; lanes outside its window get probability exactly 0 */
    v16i lane;
    for (int j = 0; j < LANES; ++j) lane[j] = j;
    v16 m0 = splat(-INFINITY), m1 = m0;
    for (c = 0; c < n; ++c) {
        const v16i ok0 = (lane >= ch[c].lo[0]) & (lane <= ch[c].hi[0]);
        const v16i ok1 = (lane >= ch[c].lo[1]) & (lane <= ch[c].hi[1]);
        m0 = select16(ok0 & (s0[c] > m0), s0[c], m0);
        m1 = select16(ok1 & (s1[c] > m1), s1[c], m1);
    }
    const float max0 = hmax(m0), max1 = hmax(m1);
    v16 sum0 = {}, sum1 = {};
    for (c = 0; c < n; ++c) {
        const v16i ok0 = (lane >= ch[c].lo[0]) & (lane <= ch[c].hi[0]);
        const v16i ok1 = (lane >= ch[c].lo[1]) & (lane <= ch[c].hi[1]);
        s0[c] = select16(ok0, exp_nonpos(s0[c] - max0), splat(0.0f));
        s1[c] = select16(ok1, exp_nonpos(s1[c] - max1), splat(0.0f));
        sum0 += s0[c], sum1 += s1[c];
    }
    /* 4. weighted sum of value rows, each row read once for both queries */
    enum { MAXV = 16 }; /* D ≤ 256 */
    v16 o0[MAXV] = {}, o1[MAXV] = {};
    const int64_t nv = D / LANES;
    for (c = 0; c < n; ++c) {
        const float *p0 = (const float *)&s0[c], *p1 = (const float *)&s1[c];
        for (int32_t j = 0; j < ch[c].n; ++j) {
            const float *vr = ch[c].v + j * D;
            const float w0 = p0[j], w1 = p1[j];
            for (int64_t i = 0; i < nv; ++i) {
                const v16 vv = load16(vr + i * LANES);
                o0[i] += w0 * vv;
                o1[i] += w1 * vv;
            }
        }
    }
    const float inv0 = 1.0f / hsum(sum0), inv1 = 1.0f / hsum(sum1);
    float *out0 = a->out + ((bh * a->H + y) * W + x) * D, *out1 = out0 + (x1 - x) * D;
    for (int64_t i = 0; i < nv; ++i) *(v16u *)(out0 + i * LANES) = o0[i] * inv0;
    for (int64_t i = 0; i < nv; ++i) *(v16u *)(out1 + i * LANES) = o1[i] * inv1;
}

static void *worker(void *arg) {
    Args *a = (Args *)arg;
    const int64_t cap = a->max_chunks + GROUP;
    Chunk *ch = malloc(cap * sizeof *ch);
    v16 *s0 = aligned_alloc(64, cap * sizeof *s0), *s1 = aligned_alloc(64, cap * sizeof *s1);
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
int local_attention_f32(const float *q, const float *kt, const float *v, const float *ktxt, const float *vtxt,
                        float *out, const int32_t *half, int64_t BH, int64_t H, int64_t W, int64_t D, int64_t T,
                        int64_t Tp, int64_t Wp, int64_t R, int64_t max_chunks, int64_t pair, int threads) {
    if (D % LANES || D > 16 * LANES || Tp < T + LANES || Wp < W + LANES) return -1;
    Args a = {q, kt, v, ktxt, vtxt, out, half, BH, H, W, D, T, Tp, Wp, R, max_chunks, pair != 0, 0, 0};
    threads = threads < 1 ? 1 : threads > 256 ? 256 : threads;
    pthread_t th[256];
    int started = 0;
    for (; started < threads - 1; ++started)
        if (pthread_create(&th[started], NULL, worker, &a)) break;
    worker(&a); /* the calling thread works too */
    for (int i = 0; i < started; ++i) pthread_join(th[i], NULL);
    return a.failed && a.next < a.BH * a.H ? -1 : 0;
}
