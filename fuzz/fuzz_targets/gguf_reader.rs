//! Fuzz the GGUF reader: any bytes must parse or give a typed error, never panic, read out of
//! bounds or allocate by an untrusted count; whatever parses must have its tensors in bounds
//! and survive inspection and a rewrite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime::gguf::{GgufFile, GgufWriter};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::from_bytes(data.to_vec()) {
        let mut w = GgufWriter::new();
        w.metadata = f.metadata().clone();
        for t in f.tensors() {
            let v = f.view(t);
            assert_eq!(v.data.len() as u64, t.size);
            let _ = v.to_f32();
            w.add_tensor(t.name.clone(), t.shape.clone(), t.ty, v.data);
        }
        let _ = runtime::inspect::Inspection::of_file(&f, "fuzz");
        let mut out = Vec::new();
        w.write_to(&mut out).expect("a parsed file can be written back");
        let again = GgufFile::from_bytes(out.clone()).expect("a written file parses");
        // Writing what was read back again gives the same bytes (compared as bytes: NaN
        // metadata values are not equal to themselves).
        let mut w2 = GgufWriter::new();
        w2.metadata = again.metadata().clone();
        for t in again.tensors() {
            w2.add_tensor(t.name.clone(), t.shape.clone(), t.ty, again.view(t).data);
        }
        let mut out2 = Vec::new();
        w2.write_to(&mut out2).expect("a parsed file can be written back");
        assert_eq!(out, out2);
    }
});
