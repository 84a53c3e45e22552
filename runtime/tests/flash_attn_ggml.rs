//! Attention against ggml's own CPU flash attention (`ggml_flash_attn_ext`, as llama.cpp
//! calls it), bit for bit: its tiled path for batches of 64 queries or more, its one-row path
//! below that. `tests/golden/flash_attn/make_golden.sh` made the golden hashes from llama.cpp's
//! ggml built for AVX-512 and for AVX2; the test takes those of the level lora-run runs at
//! (`LORA_RUN_SIMD=avx2` checks the AVX2 forms on an AVX-512 machine).

use half::f16;
use quant::SimdLevel;
use serde_json::Value;

/// The xorshift64 stream the golden program draws its inputs from.
fn rnd(st: &mut u64, amp: f32) -> f32 {
    *st ^= *st << 13;
    *st ^= *st >> 7;
    *st ^= *st << 17;
    ((*st >> 40) as f32 / 16777216.0 - 0.5) * amp
}

fn fnv1a64(x: &[f32]) -> u64 {
    x.iter()
        .flat_map(|v| v.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

#[test]
fn attention_matches_ggml_flash_attn_bit_for_bit() {
    let name = match SimdLevel::detect() {
        SimdLevel::Avx512 => "golden_avx512.json",
        SimdLevel::Avx2 => "golden_avx2.json",
        other => panic!("golden values exist for ggml's AVX-512 and AVX2 builds, not for {other:?}"),
    };
    let path = format!("{}/tests/golden/flash_attn/{name}", env!("CARGO_MANIFEST_DIR"));
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let scale = golden["scale"].as_f64().unwrap() as f32;
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for c in cases {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (n_tok, pos0, nh, nkv, dk, dv, window) = (
            u("n_tok"),
            u("pos0"),
            u("n_head"),
            u("n_head_kv"),
            u("head_dim"),
            u("head_dim_v"),
            u("window"),
        );
        let n_kv = pos0 + n_tok;
        let mut st = u("seed") as u64 | 1;
        // Drawn in the order [tok][head][d] for q, [pos][head][d] for k, then v.
        let q: Vec<f32> = (0..n_tok * nh * dk).map(|_| rnd(&mut st, 3.0)).collect();
        let k: Vec<f16> = (0..n_kv * nkv * dk).map(|_| f16::from_f32(rnd(&mut st, 3.0))).collect();
        let v: Vec<f16> = (0..n_kv * nkv * dv).map(|_| f16::from_f32(rnd(&mut st, 2.0))).collect();
        let shape = runtime::model::ops::AttnShape {
            n_tok,
            pos0,
            n_head: nh,
            n_head_kv: nkv,
            head_dim: dk,
            head_dim_v: dv,
            scale,
            window: (window > 0).then_some(window),
        };
        let got = runtime::model::ops::attention(&q, &k, &v, &shape);
        let samples: Vec<String> = c["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let at = s[0].as_u64().unwrap() as usize;
                format!("[{at}] {} vs ggml {}", got[at], s[1])
            })
            .collect();
        assert_eq!(
            format!("{:016x}", fnv1a64(&got)),
            c["fnv1a64"].as_str().unwrap(),
            "{name}: n_tok {n_tok}, pos0 {pos0}, heads {nh}/{nkv}, dims {dk}/{dv}, window {window}: {samples:?}"
        );
    }
}
