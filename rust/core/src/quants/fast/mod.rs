//! Fast paths: the same ggml algorithms with independent sub-blocks run side by side in
//! SIMD lanes (see `lanes`). Each produces exactly the bytes of the scalar port, which stays
//! as the oracle (`cargo test` compares the two on random and adversarial data).
//!
//! The kernels are compiled twice, plain and with AVX2 enabled, and picked at run time.
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

/// One row through the fast path: every quantized type has one (the match above is exhaustive
/// over `QuantType`, so a new type cannot be forgotten); the caller sends float types to the
/// reference path.
pub fn quantize_row_fast(qtype: QuantType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { dispatch_avx2(qtype, x, y, imatrix) };
            return;
        }
    }
    dispatch(qtype, x, y, imatrix)
}
