//! Q6_K: 256-value super-blocks of 6-bit quants with 16 signed 8-bit sub-block scales.
//! Layout (ggml's block_q6_K): the byte ranges below.
#![allow(non_snake_case)]

use super::common::{f16_bits, make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::QuantType;
use super::QK_K;
use crate::fp16::{
    ggml_compute_fp16_to_fp32 as fp16_to_fp32, ggml_compute_fp32_to_fp16 as fp32_to_fp16,
};

pub const BLOCK_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q6_K as u32);

use std::ops::Range;
/// block_q6_K's fields: the low four bits, the high two bits, the signed 8-bit sub-block
/// scales and the super-block scale.
pub const QL: Range<usize> = 0..QK_K / 2;
pub const QH: Range<usize> = QL.end..QL.end + QK_K / 4;
pub const SCALES: Range<usize> = QH.end..QH.end + QK_K / 16;
pub const D: Range<usize> = SCALES.end..SCALES.end + 2;
const _: () = assert!(D.end == BLOCK_BYTES);

/// Both ggml paths in one: they differ only in the weights handed to make_qx_quants
/// (x² for the reference path, the importance vector as it is for the weighted one).
fn quantize_blocks(x: &[f32], y: &mut [u8], nb: usize, quant_weights: Option<&[f32]>) {
    let mut L = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for i in 0..nb {
        let x = &x[i * QK_K..(i + 1) * QK_K];
        let y = &mut y[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
        for ib in 0..QK_K / 16 {
            let qw = quant_weights.map(|q| &q[QK_K * i + 16 * ib..QK_K * i + 16 * ib + 16]);
            scales[ib] = make_qx_quants(16, 32, &x[16 * ib..], &mut L[16 * ib..], 1, qw);
        }
        finish_block(x, &mut L, &scales, y);
    }
}

/// Everything after the 16 sub-block scale searches: the 8-bit scales, `d`, the
/// re-quantization and the packing (shared with the lane-parallel fast path).
pub(crate) fn finish_block(x: &[f32], L: &mut [i8; QK_K], scales: &[f32; QK_K / 16], y: &mut [u8]) {
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &scale in scales {
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0f32 / max_scale;
    let d16 = fp32_to_fp16(1.0 / iscale);
    y[D].copy_from_slice(&d16.to_le_bytes());
    for ib in 0..QK_K / 16 {
        y[192 + ib] = 127.min(nearest_int(iscale * scales[ib])) as i8 as u8;
    }
    let d = fp16_to_fp32(d16);
    for j in 0..QK_K / 16 {
        let dd = d * (y[192 + j] as i8) as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / dd).clamp(-32, 31);
            L[16 * j + ii] = (l + 32) as i8;
        }
    }
    pack_levels(L, y);
}

/// The levels L (0..63) into the low-nibble and high-two-bit planes.
#[inline(always)]
pub(crate) fn pack_levels(L: &[i8; QK_K], y: &mut [u8]) {
    let (ql, rest) = y.split_at_mut(QL.end);
    let qh = &mut rest[..QH.len()];
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        for l in 0..32 {
            let q1 = L[j + l] as u8;
            let q2 = L[j + l + 32] as u8;
            let q3 = L[j + l + 64] as u8;
            let q4 = L[j + l + 96] as u8;
            ql[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            ql[64 * h + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            qh[32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

pub fn quantize_row_q6_K_ref(x: &[f32], y: &mut [u8], k: usize) {
    quantize_blocks(x, y, k / QK_K, None);
}

pub fn quantize_row_q6_K_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    quantize_blocks(x, y, n_per_row / QK_K, Some(quant_weights));
}

pub fn dequantize_row_q6_K(x: &[u8], y: &mut [f32], k: usize) {
    for (block, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y[..k].chunks_exact_mut(QK_K))
    {
        let d = fp16_to_fp32(f16_bits(block, D));
        for h in 0..2 {
            let ql = &block[64 * h..64 * h + 64];
            let qh = &block[128 + 32 * h..128 + 32 * h + 32];
            let sc = &block[192 + 8 * h..192 + 8 * h + 8];
            let out = &mut out[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}
