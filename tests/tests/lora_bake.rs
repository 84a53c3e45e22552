//! Baking adapters into the weights, against applying them on the fly.

use std::sync::Arc;

use lora_run_tests::{GEMMA, QWEN, fixtures_dir, llamacpp_reference, max_diff, model};
use runtime::lora::bake::{BakeType, KEPT_WARN, bake, bake_calibrated, calibrates};
use runtime::lora::calibrate::Calibration;
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

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt() as f32
}

/// The fixture adapter in `adapter_dir` (under the fixtures) loaded for `m`, and the names of
/// the weights it targets.
fn fixture_adapter(m: &Model, adapter_dir: &str) -> (AdapterHandle, Vec<String>) {
    let a = load_adapter(&fixtures_dir().join(adapter_dir), m, &AdapterOptions::default()).unwrap();
    let names = a.targets.iter().map(|t| t.tensor.clone()).collect();
    (AdapterHandle::new(a.name.clone(), 1, a), names)
}

/// What an F16 bake is compared on, all on the float path (so only the f16 rounding of
/// W + s·B·A differs): the model with a fixture adapter at scale 1 on the fly (`plan`), its F16
/// bake, and f16's floor: the targeted base weights alone stored as F16, the adapter still on
/// the fly (`plan16`).
struct F16Bake {
    m: Model,
    plan: LoraPlan,
    baked: Model,
    report: runtime::lora::bake::BakeReport,
    base_f16: Model,
    plan16: LoraPlan,
}

fn f16_bake(model_name: &str, adapter_dir: &str) -> F16Bake {
    let mut m = Model::load(model(model_name)).unwrap();
    m.float_reference = true;
    let (h, names) = fixture_adapter(&m, adapter_dir);
    let active = [(h, 1.0)];
    let plan = LoraPlan::new(&m, &active).unwrap();
    let (baked, report) = bake(&m, &active, BakeType::F16).unwrap();
    let base_f16 = with_weights(&m, &names, quant::GgmlType::F16, |_| {});
    let plan16 = LoraPlan::new(&base_f16, &active).unwrap();
    F16Bake {
        m,
        plan,
        baked,
        report,
        base_f16,
        plan16,
    }
}

#[test]
fn baked_f16_equals_on_the_fly() {
    let F16Bake {
        m,
        plan,
        baked,
        report,
        base_f16,
        plan16,
    } = f16_bake(GEMMA, "adapters/gemma3-270m-jargon");
    assert_eq!(report.tensors.len(), 18 * 7);
    assert!(report.kept > 0.9999 && report.kept < 1.0001, "f16 kept {}", report.kept);
    for ids in PROMPTS {
        let a = logits(&m, &plan, ids);
        let b = logits(&baked, &LoraPlan::default(), ids);
        let floor = rel(&logits(&base_f16, &plan16, ids), &a);
        // Relative error in the L2 sense: ‖Δ‖ / ‖logits‖.
        let r = rel(&b, &a);
        eprintln!(
            "f16 bake vs on the fly: ‖Δ‖/‖logits‖ = {r:.2e} (f16 of W alone: {floor:.2e}), max |Δ| / max |logit| = {:.2e}",
            max_diff(&a, &b) / max_abs(&a)
        );
        // The issue's 1e-3. Measured 3.3 / 8.7 / 6.4e-4 against a floor of 2.5 / 9.1 / 6.0e-4
        // (f32 attention over an f32 cache and f32 GELU on this path; with the f16 cache it was
        // 4.5 / 8.4 / 5.5e-4, with llama.cpp's f16 GELU table 3.9 / 9.9 / 6.6e-4).
        assert!(
            r < 1e-3 && r < 1.5 * floor,
            "relative difference {r}, f16 floor {floor}"
        );
    }
}

/// ‖a − b‖ / ‖b‖.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    l2(a, b) / l2(b, &vec![0.0; b.len()])
}

