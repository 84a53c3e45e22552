// Golden outputs of ggml's CPU flash attention (ggml_flash_attn_ext, as llama.cpp calls it)
// for runtime/tests/flash_attn_ggml.rs. Built against a llama.cpp tree by make_golden.sh.
//
// Each case's inputs come from a xorshift64 stream that the Rust test regenerates: q (f32),
// then k and v (rounded to f16), drawn in lora-run's layouts ([tok][head][d], [pos][kv head][d]).
// golden.json holds, per case, its sizes, the FNV-1a 64 hash of the output's f32 bits
// ([tok][head][d], little-endian bytes) and a few of its values to show how far a mismatch is.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-cpu.h"

static uint64_t st;
static float rnd(float amp) {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return ((float)(st >> 40) / 16777216.0f - 0.5f) * amp;
}

static void run_case(FILE * out, int first, uint32_t n_tok, uint32_t pos0, uint32_t nh, uint32_t nkv, uint32_t dk, uint32_t dv,
                     uint32_t window, uint64_t seed, int threads) {
    const uint32_t n_kv = pos0 + n_tok;
    struct ggml_init_params ip = { 512u * 1024 * 1024, NULL, false };
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, dk, n_tok, nh);
    struct ggml_tensor * k = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, dk, n_kv, nkv);
    struct ggml_tensor * v = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, dv, n_kv, nkv);
    struct ggml_tensor * m = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_kv, n_tok);
    st = seed | 1;
    for (uint32_t t = 0; t < n_tok; t++)
        for (uint32_t h = 0; h < nh; h++)
            for (uint32_t d = 0; d < dk; d++)
                ((float *) q->data)[(h * n_tok + t) * dk + d] = rnd(3.0f);
    for (uint32_t p = 0; p < n_kv; p++)
        for (uint32_t h = 0; h < nkv; h++)
            for (uint32_t d = 0; d < dk; d++)
                ((ggml_fp16_t *) k->data)[(h * n_kv + p) * dk + d] = ggml_fp32_to_fp16(rnd(3.0f));
    for (uint32_t p = 0; p < n_kv; p++)
        for (uint32_t h = 0; h < nkv; h++)
            for (uint32_t d = 0; d < dv; d++)
                ((ggml_fp16_t *) v->data)[(h * n_kv + p) * dv + d] = ggml_fp32_to_fp16(rnd(2.0f));
    for (uint32_t t = 0; t < n_tok; t++) {
        const uint32_t pos = pos0 + t;
        for (uint32_t p = 0; p < n_kv; p++) {
            const int masked = p > pos || (window && pos - p >= window);
            ((ggml_fp16_t *) m->data)[t * n_kv + p] = ggml_fp32_to_fp16(masked ? -INFINITY : 0.0f);
        }
    }
    struct ggml_tensor * r = ggml_flash_attn_ext(ctx, q, k, v, m, 0.125f, 0.0f, 0.0f);
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, r);
    if (ggml_graph_compute_with_ctx(ctx, gf, threads) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "compute failed\n");
        exit(1);
    }
    // r: [dv, nh, n_tok] contiguous, which is [tok][head][d].
    const size_t n_out = (size_t) n_tok * nh * dv;
    const unsigned char * bytes = (const unsigned char *) r->data;
    uint64_t hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n_out * sizeof(float); i++) {
        hash = (hash ^ bytes[i]) * 0x100000001b3ull;
    }
    fprintf(out, "%s    {\"n_tok\": %u, \"pos0\": %u, \"n_head\": %u, \"n_head_kv\": %u, \"head_dim\": %u, "
                 "\"head_dim_v\": %u, \"window\": %u, \"seed\": %u, \"fnv1a64\": \"%016llx\", \"samples\": [",
            first ? "" : ",\n", n_tok, pos0, nh, nkv, dk, dv, window, (uint32_t) seed, (unsigned long long) hash);
    for (int i = 0; i < 8; i++) {
        const size_t at = (size_t) i * (n_out - 1) / 7;
        fprintf(out, "%s[%zu, %.9g]", i ? ", " : "", at, ((const float *) r->data)[at]);
    }
    fprintf(out, "]}");
    ggml_free(ctx);
}

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT\n", argv[0]);
        return 2;
    }
    FILE * out = fopen(argv[1], "w");
    fprintf(out, "{\"made_by\": \"runtime/tests/golden/flash_attn/make_golden.sh\", \"scale\": 0.125, \"cases\": [\n");
    // Prompt batches of 64 rows or more: the tiled path.
    run_case(out, 1, 96, 0, 4, 1, 64, 64, 0, 1, 2);
    run_case(out, 0, 70, 100, 2, 2, 128, 128, 75, 2, 2);
    run_case(out, 0, 64, 30, 4, 2, 256, 256, 0, 3, 2);
    run_case(out, 0, 200, 0, 4, 1, 256, 256, 512, 7, 2);
    run_case(out, 0, 70, 300, 4, 2, 64, 64, 90, 9, 2);
    // Fewer rows: the one-row path (a cache under 512 positions, so no split across threads).
    run_case(out, 0, 5, 60, 4, 2, 64, 64, 0, 4, 2);
    run_case(out, 0, 1, 300, 2, 1, 256, 256, 0, 5, 2);
    run_case(out, 0, 3, 200, 2, 1, 128, 128, 50, 6, 2);
    run_case(out, 0, 1, 40, 14, 2, 64, 64, 0, 8, 2);
    fprintf(out, "\n]}\n");
    fclose(out);
    return 0;
}
