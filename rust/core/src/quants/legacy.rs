//! The 32-value block types llama.cpp's file-type policy falls back to:
//! Q4_0 (d, qs[16]), Q4_1 (d, m, qs[16]), Q5_0 (d, qh u32, qs[16]), Q5_1 (d, m, qh u32, qs[16]).
#![allow(non_snake_case)]

use super::common::{c_f32_to_i32, make_qkx3_quants, make_qx_quants};
use super::QuantType;
use crate::fp16::{
    ggml_compute_fp16_to_fp32 as fp16_to_fp32, ggml_compute_fp32_to_fp16 as fp32_to_fp16,
};

pub const QK: usize = 32;
pub const Q4_0_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q4_0 as u32);
pub const Q4_1_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q4_1 as u32);
pub const Q5_0_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q5_0 as u32);
pub const Q5_1_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q5_1 as u32);

#[inline]
fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
}

#[inline]
fn get_f16(y: &[u8], at: usize) -> f32 {
    fp16_to_fp32(u16::from_le_bytes([y[at], y[at + 1]]))
}

/// The signed value of largest magnitude (the first one on ties), as the _0 types use.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Mean square of the whole row: the legacy importance paths weigh by it (no factor 2).
#[inline]
pub(crate) fn row_sigma2(x: &[f32], n_per_row: usize) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in &x[..n_per_row] {
        sum_x2 += v * v;
    }
    sum_x2 / n_per_row as f32
}

