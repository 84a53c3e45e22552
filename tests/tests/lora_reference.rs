//! Adapters applied on the fly against the transformers + PEFT references
//! (`../shared/fixtures/reference/<model>__<adapter>__<scale>.json`).
//!
//! - Quantized path (what users run: prompt batches with activations quantized to Q8 as
//!   llama.cpp does, decode steps adding the quantized remainder, [`Model::decode_activations`]):
//!   last-position top-1 equal (either of the reference's top two where those are within 0.1,
//!   a tie that activation quantization can flip) and top-5 sharing ≥ 4 ids; the greedy
//!   continuation's first 8 tokens equal up to the first step whose reference top-two margin
//!   is under 0.3. Decode with the remainder is closer to the float model than with one Q8
//!   row (mean KL over teacher-forced steps).
//! - Float path ([`Model::float_reference`]: dequantized weights, f32 activations, as the
//!   references were computed): the greedy continuation's first 8 tokens equal up to the
//!   first step whose reference top-two margin is under 0.3, and logits within a tolerance
//!   that separates DoRA from a plain-LoRA reading (0.34 apart) and the permuted llama q/k
//!   from the unpermuted (1 to 4 apart).

use std::path::PathBuf;
use std::sync::Arc;

use lora_run_tests::{
    GEMMA, QWEN, assert_top_agrees, clear_steps, fixtures_dir, ids_of, model, reference, reference_top, top_k,
};
use runtime::lora::bake::{BakeReport, BakeType, KEPT_WARN, bake};
use runtime::lora::{AdapterHandle, AdapterOptions, LoraPlan, load_adapter};
use runtime::model::{Logits, Model};

fn tinyllama() -> PathBuf {
    fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf")
}

fn adapter(name: &str) -> PathBuf {
    fixtures_dir().join("adapters").join(name)
}

fn handle(m: &Model, path: &std::path::Path) -> AdapterHandle {
    let a = load_adapter(path, m, &AdapterOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    AdapterHandle::new(a.name.clone(), 1, a)
}

/// The greedy continuation of `prompt`: `n` tokens, decoded as generation does
/// ([`Model::decode_with`]).
fn greedy(m: &Model, plan: &LoraPlan, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut kv = m.new_kv_cache(prompt.len() + n + 1);
    let mut logits = m.forward_with(&mut kv, prompt, Logits::Last, plan).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(top_k(&logits, 1)[0]);
        logits = m.decode_with(&mut kv, out[out.len() - 1], plan).unwrap();
    }
    out
}

/// `m` decoding with the quantized remainder: the default on CPUs with AVX-512 VNNI (this
/// one), set here so that the checks hold the same numerics on any CPU.
fn with_remainder(mut m: Model) -> Model {
    m.decode_activations = quant::Activations::Residual;
    m
}

/// The quantized path against a reference file.
fn check_quantized(model_path: PathBuf, adapter_dir: &str, reference_file: &str, scale: f32) {
    let m = with_remainder(Model::load(&model_path).unwrap());
    let h = handle(&m, &adapter(adapter_dir));
    let plan = LoraPlan::new(&m, &[(h, scale)]).unwrap();
    check_quantized_on(&m, &plan, reference_file);
}

/// The adapter baked into the weights as `ty`, on the quantized path, against a reference
/// file with [`check_quantized`]'s tolerances; returns the bake's report.
fn check_baked(model_path: PathBuf, adapter_dir: &str, reference_file: &str, scale: f32, ty: BakeType) -> BakeReport {
    let m = with_remainder(Model::load(&model_path).unwrap());
    let h = handle(&m, &adapter(adapter_dir));
    let (baked, report) = bake(&m, &[(h, scale)], ty).unwrap();
    check_quantized_on(&baked, &LoraPlan::default(), reference_file);
    report
}

