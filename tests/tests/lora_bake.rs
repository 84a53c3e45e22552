//! Baking adapters into the weights, against applying them on the fly.

use std::sync::Arc;

use lora_run_tests::{GEMMA, QWEN, fixtures_dir, model};
use runtime::lora::bake::{BakeType, bake};
use runtime::lora::{AdapterHandle, AdapterOptions, LoraPlan, load_adapter};
use runtime::model::{Logits, Model};

const PROMPTS: [&[u32]; 3] = [
    &[2, 818, 5279, 529, 7001, 563],
    &[2, 818, 4535, 2358, 5710],
    &[2, 2063, 1138, 236769, 236746, 236764, 518, 1473],
];

fn logits(m: &Model, plan: &LoraPlan, ids: &[u32]) -> Vec<f32> {
    let mut kv = m.new_kv_cache(64);
    m.forward_with(&mut kv, ids, Logits::Last, plan).unwrap()
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|v| v.abs()).fold(0f32, f32::max)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt() as f32
}

fn jargon(m: &Model) -> AdapterHandle {
    let a = load_adapter(
        &fixtures_dir().join("adapters/gemma3-270m-jargon"),
        m,
        &AdapterOptions::default(),
    )
    .unwrap();
    AdapterHandle::new(a.name.clone(), 1, a)
}

#[test]
fn baked_f16_equals_on_the_fly() {
    // Both on the float path, so only the f16 rounding of W + s·B·A differs.
    let mut m = Model::load(model(GEMMA)).unwrap();
    m.float_reference = true;
    let h = jargon(&m);
    let active = [(h, 1.0)];
    let plan = LoraPlan::new(&m, &active).unwrap();
    let (baked, report) = bake(&m, &active, BakeType::F16).unwrap();
    assert_eq!(report.tensors.len(), 18 * 7);
    for ids in PROMPTS {
        let a = logits(&m, &plan, ids);
        let b = logits(&baked, &LoraPlan::default(), ids);
        // Relative error in the L2 sense: ‖Δ‖ / ‖logits‖.
        let rel = l2(&a, &b) / l2(&a, &vec![0.0; a.len()]);
        eprintln!(
            "f16 bake vs on the fly: ‖Δ‖/‖logits‖ = {rel:.2e}, max |Δ| / max |logit| = {:.2e}",
            max_diff(&a, &b) / max_abs(&a)
        );
        // f16's own rounding of W + s·B·A is the floor: measured 0.5–1.1e-3 on these prompts.
        assert!(rel < 1.5e-3, "relative difference {rel}");
    }
}

#[test]
fn baked_same_types_within_quantization_noise() {
    // Requantizing W + s·B·A to the tensors' own types (Q5_0, Q4_K, Q6_K, Q8_0) adds weight
    // quantization error of the same size as the base's own; measured here against the exact
    // (float) on-the-fly logits and compared with the base's quantized-vs-float difference.
    let m = Model::load(model(GEMMA)).unwrap();
    let mut f = m.clone();
    f.float_reference = true;
    let h = jargon(&m);
    let active = [(h, 1.0)];
    let (baked, _) = bake(&m, &active, BakeType::Same).unwrap();
    let (baked8, _) = bake(&m, &active, BakeType::Q8_0).unwrap();
    for ids in PROMPTS {
        let b8 = logits(&baked8, &LoraPlan::default(), ids);
        let exact = logits(&f, &LoraPlan::new(&f, &active).unwrap(), ids);
        let fly = logits(&m, &LoraPlan::new(&m, &active).unwrap(), ids);
        let baked_l = logits(&baked, &LoraPlan::default(), ids);
        let base_q = logits(&m, &LoraPlan::default(), ids);
        let base_f = logits(&f, &LoraPlan::default(), ids);
        let noise = max_diff(&base_q, &base_f);
        let d_fly = max_diff(&fly, &exact);
        let d_baked = max_diff(&baked_l, &exact);
        let d_b8 = max_diff(&b8, &exact);
        let effect = max_diff(&fly, &base_q);
        eprintln!(
            "bake: |same − exact| {d_baked:.3}, |q8_0 − exact| {d_b8:.3}, |on the fly − exact| {d_fly:.3}, base |quantized − float| {noise:.3}, adapter effect {effect:.3}"
        );
        assert!(d_b8 <= 2.0 * noise.max(d_fly), "q8_0 bake {d_b8} vs noise {noise}");
    }
}

#[test]
fn unbake_restores_the_original_weights_exactly() {
    let e = runtime::Engine::load(model(QWEN), &Default::default()).unwrap();
    let h = e
        .load_adapter(
            fixtures_dir().join("adapters/qwen2-0.5b-pirate"),
            &AdapterOptions::default(),
        )
        .unwrap();
    let before = e.model();
    let mut s = e.session(64);
    let l0 = s.logits("The capital of France is", &[]).unwrap();
    let t0 = std::time::Instant::now();
    let r = e.bake(&[(h.clone(), 1.0)], BakeType::Same).unwrap();
    eprintln!(
        "baked {} tensors in {:.0} ms",
        r.tensors.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(e.is_baked());
    let baked = s.logits("The capital of France is", &[]).unwrap();
    let fly = s.logits("The capital of France is", &[(h, 1.0)]);
    assert!(fly.is_ok());
    assert!(max_diff(&baked, &l0) > 0.1, "baking changed nothing");
    e.unbake();
    assert!(!e.is_baked());
    assert!(Arc::ptr_eq(&e.model(), &before));
    let l1 = s.logits("The capital of France is", &[]).unwrap();
    assert_eq!(l0, l1, "unbaked logits are bit-identical");
}