#[inline]
pub(crate) fn importance_weights(xb: &[f32], qw: &[f32], sigma2: f32, weight: &mut [f32; QK]) {
    for j in 0..QK {
        weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
}

#[inline]
fn pack_qh(qh: &mut u32, j: usize, xi0: u8, xi1: u8) {
    *qh |= (((xi0 & 0x10) >> 4) as u32) << j;
    *qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
}

pub fn quantize_row_q4_0_ref(x: &[f32], y: &mut [u8], k: usize) {
    for (xb, yb) in x[..k].chunks_exact(QK).zip(y.chunks_exact_mut(Q4_0_BYTES)) {
        let max = signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(yb, 0, d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = 15.min(c_f32_to_i32(x0 + 8.5) as i8) as u8;
            let xi1 = 15.min(c_f32_to_i32(x1 + 8.5) as i8) as u8;
            yb[2 + j] = xi0 | (xi1 << 4);
        }
    }
}

pub fn quantize_row_q4_1_ref(x: &[f32], y: &mut [u8], k: usize) {
    for (xb, yb) in x[..k].chunks_exact(QK).zip(y.chunks_exact_mut(Q4_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(yb, 0, d);
        put_f16(yb, 2, min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let xi0 = 15.min(c_f32_to_i32(x0 + 0.5) as i8) as u8;
            let xi1 = 15.min(c_f32_to_i32(x1 + 0.5) as i8) as u8;
            yb[4 + j] = xi0 | (xi1 << 4);
        }
    }
}

pub fn quantize_row_q5_0_ref(x: &[f32], y: &mut [u8], k: usize) {
    for (xb, yb) in x[..k].chunks_exact(QK).zip(y.chunks_exact_mut(Q5_0_BYTES)) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(yb, 0, d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = 31.min(c_f32_to_i32(x0 + 16.5) as i8) as u8;
            let xi1 = 31.min(c_f32_to_i32(x1 + 16.5) as i8) as u8;
            yb[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            pack_qh(&mut qh, j, xi0, xi1);
        }
        yb[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

pub fn quantize_row_q5_1_ref(x: &[f32], y: &mut [u8], k: usize) {
    for (xb, yb) in x[..k].chunks_exact(QK).zip(y.chunks_exact_mut(Q5_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(yb, 0, d);
        put_f16(yb, 2, min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let xi0 = c_f32_to_i32(x0 + 0.5) as u8;
            let xi1 = c_f32_to_i32(x1 + 0.5) as u8;
            yb[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            pack_qh(&mut qh, j, xi0, xi1);
        }
        yb[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Packs one Q4_0 block from make_qx_quants' levels (already offset by +8).
#[inline(always)]
pub(crate) fn pack_q4_0_block(yb: &mut [u8], d: f32, L: &[i8; QK]) {
    put_f16(yb, 0, d);
    for j in 0..QK / 2 {
        yb[2 + j] = L[j] as u8 | ((L[j + QK / 2] as u8) << 4);
    }
}

#[inline(always)]
pub(crate) fn pack_q5_0_block(yb: &mut [u8], d: f32, L: &[i8; QK]) {
    put_f16(yb, 0, d);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = L[j] as u8;
        let xi1 = L[j + QK / 2] as u8;
        yb[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        pack_qh(&mut qh, j, xi0, xi1);
    }
    yb[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Packs one Q4_1 block: d, m = −(make_qkx3's the_min), levels.
#[inline(always)]
pub(crate) fn pack_q4_1_block(yb: &mut [u8], d: f32, the_min: f32, L: &[u8; QK]) {
    put_f16(yb, 0, d);
    put_f16(yb, 2, -the_min);
    for j in 0..QK / 2 {
        yb[4 + j] = L[j] | (L[j + QK / 2] << 4);
    }
}

#[inline(always)]
pub(crate) fn pack_q5_1_block(yb: &mut [u8], d: f32, the_min: f32, L: &[u8; QK]) {
    put_f16(yb, 0, d);
    put_f16(yb, 2, -the_min);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = L[j];
        let xi1 = L[j + QK / 2];
        yb[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        pack_qh(&mut qh, j, xi0, xi1);
    }
    yb[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// The body of ggml's per-block loop in `quantize_row_q{4,5}_{0,1}_impl`: importance weights
/// from the row's sigma2, then one search — make_qx_quants for the _0 types (levels offset
/// as ggml stores them), make_qkx3_quants for the _1 types. The fast paths reuse it for the
/// blocks left over after their 8-lane groups.
#[inline]
pub(crate) fn quantize_block_impl(
    qtype: QuantType,
    xb: &[f32],
    yb: &mut [u8],
    qw: &[f32],
    sigma2: f32,
) {
    let mut weight = [0f32; QK];
    importance_weights(xb, qw, sigma2, &mut weight);
    match qtype {
        QuantType::Q4_0 | QuantType::Q5_0 => {
            let mut L = [0i8; QK];
            let nmax = if qtype == QuantType::Q4_0 { 8 } else { 16 };
            let d = make_qx_quants(QK, nmax, xb, &mut L, 1, Some(&weight));
            if qtype == QuantType::Q4_0 {
                pack_q4_0_block(yb, d, &L);
            } else {
                pack_q5_0_block(yb, d, &L);
            }
        }
        QuantType::Q4_1 | QuantType::Q5_1 => {
            let mut L = [0u8; QK];
            let mut laux = [0u8; QK];
            let mut min = 0.0f32;
            let nmax = if qtype == QuantType::Q4_1 { 15 } else { 31 };
            let d = make_qkx3_quants(
                QK,
                nmax,
                xb,
                Some(&weight),
                &mut L,
                &mut min,
                &mut laux,
                -0.9,
                0.05,
                36,
                false,
            );
            if qtype == QuantType::Q4_1 {
                pack_q4_1_block(yb, d, min, &L);
            } else {
                pack_q5_1_block(yb, d, min, &L);
            }
        }
        _ => unreachable!("{} is not a legacy 32-block type", qtype.name()),
    }
}

fn quantize_row_legacy_impl(
    qtype: QuantType,
    x: &[f32],
    y: &mut [u8],
    n_per_row: usize,
    quant_weights: &[f32],
) {
    let sigma2 = row_sigma2(x, n_per_row);
    let blocks = x[..n_per_row]
        .chunks_exact(QK)
        .zip(y.chunks_exact_mut(qtype.type_size()));
    for (ib, (xb, yb)) in blocks.enumerate() {
        quantize_block_impl(
            qtype,
            xb,
            yb,
            &quant_weights[QK * ib..QK * (ib + 1)],
            sigma2,
        );
    }
}

pub fn quantize_row_q4_0_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    quantize_row_legacy_impl(QuantType::Q4_0, x, y, n_per_row, quant_weights)
}

pub fn quantize_row_q5_0_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    quantize_row_legacy_impl(QuantType::Q5_0, x, y, n_per_row, quant_weights)
}

pub fn quantize_row_q4_1_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    quantize_row_legacy_impl(QuantType::Q4_1, x, y, n_per_row, quant_weights)
}

pub fn quantize_row_q5_1_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    quantize_row_legacy_impl(QuantType::Q5_1, x, y, n_per_row, quant_weights)
}

pub fn dequantize_row_q4_0(x: &[u8], y: &mut [f32], k: usize) {
    for (b, out) in x.chunks_exact(Q4_0_BYTES).zip(y[..k].chunks_exact_mut(QK)) {
        let d = get_f16(b, 0);
        for j in 0..QK / 2 {
            out[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
            out[j + QK / 2] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_row_q4_1(x: &[u8], y: &mut [f32], k: usize) {
    for (b, out) in x.chunks_exact(Q4_1_BYTES).zip(y[..k].chunks_exact_mut(QK)) {
        let d = get_f16(b, 0);
        let m = get_f16(b, 2);
        for j in 0..QK / 2 {
            out[j] = (b[4 + j] & 0xF) as f32 * d + m;
            out[j + QK / 2] = (b[4 + j] >> 4) as f32 * d + m;
        }
    }
}

pub fn dequantize_row_q5_0(x: &[u8], y: &mut [f32], k: usize) {
    for (b, out) in x.chunks_exact(Q5_0_BYTES).zip(y[..k].chunks_exact_mut(QK)) {
        let d = get_f16(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..QK / 2 {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((b[6 + j] & 0x0F) as u32 | xh_0) as i32 - 16;
            let x1 = ((b[6 + j] >> 4) as u32 | xh_1) as i32 - 16;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

pub fn dequantize_row_q5_1(x: &[u8], y: &mut [f32], k: usize) {
    for (b, out) in x.chunks_exact(Q5_1_BYTES).zip(y[..k].chunks_exact_mut(QK)) {
        let d = get_f16(b, 0);
        let m = get_f16(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..QK / 2 {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = (b[8 + j] & 0x0F) as u32 | xh_0;
            let x1 = (b[8 + j] >> 4) as u32 | xh_1;
            out[j] = x0 as f32 * d + m;
            out[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}
