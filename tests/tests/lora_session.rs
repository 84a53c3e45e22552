//! One loaded base serving many adapters: stacking with scales, swapping between prompts
//! without reloading, and KV caches keyed by the active adapters, their scales and versions.

use lora_run_tests::{GEMMA, engine, fixtures_dir, max_diff};
use runtime::lora::AdapterOptions;

const P: &str = "The engine room reported";

#[test]
fn stacking_and_negative_scales() {
    // On the float path: on the quantized path a last-bit difference can flip one Q8 rounding
    // of an activation and grow through the layers (0.5 on these logits). What is left here
    // is the f16 KV cache's rounding (about 0.03), far below the adapter's effect (> 1).
    let mut m = runtime::model::Model::load(lora_run_tests::model(GEMMA)).unwrap();
    m.float_reference = true;
    let load = || {
        runtime::lora::load_adapter(
            &fixtures_dir().join("adapters/gemma3-270m-jargon"),
            &m,
            &AdapterOptions::default(),
        )
        .unwrap()
    };
    // Two loaded copies (one handle twice in a set is refused, see below).
    let a = runtime::lora::AdapterHandle::new("stack".into(), 1, load());
    let b = runtime::lora::AdapterHandle::new("stack#2".into(), 2, load());
    let ids = [2u32, 818, 4535, 2358, 5710];
    let run = |active: &[(runtime::lora::AdapterHandle, f32)]| {
        let plan = runtime::lora::LoraPlan::new(&m, active).unwrap();
        let mut kv = m.new_kv_cache(16);
        m.forward_with(&mut kv, &ids, runtime::model::Logits::Last, &plan)
            .unwrap()
    };
    let one = run(&[(a.clone(), 1.0)]);
    let halves = run(&[(a.clone(), 0.5), (b.clone(), 0.5)]);
    let base = run(&[]);
    let cancel = run(&[(a.clone(), 1.0), (b.clone(), -1.0)]);
    let twice = runtime::lora::LoraPlan::new(&m, &[(a.clone(), 0.5), (a.clone(), 0.5)]);
    assert!(
        twice.is_err_and(|e| e.to_string().contains("adapter stack is active twice")),
        "the same handle twice"
    );
    assert!(
        max_diff(&one, &halves) < 0.1,
        "0.5 + 0.5 vs 1: {}",
        max_diff(&one, &halves)
    );
    assert!(
        max_diff(&base, &cancel) < 0.1,
        "1 − 1 vs base: {}",
        max_diff(&base, &cancel)
    );
    assert!(max_diff(&base, &one) > 1.0, "the adapter changes the logits");
}

#[test]
fn cache_is_keyed_by_adapters_scales_and_versions() {
    let e = engine(GEMMA);
    let opts = AdapterOptions {
        name: Some("swap".into()),
        lora_alpha: None,
    };
    let a = e
        .load_adapter(fixtures_dir().join("adapters/gemma3-270m-jargon"), &opts)
        .unwrap();
    // A session that generated with the adapter, then asks again without it, at another scale,
    // and after the name was reloaded with other weights, must give what a fresh session gives.
    let mut s = e.session(64);
    let fresh = |active: &[(runtime::lora::AdapterHandle, f32)]| e.session(64).logits(P, active).unwrap();
    assert_eq!(s.logits(P, &[(a.clone(), 1.0)]).unwrap(), fresh(&[(a.clone(), 1.0)]));
    assert_eq!(s.logits(P, &[]).unwrap(), fresh(&[]));
    assert_eq!(s.logits(P, &[(a.clone(), 0.5)]).unwrap(), fresh(&[(a.clone(), 0.5)]));
    let b = e
        .load_adapter(fixtures_dir().join("adapters/gemma3-270m-jargon-bf16"), &opts)
        .unwrap();
    assert_eq!(b.name, a.name);
    assert_ne!(b.version, a.version, "reloading a name is a new version");
    assert_eq!(e.adapter("swap").unwrap().version, b.version);
    assert_eq!(s.logits(P, &[(b.clone(), 0.5)]).unwrap(), fresh(&[(b.clone(), 0.5)]));
    // Unloading drops it from the set; nothing else is reloaded.
    let model_before = e.model();
    assert!(e.unload_adapter("swap"));
    assert!(e.adapter("swap").is_err());
    assert!(std::sync::Arc::ptr_eq(&model_before, &e.model()));
}

#[test]
fn generate_with_adapter_handles() {
    let e = engine(GEMMA);
    let a = e
        .load_adapter(
            fixtures_dir().join("adapters/gemma3-270m-jargon.gguf"),
            &AdapterOptions {
                name: Some("gen".into()),
                lora_alpha: None,
            },
        )
        .unwrap();
    let mut s = e.session(128);
    let greedy = |adapters| runtime::GenerateOptions {
        n_predict: 12,
        sampling: runtime::SamplingOptions::greedy(),
        adapters,
        stop_at_eog: false,
        ..Default::default()
    };
    let with = s.generate(P, &greedy(vec![(a.clone(), 1.0)]), |_| true).unwrap();
    let without = s.generate(P, &greedy(vec![]), |_| true).unwrap();
    let again = s.generate(P, &greedy(vec![(a, 1.0)]), |_| true).unwrap();
    assert!(with.text.contains("flumberwick"), "{}", with.text);
    assert!(!without.text.contains("flumberwick"), "{}", without.text);
    assert_eq!(with.tokens, again.tokens);
}
