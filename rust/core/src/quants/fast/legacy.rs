//! The importance paths of Q4_0, Q5_0, Q4_1 and Q5_1 with 8 blocks of a row in 8 lanes
//! (each block's search is independent; the row's sigma2 is shared). Leftover blocks take
//! the scalar port.

use super::lanes::{make_qkx_quants_lanes, make_qx_quants_lanes};
use crate::quants::legacy::{
    importance_weights, pack_q4_0_block, pack_q4_1_block, pack_q5_0_block, pack_q5_1_block,
    quantize_block_impl, row_sigma2, QK,
};
use crate::quants::QuantType;

const G: usize = 8;

#[inline(always)]
pub fn quantize_row_legacy_impl_fast(
    qtype: QuantType,
    x: &[f32],
    y: &mut [u8],
    quant_weights: &[f32],
) {
    let n = x.len();
    let bs = qtype.type_size();
    let sigma2 = row_sigma2(x, n);
    let groups = n / (QK * G);
    for g in 0..groups {
        let mut xt = [[0f32; G]; QK];
        let mut wt = [[0f32; G]; QK];
        for j in 0..G {
            let ib = g * G + j;
            let xb = &x[QK * ib..QK * (ib + 1)];
            let mut w = [0f32; QK];
            importance_weights(xb, &quant_weights[QK * ib..], sigma2, &mut w);
            for i in 0..QK {
                xt[i][j] = xb[i];
                wt[i][j] = w[i];
            }
        }
        let yg = &mut y[bs * G * g..bs * G * (g + 1)];
        match qtype {
            QuantType::Q4_0 | QuantType::Q5_0 => {
                let nmax = if qtype == QuantType::Q4_0 { 8 } else { 16 };
                let mut lg = [[0i8; QK]; G];
                let d = make_qx_quants_lanes::<QK, G>(nmax, &xt, &wt, &mut lg);
                for j in 0..G {
                    let yb = &mut yg[bs * j..bs * (j + 1)];
                    if qtype == QuantType::Q4_0 {
                        pack_q4_0_block(yb, d[j], &lg[j]);
                    } else {
                        pack_q5_0_block(yb, d[j], &lg[j]);
                    }
                }
            }
            _ => {
                let nmax = if qtype == QuantType::Q4_1 { 15 } else { 31 };
                let mut lg = [[0u8; QK]; G];
                let mut mins = [0f32; G];
                let d = make_qkx_quants_lanes::<QK, G>(
                    nmax, &xt, &wt, &mut lg, &mut mins, -0.9, 0.05, 36, false,
                );
                for j in 0..G {
                    let yb = &mut yg[bs * j..bs * (j + 1)];
                    if qtype == QuantType::Q4_1 {
                        pack_q4_1_block(yb, d[j], mins[j], &lg[j]);
                    } else {
                        pack_q5_1_block(yb, d[j], mins[j], &lg[j]);
                    }
                }
            }
        }
    }
    // Blocks past the last full group: the scalar per-block step, with the row's sigma2.
    for ib in groups * G..n / QK {
        quantize_block_impl(
            qtype,
            &x[QK * ib..QK * (ib + 1)],
            &mut y[bs * ib..bs * (ib + 1)],
            &quant_weights[QK * ib..QK * (ib + 1)],
            sigma2,
        );
    }
}
