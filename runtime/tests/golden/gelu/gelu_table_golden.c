// ggml's GELU table (`ggml_table_gelu_f16`, filled by ggml_cpu_init from ggml_gelu_f32 as the
// ggml build compiled it) as a JSON golden: the FNV-1a 64 hash of its f16 entries (little
// endian bytes; the 2046 NaN inputs left out: their outputs are NaN with a payload that only the
// f16 conversion decides) and the entries where a plain, unfused ggml_gelu_f32 would round differently.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include "ggml.h"
#include "ggml-cpu.h"

extern uint16_t ggml_table_gelu_f16[1 << 16];

// ggml_gelu_f32 with every operation rounded on its own (no fused multiply-add).
static float gelu_unfused(float x) {
    const float a = 0.044715f, s = 0.79788456080286535587989211986876f;
    volatile float ax = a * x, axx = ax * x, inner = 1.0f + axx, sx = s * x, arg = sx * inner;
    volatile float t = tanhf(arg), h = 0.5f * x, one_t = 1.0f + t;
    return h * one_t;
}

int main(int argc, char ** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s OUT.json\n", argv[0]); return 2; }
    ggml_cpu_init();
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 65536; i++) {
        if (isnan(ggml_fp16_to_fp32((ggml_fp16_t) i))) continue;
        uint16_t v = ggml_table_gelu_f16[i];
        for (int b = 0; b < 2; b++) { h ^= (v >> (8 * b)) & 0xff; h *= 0x100000001b3ull; }
    }
    FILE * f = fopen(argv[1], "w");
    if (!f) { perror(argv[1]); return 1; }
    fprintf(f, "{\"made_by\": \"runtime/tests/golden/gelu/make_golden.sh\", \"fnv1a64\": \"%016llx\", \"unfused_differs\": [",
            (unsigned long long) h);
    int n = 0;
    for (int i = 0; i < 65536; i++) {
        float x = ggml_fp16_to_fp32((ggml_fp16_t) i);
        if (!(x > -10.0f && x < 10.0f)) continue;
        uint16_t u = ggml_fp32_to_fp16(gelu_unfused(x));
        if (u != ggml_table_gelu_f16[i]) fprintf(f, "%s[%d, %d]", n++ ? ", " : "", i, ggml_table_gelu_f16[i]);
    }
    fprintf(f, "]}\n");
    fclose(f);
    return 0;
}
