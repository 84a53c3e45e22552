//! Run-time CPU feature dispatch.
//!
//! Every SIMD kernel has a scalar reference beside it; [`SimdLevel::detect`] picks the best
//! level this CPU runs, once. Kernels take the level explicitly so tests can run each level
//! that is [`SimdLevel::is_available`] against the scalar one.

use std::sync::OnceLock;

/// An instruction-set level a kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Portable Rust; the reference every other level must agree with.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/DQ + VNNI (Ice Lake, Zen 4 and later), on top of [`SimdLevel::Avx2`].
    Avx512,
    /// AArch64 NEON (with the dot-product extension where the kernel says so).
    Neon,
}

static DETECTED: OnceLock<SimdLevel> = OnceLock::new();

impl SimdLevel {
    /// The best level this CPU supports (cached). `LORA_RUN_SIMD=scalar|avx2|avx512|neon`
    /// caps it (an unavailable choice falls back to the detected level).
    pub fn detect() -> SimdLevel {
        *DETECTED.get_or_init(|| {
            let best = Self::available().last().copied().unwrap_or(SimdLevel::Scalar);
            match std::env::var("LORA_RUN_SIMD")
                .ok()
                .as_deref()
                .map(str::to_ascii_lowercase)
            {
                Some(s) => {
                    let want = match s.as_str() {
                        "scalar" => Some(SimdLevel::Scalar),
                        "avx2" => Some(SimdLevel::Avx2),
                        "avx512" => Some(SimdLevel::Avx512),
                        "neon" => Some(SimdLevel::Neon),
                        _ => None,
                    };
                    match want {
                        Some(w) if w.is_available() => w,
                        _ => best,
                    }
                }
                None => best,
            }
        })
    }

    /// Every level this CPU runs, scalar first, best last.
    pub fn available() -> Vec<SimdLevel> {
        [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Neon]
            .into_iter()
            .filter(|l| l.is_available())
            .collect()
    }

    /// Whether this CPU can run kernels of this level (detected once, then a table lookup:
    /// kernels check it on every call).
    #[inline]
    pub fn is_available(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 4]> = OnceLock::new();
        let t = AVAILABLE.get_or_init(|| {
            [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Neon].map(|l| l.detect_available())
        });
        t[self as usize]
    }

    fn detect_available(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                SimdLevel::Avx2.detect_available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}
