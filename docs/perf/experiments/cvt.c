// f32 -> bf16 (round to nearest even) over an L1-resident buffer: the portable formula that
// normkit's loops vectorise (`dtype::convert::f32_to_bf16`: bits + 0x7FFF + lsb, NaN kept
// quiet) against AVX512_BF16's VCVTNEPS2BF16. docs/perf/cpu.md, round 22.
// gcc -O3 -march=native -mavx512bf16 cvt.c -o cvt && ./cvt
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define N 4096
static float src[N];
static uint16_t dst[N];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((noinline)) static void portable(const float *x, uint16_t *y, int n) {
    for (int i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        uint32_t r = (b & 0x7FFFFFFF) > 0x7F800000 ? (b | 0x00400000)
                                                   : b + 0x7FFF + ((b >> 16) & 1);
        y[i] = (uint16_t)(r >> 16);
    }
}

__attribute__((noinline)) static void native(const float *x, uint16_t *y, int n) {
    for (int i = 0; i + 16 <= n; i += 16) {
        __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
        _mm256_storeu_si256((__m256i *)(y + i), (__m256i)v);
    }
}

static double time_it(void (*f)(const float *, uint16_t *, int)) {
    double best = 1e9;
    for (int k = 0; k < 21; k++) {
        double t0 = now();
        for (int r = 0; r < 2000; r++) {
            f(src, dst, N);
            __asm__ volatile("" ::: "memory");
        }
        double t = (now() - t0) / (2000.0 * N) * 1e9;
        if (t < best) best = t;
    }
    return best;
}

int main(void) {
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < N; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        float v = (float)((int64_t)(s >> 11) - (1ll << 52)) / (float)(1ll << 50);
        src[i] = v;  // normal values: the instruction and the formula agree bit for bit
    }
    uint16_t a[N], b[N];
    portable(src, a, N);
    native(src, b, N);
    int diff = memcmp(a, b, sizeof a) != 0;
    double p = time_it(portable), q = time_it(native);
    printf("portable %.3f ns/elem, vcvtneps2bf16 %.3f ns/elem, ratio %.2fx, outputs %s\n", p, q,
           p / q, diff ? "DIFFER" : "identical");
    return diff;
}