/// `m` with the weights `names` dequantized, each row passed through `edit`, and stored as
/// `ty` (those whose rows are whole `ty` blocks; the others are left as they are).
fn with_weights(m: &Model, names: &[String], ty: quant::GgmlType, mut edit: impl FnMut(&mut [f32])) -> Model {
    let mut d = m.clone();
    let originals: Vec<runtime::model::WeightRef> = m.linears().map(|l| l.w.clone()).collect();
    for (lin, w) in d.linears_mut().zip(&originals) {
        let Some(out_rb) = ty.row_bytes(w.n_in).filter(|_| names.contains(&w.name)) else {
            continue;
        };
        let src = m.matrix(w);
        let rb = src.row_bytes();
        let mut out = vec![0u8; out_rb * w.n_out];
        let mut row = vec![0f32; w.n_in];
        for (o, dst) in out.chunks_exact_mut(out_rb).enumerate() {
            quant::dequantize_row(src.ty, &src.data[o * rb..][..rb], &mut row).unwrap();
            edit(&mut row);
            quant::quantize_row(ty, &row, dst).unwrap();
        }
        lin.w = w.with_data(ty, out);
    }
    d
}

/// The grid step of a group of dequantized weights (a ggml block or sub-block, 16 elements):
/// the largest spacing all gaps between its distinct values are whole multiples of, found
/// among the smallest gap / 1..=8 (else the smallest gap). None for a constant group.
fn grid_step(group: &[f32]) -> Option<f32> {
    let mut v = group.to_vec();
    v.sort_by(f32::total_cmp);
    v.dedup();
    let gaps: Vec<f32> = v.windows(2).map(|w| w[1] - w[0]).collect();
    let g_min = gaps.iter().copied().fold(f32::INFINITY, f32::min);
    if !g_min.is_finite() || g_min <= 0.0 {
        return None;
    }
    (1..=8)
        .map(|k| g_min / k as f32)
        .find(|&s| {
            gaps.iter()
                .all(|&g| ((g / s) - (g / s).round()).abs() < 1e-3 * (g / s).max(1.0))
        })
        .or(Some(g_min))
}

