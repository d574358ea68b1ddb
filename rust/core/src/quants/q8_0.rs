//! Q8_0: 32 int8 quants and an f16 scale. ggml ignores the importance matrix for it.
#![allow(non_snake_case)]

use super::common::c_f32_to_i32;
use super::QuantType;
use crate::fp16::{
    ggml_compute_fp16_to_fp32 as fp16_to_fp32, ggml_compute_fp32_to_fp16 as fp32_to_fp16,
};

pub const QK8_0: usize = 32;
pub const BLOCK_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q8_0 as u32);

pub fn quantize_row_q8_0_ref(x: &[f32], y: &mut [u8], k: usize) {
    for (xb, yb) in x[..k]
        .chunks_exact(QK8_0)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
    {
        let mut amax = 0.0f32;
        for &v in xb {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
        for (q, &v) in yb[2..].iter_mut().zip(xb) {
            // roundf: halves away from zero, unlike nearest_int elsewhere.
            *q = c_f32_to_i32((v * id).round()) as u8;
        }
    }
}

pub fn dequantize_row_q8_0(x: &[u8], y: &mut [f32], k: usize) {
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y[..k].chunks_exact_mut(QK8_0))
    {
        let d = fp16_to_fp32(u16::from_le_bytes([b[0], b[1]]));
        for (o, &q) in out.iter_mut().zip(&b[2..]) {
            *o = (q as i8) as f32 * d;
        }
    }
}
