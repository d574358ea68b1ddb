//! IQ4_NL: 32 values as 4-bit indices into a fixed non-linear codebook, with an f16 scale.
//! ggml always takes the search path (`quantize_row_iq4_nl_impl`, ntry 7), with x² weights
//! when there is no importance matrix.
#![allow(non_snake_case)]

use super::common::{best_index_int8, GROUP_MAX_EPS};
use super::QuantType;
use crate::fp16::{
    ggml_compute_fp16_to_fp32 as fp16_to_fp32, ggml_compute_fp32_to_fp16 as fp32_to_fp16,
};

pub const QK4_NL: usize = 32;
pub const BLOCK_BYTES: usize = crate::ggml_types::block_bytes(QuantType::IQ4_NL as u32);

pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The single-block case of ggml's `quantize_row_iq4_nl_impl` (super-block = block = 32),
/// the only one IQ4_NL uses. Writes d and the 16 packed bytes of one block.
pub fn quantize_row_iq4_nl_impl(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>, ntry: i32) {
    let values = &KVALUES_IQ4NL;
    let mut weight = [0f32; QK4_NL];
    let mut L = [0u8; QK4_NL];
    let xb = &x[..QK4_NL];

    let mut sigma2 = 0.0f32;
    for &v in xb {
        sigma2 += v * v;
    }
    sigma2 *= 2.0f32 / QK4_NL as f32;

    match quant_weights {
        Some(qw) => {
            for j in 0..QK4_NL {
                weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
            }
        }
        None => {
            for j in 0..QK4_NL {
                weight[j] = xb[j] * xb[j];
            }
        }
    }
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let scale = if amax < GROUP_MAX_EPS {
        0.0
    } else {
        let v0 = values[0] as f32;
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let search = |id: f32, lb: &mut [u8; QK4_NL]| {
            let mut sumqx = 0.0f32;
            let mut sumq2 = 0.0f32;
            for j in 0..QK4_NL {
                let l = best_index_int8(16, values, id * xb[j]);
                lb[j] = l as u8;
                let q = values[l] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            (sumqx, sumq2)
        };
        let (sumqx, sumq2) = search(1.0 / d, &mut L);
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            let id = (itry + values[0] as i32) as f32 / max;
            let (sumqx, sumq2) = search(id, &mut L);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        d
    };
    y[..2].copy_from_slice(&fp32_to_fp16(scale).to_le_bytes());
    if ntry > 0 {
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for j in 0..QK4_NL {
            L[j] = best_index_int8(16, values, id * xb[j]) as u8;
        }
    }
    for j in 0..QK4_NL / 2 {
        y[2 + j] = L[j] | (L[j + QK4_NL / 2] << 4);
    }
}

/// ggml's `quantize_iq4_nl` for one row.
pub fn quantize_iq4_nl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: Option<&[f32]>) {
    for ib in 0..n_per_row / QK4_NL {
        let qw = quant_weights.map(|q| &q[QK4_NL * ib..QK4_NL * (ib + 1)]);
        quantize_row_iq4_nl_impl(
            &x[QK4_NL * ib..],
            &mut y[BLOCK_BYTES * ib..BLOCK_BYTES * (ib + 1)],
            qw,
            7,
        );
    }
}

pub fn dequantize_row_iq4_nl(x: &[u8], y: &mut [f32], k: usize) {
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y[..k].chunks_exact_mut(QK4_NL))
    {
        let d = fp16_to_fp32(u16::from_le_bytes([b[0], b[1]]));
        for j in 0..QK4_NL / 2 {
            out[j] = d * KVALUES_IQ4NL[(b[2 + j] & 0xF) as usize] as f32;
            out[j + QK4_NL / 2] = d * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
        }
    }
}