/// [`check_quantized`] on a loaded model and plan.
fn check_quantized_on(m: &Model, plan: &LoraPlan, reference_file: &str) {
    let r = reference(reference_file);
    for p in r["prompts"].as_array().unwrap() {
        let ids = ids_of(&p["input_ids"]);
        let mut kv = m.new_kv_cache(256);
        let logits = m.forward_with(&mut kv, &ids, Logits::Last, plan).unwrap();
        let shared = assert_top_agrees(&logits, &p["top20"], &format!("{reference_file} {}", p["prompt"]));
        // The greedy run follows the reference up to its first near-tie (margin under 0.3).
        let (want_ids, n) = greedy_reference(p);
        let got_ids = greedy(m, plan, &ids, 8);
        let same = got_ids.iter().zip(&want_ids).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{reference_file} {}: top-5 shares {shared}; quantized greedy follows {same} of 8 ({n} clear in the reference)",
            p["prompt"]
        );
        assert!(
            same >= n,
            "{reference_file} {}: quantized greedy {got_ids:?} departs from {want_ids:?} at step {same}, before a near-tie",
            p["prompt"]
        );
    }
}

/// The reference's greedy ids and how many leading steps have a top-two margin ≥ 0.3 (≤ 8).
fn greedy_reference(p: &serde_json::Value) -> (Vec<u32>, usize) {
    let g = &p["greedy"];
    let margins: Vec<f64> = g["step_top1_top2_margin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (ids_of(&g["new_ids"]), clear_steps(&margins, 0.3, 8))
}

/// The float path's greedy continuation equals the reference's up to the first near-tie.
fn check_greedy_float(model_path: PathBuf, adapter_dir: &str, reference_file: &str, scale: f32) {
    let mut m = Model::load(&model_path).unwrap();
    m.float_reference = true;
    let h = handle(&m, &adapter(adapter_dir));
    let plan = LoraPlan::new(&m, &[(h, scale)]).unwrap();
    for p in reference(reference_file)["prompts"].as_array().unwrap() {
        let (want_ids, n) = greedy_reference(p);
        let got = greedy(&m, &plan, &ids_of(&p["input_ids"]), n);
        assert_eq!(
            got[..n],
            want_ids[..n],
            "{reference_file} {}: greedy tokens",
            p["prompt"]
        );
    }
}

/// The float path: max |Δlogit| against the reference's full last-position logits (`.npy`) or
/// its top-20, returned for the caller's tolerance.
fn float_max_diff(model_path: PathBuf, adapter_dir: Option<&str>, reference_file: &str, scale: f32) -> f32 {
    let mut m = Model::load(&model_path).unwrap();
    m.float_reference = true;
    let m = Arc::new(m);
    let active: Vec<(AdapterHandle, f32)> = adapter_dir
        .map(|d| (handle(&m, &adapter(d)), scale))
        .into_iter()
        .collect();
    let plan = LoraPlan::new(&m, &active).unwrap();
    let r = reference(reference_file);
    let mut worst = 0f32;
    for p in r["prompts"].as_array().unwrap() {
        let ids = ids_of(&p["input_ids"]);
        let mut kv = m.new_kv_cache(256);
        let logits = m.forward_with(&mut kv, &ids, Logits::Last, &plan).unwrap();
        let npy = p["last_logits_npy"]
            .as_str()
            .map(|f| fixtures_dir().join("reference").join(f))
            .filter(|f| f.is_file());
        let d = match npy {
            Some(f) => {
                let want = lora_run_tests::read_npy_f32(&f);
                assert_eq!(want.len(), logits.len());
                want.iter()
                    .zip(&logits)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            }
            None => reference_top(&p["top20"])
                .iter()
                .map(|(id, l)| (logits[*id as usize] - l).abs())
                .fold(0f32, f32::max),
        };
        eprintln!("{reference_file} {}: float path max |Δlogit| {d:.5}", p["prompt"]);
        worst = worst.max(d);
    }
    worst
}

#[test]
fn gemma_jargon_scale_1() {
    check_quantized(model(GEMMA), "gemma3-270m-jargon", "gemma3-270m__jargon__1.0.json", 1.0);
    check_greedy_float(model(GEMMA), "gemma3-270m-jargon", "gemma3-270m__jargon__1.0.json", 1.0);
}

#[test]
fn gemma_jargon_scale_half() {
    check_quantized(model(GEMMA), "gemma3-270m-jargon", "gemma3-270m__jargon__0.5.json", 0.5);
    check_greedy_float(model(GEMMA), "gemma3-270m-jargon", "gemma3-270m__jargon__0.5.json", 0.5);
}

#[test]
fn gemma_jargon_bf16() {
    check_quantized(
        model(GEMMA),
        "gemma3-270m-jargon-bf16",
        "gemma3-270m__jargon-bf16__1.0.json",
        1.0,
    );
    check_greedy_float(
        model(GEMMA),
        "gemma3-270m-jargon-bf16",
        "gemma3-270m__jargon-bf16__1.0.json",
        1.0,
    );
}

#[test]
fn gemma_jargon_gguf_lora() {
    check_quantized(
        model(GEMMA),
        "gemma3-270m-jargon.gguf",
        "gemma3-270m__jargon__1.0.json",
        1.0,
    );
}

#[test]
fn qwen_pirate_rslora_scale_1() {
    check_quantized(model(QWEN), "qwen2-0.5b-pirate", "qwen2-0.5b__pirate__1.0.json", 1.0);
    check_greedy_float(model(QWEN), "qwen2-0.5b-pirate", "qwen2-0.5b__pirate__1.0.json", 1.0);
}

#[test]
fn qwen_pirate_rslora_scale_half() {
    check_quantized(model(QWEN), "qwen2-0.5b-pirate", "qwen2-0.5b__pirate__0.5.json", 0.5);
    check_greedy_float(model(QWEN), "qwen2-0.5b-pirate", "qwen2-0.5b__pirate__0.5.json", 0.5);
}

#[test]
fn qwen_dora() {
    check_quantized(model(QWEN), "qwen2-0.5b-dora", "qwen2-0.5b__dora__1.0.json", 1.0);
    check_greedy_float(model(QWEN), "qwen2-0.5b-dora", "qwen2-0.5b__dora__1.0.json", 1.0);
}

#[test]
fn qwen_dora_float_path_is_exact() {
    // A plain-LoRA reading of this adapter is 0.34 off, the base model alone 9 off; measured
    // 2–3e-5 (with an f16 key/value cache, llama.cpp's, it was about 0.04).
    let d = float_max_diff(model(QWEN), Some("qwen2-0.5b-dora"), "qwen2-0.5b__dora__1.0.json", 1.0);
    assert!(d < 1e-3, "DoRA float path max |Δlogit| {d}");
}

#[test]
fn qwen_pirate_float_path_is_exact() {
    // A PEFT-to-GGUF conversion that drops use_rslora would be √16 = 4× too weak.
    let d = float_max_diff(
        model(QWEN),
        Some("qwen2-0.5b-pirate"),
        "qwen2-0.5b__pirate__1.0.json",
        1.0,
    );
    // Measured 1–2e-5.
    assert!(d < 1e-3, "rsLoRA float path max |Δlogit| {d}");
}

#[test]
fn tinyllama_lora_scale_1_and_half() {
    check_quantized(tinyllama(), "tinyllama-a-lora", "tinyllama-a__lora__1.0.json", 1.0);
    check_quantized(tinyllama(), "tinyllama-a-lora", "tinyllama-a__lora__0.5.json", 0.5);
}

#[test]
fn tinyllama_q_k_rows_are_permuted() {
    // The reference ran the float32 HF weights; this GGUF is Q8_0: noise about 0.03.
    let ok = float_max_diff(
        tinyllama(),
        Some("tinyllama-a-lora"),
        "tinyllama-a__lora__1.0.json",
        1.0,
    );
    let wrong = float_max_diff(
        tinyllama(),
        Some("tinyllama-a-lora"),
        "tinyllama-a__lora-qk-unpermuted__1.0.json",
        1.0,
    );
    assert!(ok < 0.1, "permuted: max |Δlogit| {ok}");
    assert!(wrong > 0.5, "the unpermuted reference should be far: {wrong}");
}

#[test]
fn gguf_lora_equals_peft_folder() {
    let m = Model::load(tinyllama()).unwrap();
    let ids: Vec<u32> = vec![785, 3974, 13876, 38835];
    let mut out = Vec::new();
    for a in ["tinyllama-a-lora", "tinyllama-a-lora.gguf"] {
        let plan = LoraPlan::new(&m, &[(handle(&m, &adapter(a)), 1.0)]).unwrap();
        let mut kv = m.new_kv_cache(16);
        out.push(m.forward_with(&mut kv, &ids, Logits::Last, &plan).unwrap());
    }
    let max = out[0].iter().map(|v| v.abs()).fold(0f32, f32::max);
    let diff = out[0]
        .iter()
        .zip(&out[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= 1e-4 * max,
        "GGUF LoRA vs PEFT: max |Δ| {diff} (max |logit| {max})"
    );
}

// Baked into Q8_0, the adapters meet the quantized path's tolerances where the tensors' own
// types do not: at half scale most of gemma's jargon change is smaller than a Q5_0/Q4_K step
// and requantizing keeps 53% of it (the bake warns), so its greedy text loses the jargon.
#[test]
fn gemma_jargon_scale_half_baked_q8_0() {
    let kept = check_baked(
        model(GEMMA),
        "gemma3-270m-jargon",
        "gemma3-270m__jargon__0.5.json",
        0.5,
        BakeType::Q8_0,
    )
    .kept;
    assert!(kept > 0.995, "q8_0 bake kept {kept}");
}

#[test]
fn qwen_pirate_scale_half_baked_q8_0() {
    let kept = check_baked(
        model(QWEN),
        "qwen2-0.5b-pirate",
        "qwen2-0.5b__pirate__0.5.json",
        0.5,
        BakeType::Q8_0,
    )
    .kept;
    assert!(kept > 0.995, "q8_0 bake kept {kept}");
}

// At scale 1 the pirate adapter's change is large against the Q4_K/Q5_0 steps: requantizing to
// the own types keeps 98% of it (no warning) and still meets the tolerances.
#[test]
fn qwen_pirate_scale_1_baked_same_types() {
    let kept = check_baked(
        model(QWEN),
        "qwen2-0.5b-pirate",
        "qwen2-0.5b__pirate__1.0.json",
        1.0,
        BakeType::Same,
    )
    .kept;
    assert!(kept > KEPT_WARN && kept < 0.995, "same-type bake kept {kept}");
}

// The tiny llama's ffn_down rows (688) are not whole Q8_0 blocks: a q8_0 bake keeps them as F16.
#[test]
fn tinyllama_baked_q8_0() {
    let report = check_baked(
        tinyllama(),
        "tinyllama-a-lora",
        "tinyllama-a__lora__1.0.json",
        1.0,
        BakeType::Q8_0,
    );
    for (name, ty) in &report.tensors {
        let want = if name.contains("ffn_down") {
            quant::GgmlType::F16
        } else {
            quant::GgmlType::Q8_0
        };
        assert_eq!(*ty, want, "{name}");
    }
    assert!(report.kept > 0.995, "q8_0 bake kept {}", report.kept);
}

#[test]
fn gemma_float_path_is_exact() {
    // GELU in f32 as PyTorch computes it and an f32 key/value cache: measured 1–3e-5 (llama.cpp's
    // f16 GELU table would leave 0.008 / 0.009, the f16 cache 0.005).
    for (a, f) in [
        (None, "gemma3-270m__base__1.0.json"),
        (Some("gemma3-270m-jargon"), "gemma3-270m__jargon__1.0.json"),
    ] {
        let d = float_max_diff(model(GEMMA), a, f, 1.0);
        assert!(d < 1e-3, "{f}: float path max |Δlogit| {d}");
    }
}

/// Mean KL(float ‖ quantized) over the decode steps of the reference prompts, teacher-forced
/// on the reference's greedy tokens (16 steps each): `model` with the adapter at scale 1,
/// decoding with each of `acts`, against the float path.
fn decode_kl(model_path: PathBuf, adapter_dir: &str, reference_file: &str, acts: &[quant::Activations]) -> Vec<f64> {
    let steps = |float: bool, acts: quant::Activations| -> Vec<Vec<f32>> {
        let mut m = Model::load(&model_path).unwrap();
        m.float_reference = float;
        m.decode_activations = acts;
        let plan = LoraPlan::new(&m, &[(handle(&m, &adapter(adapter_dir)), 1.0)]).unwrap();
        let mut all = Vec::new();
        for p in reference(reference_file)["prompts"].as_array().unwrap() {
            let ids = ids_of(&p["input_ids"]);
            let mut kv = m.new_kv_cache(ids.len() + 17);
            m.forward_with(&mut kv, &ids, Logits::Last, &plan).unwrap();
            for &t in &ids_of(&p["greedy"]["new_ids"])[..16] {
                all.push(m.decode_with(&mut kv, t, &plan).unwrap());
            }
        }
        all
    };
    let log_softmax = |v: &[f32]| -> Vec<f64> {
        let max = v.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let lse = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        v.iter().map(|&x| x as f64 - lse).collect()
    };
    let f: Vec<Vec<f64>> = steps(true, quant::Activations::default())
        .iter()
        .map(|a| log_softmax(a))
        .collect();
    let kl = |q: Vec<Vec<f32>>| -> f64 {
        let sum: f64 = f
            .iter()
            .zip(&q)
            .map(|(la, b)| {
                la.iter()
                    .zip(&log_softmax(b))
                    .map(|(p, q)| p.exp() * (p - q))
                    .sum::<f64>()
            })
            .sum();
        sum / f.len() as f64
    };
    acts.iter().map(|&a| kl(steps(false, a))).collect()
}

/// Decoding with the quantized remainder ([`quant::Activations::Residual`], the default)
/// follows the float model (transformers + PEFT's numerics) much more closely than one Q8
/// row as llama.cpp does: measured 0.21× the mean KL on gemma + jargon-bf16, 0.40× on qwen +
/// pirate.
#[test]
fn decode_with_the_remainder_is_closer_to_float() {
    for (model_path, adapter_dir, reference_file, at_most) in [
        (
            model(GEMMA),
            "gemma3-270m-jargon-bf16",
            "gemma3-270m__jargon-bf16__1.0.json",
            0.4,
        ),
        (model(QWEN), "qwen2-0.5b-pirate", "qwen2-0.5b__pirate__1.0.json", 0.6),
    ] {
        let acts = [quant::Activations::Residual, quant::Activations::VecDotType];
        let [res, q8] = decode_kl(model_path, adapter_dir, reference_file, &acts)[..] else {
            unreachable!()
        };
        eprintln!("{adapter_dir}: mean KL from float {res:.2e} with the remainder, {q8:.2e} with one Q8 row");
        assert!(res < at_most * q8, "{adapter_dir}: {res} against {q8}");
    }
}

/// With one 8-bit pass in decode (`LoadOptions::decode_activations`, the CLI's
/// `--q8-decode`) a generated token's logits are bit for bit those of the same position in a
/// prompt batch (the one-token and batch kernels agree); with the remainder they are not. The
/// default is the CPU's ([`quant::Activations::decode_default`]).
#[test]
fn q8_decode_computes_as_the_prompt_does() {
    let p = &reference("gemma3-270m__jargon-bf16__1.0.json")["prompts"][0];
    let ids = ids_of(&p["input_ids"]);
    let n = ids.len();
    let decoded_and_batched = |acts: Option<quant::Activations>| -> (Vec<f32>, Vec<f32>) {
        let opts = runtime::LoadOptions {
            decode_activations: acts,
            ..Default::default()
        };
        let e = runtime::Engine::load(model(GEMMA), &opts).unwrap();
        let m = e.model();
        assert_eq!(
            m.decode_activations,
            acts.unwrap_or(quant::Activations::decode_default())
        );
        let plan = LoraPlan::new(&m, &[(handle(&m, &adapter("gemma3-270m-jargon-bf16")), 1.0)]).unwrap();
        let mut kv = m.new_kv_cache(n);
        let all = m.forward_with(&mut kv, &ids, Logits::All, &plan).unwrap();
        let mut kv = m.new_kv_cache(n);
        m.forward_with(&mut kv, &ids[..n - 1], Logits::None, &plan).unwrap();
        let step = m.decode_with(&mut kv, ids[n - 1], &plan).unwrap();
        (step, all[(n - 1) * m.config.n_vocab..].to_vec())
    };
    let (step, batch) = decoded_and_batched(Some(quant::Activations::VecDotType));
    assert!(step.iter().zip(&batch).all(|(a, b)| a.to_bits() == b.to_bits()));
    let (step, batch) = decoded_and_batched(Some(quant::Activations::Residual));
    let diff = lora_run_tests::max_diff(&step, &batch);
    assert!(diff > 1e-3, "the remainder changed nothing: {diff}");
    decoded_and_batched(None);
}
