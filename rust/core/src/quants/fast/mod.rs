//! Fast paths: the same ggml algorithms with independent sub-blocks run side by side in
//! SIMD lanes (see `lanes`). Each produces exactly the bytes of the scalar port, which stays
//! as the oracle (`cargo test` compares the two on random and adversarial data).
//!
//! The kernels are compiled three times, plain, with AVX2 and with AVX-512 enabled, and
//! picked at run time (`Simd`).
#![allow(non_snake_case)]

mod iq4_nl;
mod lanes;
mod legacy;
mod q2_k;
mod q3_k;
mod q45_k;
mod q6_k;
mod simple;

use super::QuantType;

#[inline(always)]
fn dispatch(qtype: QuantType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    match (qtype, imatrix) {
        (QuantType::Q2_K, w) => q2_k::quantize_row_q2_K_fast(x, y, w),
        (QuantType::Q3_K, None) => q3_k::quantize_row_q3_K_ref_fast(x, y),
        (QuantType::Q3_K, Some(w)) => q3_k::quantize_row_q3_K_impl_fast(x, y, w),
        (QuantType::Q6_K, w) => q6_k::quantize_row_q6_K_fast(x, y, w),
        (QuantType::Q4_K, w) => q45_k::quantize_row_q45_K_fast(x, y, w, false),
        (QuantType::Q5_K, w) => q45_k::quantize_row_q45_K_fast(x, y, w, true),
        (QuantType::IQ4_NL, w) => iq4_nl::quantize_iq4_nl_fast(x, y, w),
        (QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1, Some(w)) => {
            legacy::quantize_row_legacy_impl_fast(qtype, x, y, w)
        }
        // Q8_0 ignores the importance vector, as ggml does.
        (QuantType::Q8_0, _)
        | (QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1, None) => {
            simple::quantize_row_simple_ref_fast(qtype, x, y)
        }
        // the float types are conversions, not quantizers: the caller sends them to the
        // reference path (`QuantType::is_quantized`)
        (QuantType::F32 | QuantType::F16 | QuantType::BF16, _) => {
            unreachable!("no fast path for {}", qtype.name())
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dispatch_avx2(qtype: QuantType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    dispatch(qtype, x, y, imatrix)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2")]
unsafe fn dispatch_avx512(qtype: QuantType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    dispatch(qtype, x, y, imatrix)
}

/// The instruction sets the kernels are compiled for. The same Rust code is compiled for
/// each (the compiler never reassociates or fuses floats), so every level gives the same
/// bytes; a wider one only runs more lanes per instruction: Q3_K's 16 sub-blocks fill one
/// 512-bit register instead of two 256-bit ones (benches/bench_quantize.py --simd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Plain,
}

impl Simd {
    pub const ALL: [Simd; 3] = [Simd::Avx512, Simd::Avx2, Simd::Plain];

    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2 => "avx2",
            Simd::Plain => "plain",
        }
    }

    /// Whether this CPU runs the level.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Simd::Avx512 => {
                    has!("avx512f")
                        && has!("avx512bw")
                        && has!("avx512dq")
                        && has!("avx512vl")
                        && has!("avx2")
                }
                Simd::Avx2 => has!("avx2"),
                Simd::Plain => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Simd::Plain
        }
    }

    /// The level rows go through: the widest this CPU runs, no wider than the one the
    /// environment's `SIMPO_Q_SIMD` names (plain, avx2, avx512; the CLI refuses other values)
    /// — for benchmarks and for ruling the wide kernels out on a suspect machine. Read once.
    pub fn chosen() -> Simd {
        static CHOSEN: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| Simd::widest_up_to(std::env::var("SIMPO_Q_SIMD").ok().as_deref()))
    }

    /// The widest level this CPU runs that is no wider than `asked` (any, when `asked` is
    /// None or names no level).
    pub fn widest_up_to(asked: Option<&str>) -> Simd {
        let cap = asked
            .and_then(|a| Simd::ALL.iter().position(|s| s.name() == a))
            .unwrap_or(0);
        Simd::ALL[cap..]
            .iter()
            .copied()
            .find(|s| s.supported())
            .unwrap_or(Simd::Plain)
    }
}

/// One row through the fast path at the chosen SIMD level: every quantized type has one (the
/// match above is exhaustive over `QuantType`, so a new type cannot be forgotten); the caller
/// sends float types to the reference path.
pub fn quantize_row_fast(qtype: QuantType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    quantize_row_fast_at(Simd::chosen(), qtype, x, y, imatrix)
}

/// `quantize_row_fast` at a given level (tests compare every level the CPU runs with the
/// scalar port). A level the CPU does not run falls back to the plain kernels.
pub fn quantize_row_fast_at(
    simd: Simd,
    qtype: QuantType,
    x: &[f32],
    y: &mut [u8],
    imatrix: Option<&[f32]>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd != Simd::Plain && simd.supported() {
            match simd {
                // SAFETY: the CPU runs these instruction sets, checked just above.
                Simd::Avx512 => unsafe { dispatch_avx512(qtype, x, y, imatrix) },
                Simd::Avx2 => unsafe { dispatch_avx2(qtype, x, y, imatrix) },
                Simd::Plain => unreachable!(),
            }
            return;
        }
    }
    let _ = simd;
    dispatch(qtype, x, y, imatrix)
}