/// `m` with the weights `names` replaced by f32 copies plus uniform noise of one grid step
/// (±step/2): a float model that rounds back to the same quantized file. Its distance from `m`
/// estimates what quantizing those weights cost in the first place: the base's own weight
/// quantization noise, which the fixtures cannot show (their references use the dequantized
/// weights).
fn dithered(m: &Model, names: &[String], seed: u64) -> Model {
    let mut st = seed | 1;
    let mut rnd = move || {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        (st >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    with_weights(m, names, quant::GgmlType::F32, |row| {
        for g in row.chunks_mut(16) {
            let step = grid_step(g).unwrap_or(0.0);
            g.iter_mut().for_each(|v| *v += rnd() * step);
        }
    })
}

#[test]
fn baked_same_types_within_quantization_noise() {
    // Requantizing W + s·B·A to the tensors' own types (Q5_0, Q4_K, Q6_K, Q8_0) rounds away
    // much of a delta that is small against the grid step; measured against the exact (float)
    // on-the-fly logits and compared with two noise levels of the base: what its Q8
    // activations change (quantized vs float compute of the same weights), and what the
    // quantization of these very weights changed (a float model that rounds to the same file,
    // [`dithered`], vs the file).
    let m = Model::load(model(GEMMA)).unwrap();
    let mut f = m.clone();
    f.float_reference = true;
    let (h, names) = fixture_adapter(&m, "adapters/gemma3-270m-jargon");
    let active = [(h, 1.0)];
    let (baked, report) = bake(&m, &active, BakeType::Same).unwrap();
    let (baked8, report8) = bake(&m, &active, BakeType::Q8_0).unwrap();
    eprintln!(
        "kept of the adapter's change: same types {:.4}, q8_0 {:.4}",
        report.kept, report8.kept
    );
    // Most of this adapter's change is under a Q5_0/Q4_K step: the same-type bake keeps 87% of
    // it and warns; Q8_0 keeps all but rounding.
    assert!(
        report.kept > 0.8 && report.kept < KEPT_WARN,
        "same types kept {}",
        report.kept
    );
    assert!(report.warning().is_some());
    assert!(report8.kept > 0.995, "q8_0 kept {}", report8.kept);
    let mut fd = dithered(&m, &names, 7);
    fd.float_reference = true;
    for ids in PROMPTS {
        let b8 = logits(&baked8, &LoraPlan::default(), ids);
        let exact = logits(&f, &LoraPlan::new(&f, &active).unwrap(), ids);
        let fly = logits(&m, &LoraPlan::new(&m, &active).unwrap(), ids);
        let baked_l = logits(&baked, &LoraPlan::default(), ids);
        let base_q = logits(&m, &LoraPlan::default(), ids);
        let base_f = logits(&f, &LoraPlan::default(), ids);
        let base_d = logits(&fd, &LoraPlan::default(), ids);
        let act_noise = max_diff(&base_q, &base_f);
        let weight_noise = max_diff(&base_d, &base_f);
        let d_fly = max_diff(&fly, &exact);
        let d_baked = max_diff(&baked_l, &exact);
        let d_b8 = max_diff(&b8, &exact);
        let effect = max_diff(&fly, &base_q);
        eprintln!(
            "bake: |same − exact| {d_baked:.3}, |q8_0 − exact| {d_b8:.3}, |on the fly − exact| {d_fly:.3}; base noise: Q8 activations {act_noise:.3}, weight quantization {weight_noise:.3}; adapter effect {effect:.3}"
        );
        assert!(
            d_b8 <= 2.0 * act_noise.max(d_fly),
            "q8_0 bake {d_b8} vs noise {act_noise}"
        );
        // Same types: measured 1.5–2.4× this estimate of the weight-quantization noise, keeping
        // about 70% of the adapter's effect on the logits (a broken bake would lose all of it:
        // |same − exact| ≈ the effect). The estimate is 0.6–1.5× the true noise where the float
        // original is known ([`weight_noise_estimate_against_a_known_original`]).
        assert!(
            d_baked < 3.0 * weight_noise && d_baked < 0.5 * effect,
            "same-type bake {d_baked} vs weight noise {weight_noise}, effect {effect}"
        );
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

#[test]
fn weight_noise_estimate_against_a_known_original() {
    // The tiny llama's Q8_0 weights, taken as a float original and quantized to Q4_K / Q5_0 as
    // llama-quantize would (ggml's reference quantizers): there the true weight-quantization
    // noise is known, and [`dithered`] (the estimate the gemma test relies on) can be checked
    // against it. Measured 0.64–1.53× the true noise at the last positions of three prompts,
    // 0.74× (Q4_K) and 0.61× (Q5_0) in mean KL divergence over 128 positions of text, where the
    // same-type bake is 0.14× and 0.17× the true noise.
    let mut orig = Model::load(fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf")).unwrap();
    orig.float_reference = true;
    let (h, names) = fixture_adapter(&orig, "adapters/tinyllama-a-lora");
    let active = [(h, 1.0)];
    let none = LoraPlan::default();
    let chunks = text_chunks(&fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf"), 2, 64);
    let n_vocab = orig.config.n_vocab;
    let orig_text = all_logits(&orig, &none, &chunks);
    for ty in [quant::GgmlType::Q4_K, quant::GgmlType::Q5_0] {
        let mut q = with_weights(&orig, &names, ty, |_| {});
        q.float_reference = true;
        let mut est = dithered(&q, &names, 7);
        est.float_reference = true;
        let (mut baked, _) = bake(&q, &active, BakeType::Same).unwrap();
        baked.float_reference = true;
        for ids in [&[785u32, 3974, 13876, 38835][..], &[641, 279, 7167], &[750, 1887, 4555]] {
            let base = logits(&q, &none, ids);
            let truth = max_diff(&base, &logits(&orig, &none, ids));
            let estimate = max_diff(&logits(&est, &none, ids), &base);
            let exact = logits(&q, &LoraPlan::new(&q, &active).unwrap(), ids);
            let d_baked = max_diff(&logits(&baked, &none, ids), &exact);
            eprintln!(
                "{ty}: weight noise {truth:.3}, estimate {estimate:.3}; same-type bake vs exact {d_baked:.3} ({:.2}× the noise)",
                d_baked / truth
            );
            assert!(
                (0.5 * truth..2.0 * truth).contains(&estimate),
                "{ty}: estimate {estimate} vs true {truth}"
            );
        }
        // The same over text, as mean KL divergence.
        let base = all_logits(&q, &none, &chunks);
        let (truth, _) = kl_divergence(&orig_text, &base, n_vocab);
        let (estimate, _) = kl_divergence(&base, &all_logits(&est, &none, &chunks), n_vocab);
        let exact = all_logits(&q, &LoraPlan::new(&q, &active).unwrap(), &chunks);
        let (d_baked, _) = kl_divergence(&exact, &all_logits(&baked, &none, &chunks), n_vocab);
        eprintln!(
            "{ty}, mean KL over text: weight noise {truth:.5}, estimate {estimate:.5}; same-type bake vs exact {d_baked:.5} ({:.2}× the noise)",
            d_baked / truth
        );
        assert!(
            (0.5 * truth..2.0 * truth).contains(&estimate),
            "{ty}: KL estimate {estimate} vs true {truth}"
        );
    }
}

/// The perplexity test's text (llama.cpp's perplexity fixture file), tokenized by `model_path`'s
/// tokenizer, as `n` chunks of `len` tokens, each led by the BOS when the model adds one.
fn text_chunks(model_path: &std::path::Path, n: usize, len: usize) -> Vec<Vec<u32>> {
    text_chunks_from(model_path, 0, n, len)
}

/// [`text_chunks`] from token `start` of the text on.
fn text_chunks_from(model_path: &std::path::Path, start: usize, n: usize, len: usize) -> Vec<Vec<u32>> {
    let file = llamacpp_reference()["gemma"]["perplexity"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let e = runtime::Engine::load(model_path, &Default::default()).unwrap();
    let bos = e.tokenize("").unwrap();
    let ids = e.tokenize(&text).unwrap();
    let body = &ids[bos.len() + start..];
    assert!(body.len() >= len * n, "{file}: {} tokens", body.len());
    body.chunks(len)
        .take(n)
        .map(|c| bos.iter().chain(c).copied().collect())
        .collect()
}

/// Logits at every position of every chunk, `[Σ n_tok, n_vocab]`.
fn all_logits(m: &Model, plan: &LoraPlan, chunks: &[Vec<u32>]) -> Vec<f32> {
    chunks
        .iter()
        .flat_map(|ids| {
            let mut kv = m.new_kv_cache(ids.len());
            m.forward_with(&mut kv, ids, Logits::All, plan).unwrap()
        })
        .collect()
}

/// Mean over positions of KL(softmax(p) ‖ softmax(q)) in nats (llama.cpp's `--kl-divergence`
/// statistic, p the reference), and the fraction of positions whose top-1 differs.
fn kl_divergence(p: &[f32], q: &[f32], n_vocab: usize) -> (f64, f64) {
    fn log_softmax(x: &[f32]) -> Vec<f64> {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        x.iter().map(|&v| v as f64 - log_sum).collect()
    }
    let (mut kl, mut flips, mut n) = (0f64, 0usize, 0usize);
    for (a, b) in p.chunks_exact(n_vocab).zip(q.chunks_exact(n_vocab)) {
        let (la, lb) = (log_softmax(a), log_softmax(b));
        kl += la.iter().zip(&lb).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
        flips += usize::from(runtime::sampler::argmax(a) != runtime::sampler::argmax(b));
        n += 1;
    }
    (kl / n as f64, flips as f64 / n as f64)
}

/// Mean KL divergence over 128 positions of text ([`text_chunks`]) of baked models from the
/// exact on-the-fly model, as multiples of the base's own weight-quantization noise in the same
/// statistic (the [`dithered`] estimate of the adapter's target tensors against the file). All
/// on the float path, so that only the weights differ. Returns, per scale, the ratio for each
/// of `types`, then with `calibrate` for the same-type bake calibrated over 1032 tokens of
/// other text (8 chunks of a BOS and 128 tokens, [`bake_calibrated`]).
fn bake_kl_ratios(name: &str, adapter_dir: &str, scales: &[f32], types: &[BakeType], calibrate: bool) -> Vec<Vec<f64>> {
    let path = model(name);
    let chunks = text_chunks(&path, 2, 64);
    let m = Model::load(&path).unwrap();
    let n_vocab = m.config.n_vocab;
    let mut f = m.clone();
    f.float_reference = true;
    let (h, names) = fixture_adapter(&m, adapter_dir);
    let none = LoraPlan::default();
    let base = all_logits(&f, &none, &chunks);
    let mut fd = dithered(&m, &names, 7);
    fd.float_reference = true;
    let (noise, noise_flips) = kl_divergence(&base, &all_logits(&fd, &none, &chunks), n_vocab);
    eprintln!(
        "{name} + {adapter_dir}: mean KL of the base's weight-quantization noise {noise:.4} (top-1 differs at {:.1}%)",
        100.0 * noise_flips
    );
    let mut ratios = vec![];
    for &scale in scales {
        let active = [(h.clone(), scale)];
        let exact = all_logits(&f, &LoraPlan::new(&f, &active).unwrap(), &chunks);
        let (effect, _) = kl_divergence(&exact, &base, n_vocab);
        // The adapter must matter far more than the noise, or the comparison says nothing.
        assert!(
            effect > 2.0 * noise,
            "scale {scale}: adapter effect {effect} vs noise {noise}"
        );
        let mut row = vec![];
        let cal = calibrate.then(|| {
            let plan = LoraPlan::new(&m, &active).unwrap();
            let t0 = std::time::Instant::now();
            let c = Calibration::collect(&m, &plan, &text_chunks_from(&path, 2 * 64, 8, 128)).unwrap();
            eprintln!(
                "  calibration over {} tokens: {:.1} s",
                c.tokens(),
                t0.elapsed().as_secs_f64()
            );
            c
        });
        for &ty in types.iter().chain(cal.iter().map(|_| &BakeType::Same)) {
            let t0 = std::time::Instant::now();
            let (mut b, report) = match (&cal, row.len() == types.len()) {
                (Some(c), true) => {
                    let (b, report) = bake_calibrated(&m, &active, ty, c).unwrap();
                    // Every target is of a type with a grid (Q5_0, Q4_K, Q6_K, Q8_0).
                    assert_eq!(report.calibrated, report.tensors.len());
                    assert!(report.warning().is_none());
                    (b, report)
                }
                _ => bake(&m, &active, ty).unwrap(),
            };
            eprintln!("  {ty:?} bake: {:.1} s", t0.elapsed().as_secs_f64());
            b.float_reference = true;
            let (kl, flips) = kl_divergence(&exact, &all_logits(&b, &none, &chunks), n_vocab);
            eprintln!(
                "  scale {scale}, {ty:?} bake: mean KL from the exact model {kl:.4} = {:.2}× the noise (adapter effect {:.1}×; top-1 differs at {:.1}%; kept {:.3})",
                kl / noise,
                effect / noise,
                100.0 * flips,
                report.kept
            );
            row.push(kl / noise);
        }
        ratios.push(row);
    }
    ratios
}

#[test]
fn baked_same_types_within_the_noise_qwen_pirate() {
    // The pirate adapter (rsLoRA, q/v/o/down) changes the weights by more than a grid step
    // where it matters: baked into the tensors' own types it stays well within the base's
    // noise. Measured 0.16× (scale 1) and 0.11× (scale 0.5); the DoRA adapter 0.30× / 0.19×.
    let r = bake_kl_ratios(
        QWEN,
        "adapters/qwen2-0.5b-pirate",
        &[1.0, 0.5],
        &[BakeType::Same],
        false,
    );
    for (scale, row) in [1.0, 0.5].iter().zip(&r) {
        assert!(row[0] < 0.5, "scale {scale}: same-type bake {}× the noise", row[0]);
    }
}

#[test]
fn baked_gemma_jargon_against_the_noise() {
    // The jargon adapter's change is mostly under a Q5_0/Q4_K grid step: requantizing it into
    // the tensors' own types weight by weight costs a second rounding about as large as the
    // first. Measured 1.62× the base's noise at scale 1 (1.79× over 512 positions; the bake
    // warns, see `baked_same_types_within_quantization_noise`); Q8_0 keeps it at 0.02×. A bake
    // that dropped the adapter would sit at the adapter's effect, 25×. Calibrated (GPTQ on the
    // tensors' own grids over 1032 tokens of other text) it is within the noise: 0.55×.
    let r = bake_kl_ratios(
        GEMMA,
        "adapters/gemma3-270m-jargon",
        &[1.0],
        &[BakeType::Same, BakeType::Q8_0],
        true,
    );
    assert!(r[0][0] > 1.0 && r[0][0] < 3.0, "same types: {}× the noise", r[0][0]);
    assert!(r[0][1] < 0.1, "q8_0: {}× the noise", r[0][1]);
    assert!(r[0][2] < 0.8, "calibrated, same types: {}× the noise", r[0][2]);
}

#[test]
fn calibrated_bake_no_further_than_plain_on_the_tiny_llama() {
    // Q8_0 puts each block's largest weight at the end of its grid, so a change that pushes
    // it outwards leaves the grid: those blocks take fresh scales, and a row whose calibrated
    // choice is further than plain requantization on the calibration inputs keeps the plain
    // one. Over other text the calibrated bake then stays at least as close as the plain one,
    // from small changes to large (mean KL from the on-the-fly model, float path).
    let path = fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf");
    let mut m = Model::load(&path).unwrap();
    let (h, _) = fixture_adapter(&m, "adapters/tinyllama-a-lora");
    let chunks = text_chunks(&path, 2, 64);
    let cal_chunks = text_chunks_from(&path, 2 * 64, 8, 128);
    let n_vocab = m.config.n_vocab;
    for scale in [0.1, 1.0, 4.0] {
        let active = [(h.clone(), scale)];
        m.float_reference = false;
        let cal = Calibration::collect(&m, &LoraPlan::new(&m, &active).unwrap(), &cal_chunks).unwrap();
        let (mut plain, _) = bake(&m, &active, BakeType::Same).unwrap();
        let (mut calibrated, report) = bake_calibrated(&m, &active, BakeType::Same, &cal).unwrap();
        m.float_reference = true;
        plain.float_reference = true;
        calibrated.float_reference = true;
        let exact = all_logits(&m, &LoraPlan::new(&m, &active).unwrap(), &chunks);
        let none = LoraPlan::default();
        let (kl_plain, _) = kl_divergence(&exact, &all_logits(&plain, &none, &chunks), n_vocab);
        let (kl_cal, _) = kl_divergence(&exact, &all_logits(&calibrated, &none, &chunks), n_vocab);
        eprintln!(
            "scale {scale}: mean KL plain {kl_plain:.6}, calibrated {kl_cal:.6} ({} rows kept plain)",
            report.plain_rows
        );
        assert!(
            kl_cal <= kl_plain,
            "scale {scale}: calibrated {kl_cal} vs plain {kl_plain}"
        );
    }
}

#[test]
fn calibrated_bake_sees_the_heads_inputs() {
    // A LoRA on lm_head alone: the head runs on every calibration position so that its
    // inputs are collected, and the head (Q8_0) is calibrated like any other layer.
    let path = fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf");
    let m = Model::load(&path).unwrap();
    let (n_embd, n_vocab, r) = (m.config.n_embd, m.config.n_vocab, 4);
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<f32> = (0..r * n_embd).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01).collect();
    let b: Vec<f32> = (0..n_vocab * r).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01).collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ab, bb) = (bytes(&a), bytes(&b));
    let views = [
        (
            "base_model.model.lm_head.lora_A.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![r, n_embd], &ab).unwrap(),
        ),
        (
            "base_model.model.lm_head.lora_B.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n_vocab, r], &bb).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &dir.path().join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["lm_head"], "bias": "none"}"#,
    )
    .unwrap();
    let ad = load_adapter(dir.path(), &m, &AdapterOptions::default()).unwrap();
    let active = [(AdapterHandle::new(ad.name.clone(), 1, ad), 1.0)];
    let cal = Calibration::collect(&m, &LoraPlan::new(&m, &active).unwrap(), &text_chunks(&path, 1, 32)).unwrap();
    // One input, its upper triangle.
    assert_eq!(cal.bytes(), n_embd * (n_embd + 1) / 2 * 4);
    let (_, report) = bake_calibrated(&m, &active, BakeType::Same, &cal).unwrap();
    assert_eq!(report.tensors, [("output.weight".to_string(), quant::GgmlType::Q8_0)]);
    assert_eq!(report.calibrated, 1, "{:?}", report.not_calibrated);
}

#[test]
fn calibration_text_and_warning() {
    // A text without tokens is refused; the low-kept warning stays unless every quantized
    // tensor was calibrated.
    let path = fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf");
    let e = runtime::Engine::load(&path, &Default::default()).unwrap();
    let h = e
        .load_adapter(
            fixtures_dir().join("adapters/tinyllama-a-lora"),
            &AdapterOptions::default(),
        )
        .unwrap();
    let err = e.calibrate(&[(h, 1.0)], "").unwrap_err().to_string();
    assert!(err.contains("the calibration text has no tokens"), "{err}");
    let low = runtime::lora::bake::BakeReport {
        kept: 0.5,
        ..Default::default()
    };
    assert!(low.warning().is_some());
    let all = runtime::lora::bake::BakeReport {
        calibrated: 3,
        ..low.clone()
    };
    assert!(all.warning().is_none());
    let some = runtime::lora::bake::BakeReport {
        not_calibrated: vec![("blk.0.ffn_down.weight".into(), "no fixed grid for Q5_K here".into())],
        ..all.clone()
    };
    assert!(some.warning().is_some());
}

#[test]
fn calibrated_bake_of_no_change_is_the_original() {
    // At scale 0 the target is the original weight, on its own grid: a calibrated bake writes
    // the file's bytes back unchanged.
    let m = Model::load(fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf")).unwrap();
    let (h, names) = fixture_adapter(&m, "adapters/tinyllama-a-lora");
    let active = [(h, 0.0)];
    let plan = LoraPlan::new(&m, &active).unwrap();
    let chunks = text_chunks(&fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf"), 2, 64);
    let cal = Calibration::collect(&m, &plan, &chunks).unwrap();
    assert_eq!(cal.tokens(), chunks.iter().map(Vec::len).sum::<usize>());
    let (baked, report) = bake_calibrated(&m, &active, BakeType::Same, &cal).unwrap();
    // The Q8_0 weights are calibrated; the F16 ffn_down (688 inputs, not a whole number of
    // blocks) is baked as a float.
    assert_eq!(report.calibrated, 24);
    assert_eq!(
        report.calibrated,
        report.tensors.iter().filter(|(_, ty)| calibrates(*ty)).count()
    );
    for (a, b) in m.linears().zip(baked.linears()) {
        if names.contains(&a.w.name) {
            assert_eq!(m.matrix(&a.w).data, baked.matrix(&b.w).data, "{}", a.w.name);
        }
    }
    // A calibration is for same-type bakes only, and for the weights it was collected on.
    let e = bake_calibrated(&m, &active, BakeType::F16, &cal)
        .unwrap_err()
        .to_string();
    assert!(e.contains("own types"), "{e}");
    let other = Model::load(fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf")).unwrap();
    let e = bake_calibrated(&other, &active, BakeType::Same, &cal)
        .unwrap_err()
        .to_string();
    assert!(e.contains("collected on other weights"), "{e}");
}

/// On the float path, at every position of text: ‖baked F16 − on the fly‖ / ‖on the fly‖ per
/// position, for a fixture adapter at scale 1; and the same for f16's own floor (the targeted
/// base weights alone stored as F16, the adapter still on the fly). Returns the two means.
fn f16_bake_over_text(model_name: &str, adapter_dir: &str) -> (f64, f64) {
    let F16Bake {
        m,
        plan,
        baked,
        base_f16,
        plan16,
        ..
    } = f16_bake(model_name, adapter_dir);
    let chunks = text_chunks(&model(model_name), 2, 64);
    let fly = all_logits(&m, &plan, &chunks);
    let n_vocab = m.config.n_vocab;
    let stats = |other: &[f32]| -> (f64, f64, usize) {
        let rels: Vec<f64> = fly
            .chunks_exact(n_vocab)
            .zip(other.chunks_exact(n_vocab))
            .map(|(x, y)| rel(y, x) as f64)
            .collect();
        let mean = rels.iter().sum::<f64>() / rels.len() as f64;
        let max = rels.iter().copied().fold(0f64, f64::max);
        (mean, max, rels.iter().filter(|&&r| r >= 1e-3).count())
    };
    let (mean, max, over) = stats(&all_logits(&baked, &LoraPlan::default(), &chunks));
    let (floor, floor_max, floor_over) = stats(&all_logits(&base_f16, &plan16, &chunks));
    eprintln!(
        "{adapter_dir}: f16 bake vs on the fly over {} positions, ‖Δ‖/‖logits‖: mean {mean:.2e}, max {max:.2e}, {over} at 1e-3 or more; f16 of W alone: mean {floor:.2e}, max {floor_max:.2e}, {floor_over} at 1e-3 or more",
        fly.len() / n_vocab
    );
    (mean, floor)
}

/// The F16 bake over text agrees with the adapter on the fly to the issue's 1e-3, near f16's own
/// floor (storing the base weights alone as F16, which rounds other values than the bake does):
/// measured mean ‖Δ‖/‖logits‖ 7.3e-4 for gemma jargon against a floor of 5.5e-4 (1.1e-3 while
/// this path took GELU from llama.cpp's f16 table, 8.2e-4 with an f16 key/value cache), 3.2e-4
/// and 2.7e-4 for the qwen pirate and DoRA adapters against 2.6e-4 and 2.4e-4 (asserted: under
/// 1.5× the floor).
#[test]
fn baked_f16_over_text_is_at_the_f16_floor() {
    for (m, a) in [
        (GEMMA, "adapters/gemma3-270m-jargon"),
        (QWEN, "adapters/qwen2-0.5b-pirate"),
        (QWEN, "adapters/qwen2-0.5b-dora"),
    ] {
        let (mean, floor) = f16_bake_over_text(m, a);
        assert!(mean < 1e-3 && mean < 1.5 * floor, "{a}: mean {mean}, f16 floor {floor}");
    }
}

/// DoRA's row factors are taken of the weights in use: a DoRA adapter applied on a model with
/// another adapter baked into the same layers gives what a freshly loaded copy of it gives,
/// not factors kept from the base weights it was first used with.
#[test]
fn dora_on_a_baked_model_takes_the_baked_weights() {
    let m = Model::load(model(QWEN)).unwrap();
    let (dora, _) = fixture_adapter(&m, "adapters/qwen2-0.5b-dora");
    let (pirate, _) = fixture_adapter(&m, "adapters/qwen2-0.5b-pirate");
    let ids: &[u32] = &[785, 6722, 315, 9625, 374];
    let on_base = logits(&m, &LoraPlan::new(&m, &[(dora.clone(), 1.0)]).unwrap(), ids);
    let (baked, _) = bake(&m, &[(pirate, 1.0)], BakeType::F16).unwrap();
    let reused = logits(&baked, &LoraPlan::new(&baked, &[(dora, 1.0)]).unwrap(), ids);
    let (fresh, _) = fixture_adapter(&m, "adapters/qwen2-0.5b-dora");
    let want = logits(&baked, &LoraPlan::new(&baked, &[(fresh, 1.0)]).unwrap(), ids);
    assert_eq!(reused, want);
    assert!(max_diff(&want, &on_base) > 0.1, "the bake changed the logits");
}

/// A base weight that is not finite (here a Q8_0 block scale of NaN in the file) is named by
/// the bake, tensor and row, as the file's fault rather than the adapter's.
#[test]
fn bake_names_a_base_weight_that_is_not_finite() {
    let path = fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf");
    let f = runtime::gguf::GgufFile::open(&path).unwrap();
    let mut w = runtime::gguf::GgufWriter::new();
    w.metadata = f.metadata().clone();
    for t in f.tensors() {
        let mut data = f.view(t).data.to_vec();
        if t.name == "blk.0.attn_q.weight" {
            // Row 3, its first Q8_0 block (34 bytes a block): the f16 scale.
            let row_bytes = t.shape[0] as usize / 32 * 34;
            data[3 * row_bytes..3 * row_bytes + 2].copy_from_slice(&0x7e00u16.to_le_bytes()); // f16 NaN
        }
        w.add_tensor(t.name.clone(), t.shape.clone(), t.ty, data);
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    let m = Model::from_file(Arc::new(runtime::gguf::GgufFile::from_bytes(bytes).unwrap())).unwrap();
    let (h, _) = fixture_adapter(&m, "adapters/tinyllama-a-lora");
    let e = bake(&m, &[(h, 1.0)], BakeType::Same).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`blk.0.attn_q.weight` row 3: the base weight is not finite (a NaN or infinity in the file)"
    );
}
