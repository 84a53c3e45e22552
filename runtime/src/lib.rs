//! lora-run runtime.
