//! IQ4_NL with 8 blocks of a row in 8 lanes (ggml's `quantize_row_iq4_nl_impl`, ntry 7).
//! Leftover blocks take the scalar port, which works block by block.

use super::lanes::{best_index_lanes, signed_absmax_lanes};
use crate::fp16::ggml_compute_fp32_to_fp16 as fp32_to_fp16;
use crate::quants::common::GROUP_MAX_EPS;
use crate::quants::iq4_nl::{quantize_row_iq4_nl_impl, BLOCK_BYTES, KVALUES_IQ4NL, QK4_NL};

const G: usize = 8;
const NTRY: i32 = 7;

#[inline(always)]
pub fn quantize_iq4_nl_fast(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    let values = &KVALUES_IQ4NL;
    let nb = x.len() / QK4_NL;
    let groups = nb / G;
    for g in 0..groups {
        let mut xt = [[0f32; G]; QK4_NL];
        let mut wt = [[0f32; G]; QK4_NL];
        let mut sigma2 = [0f32; G];
        for j in 0..G {
            let xb = &x[QK4_NL * (g * G + j)..];
            for i in 0..QK4_NL {
                xt[i][j] = xb[i];
                sigma2[j] += xb[i] * xb[i];
            }
            sigma2[j] *= 2.0f32 / QK4_NL as f32;
        }
        for i in 0..QK4_NL {
            for j in 0..G {
                let v = xt[i][j];
                wt[i][j] = match quant_weights {
                    Some(q) => q[QK4_NL * (g * G + j) + i] * (sigma2[j] + v * v).sqrt(),
                    None => v * v,
                };
            }
        }
        let (amax, max) = signed_absmax_lanes(&xt);
        let search = |id: &[f32; G]| {
            let mut sumqx = [0f32; G];
            let mut sumq2 = [0f32; G];
            for i in 0..QK4_NL {
                let mut al = [0f32; G];
                for j in 0..G {
                    al[j] = id[j] * xt[i][j];
                }
                let idx = best_index_lanes(values, &al);
                for j in 0..G {
                    let q = values[idx[j] as usize] as f32;
                    let w = wt[i][j];
                    sumqx[j] += w * q * xt[i][j];
                    sumq2[j] += w * q * q;
                }
            }
            (sumqx, sumq2)
        };
        let v0 = values[0] as f32;
        let mut id = [0f32; G];
        for j in 0..G {
            id[j] = 1.0 / (-max[j] / v0);
        }
        let (sumqx, sumq2) = search(&id);
        let mut d = [0f32; G];
        let mut best = [0f32; G];
        for j in 0..G {
            d[j] = if sumq2[j] > 0.0 {
                sumqx[j] / sumq2[j]
            } else {
                0.0
            };
            best[j] = d[j] * sumqx[j];
        }
        for itry in -NTRY..=NTRY {
            let num = (itry + values[0] as i32) as f32;
            for j in 0..G {
                id[j] = num / max[j];
            }
            let (sumqx, sumq2) = search(&id);
            for j in 0..G {
                let take = (sumq2[j] > 0.0) & (sumqx[j] * sumqx[j] > best[j] * sumq2[j]);
                let s = sumqx[j] / sumq2[j];
                d[j] = if take { s } else { d[j] };
                best[j] = if take { s * sumqx[j] } else { best[j] };
            }
        }
        for j in 0..G {
            d[j] = if amax[j] < GROUP_MAX_EPS { 0.0 } else { d[j] };
            id[j] = if d[j] != 0.0 { 1.0 / d[j] } else { 0.0 };
        }
        let mut lt = [[0u8; G]; QK4_NL];
        for i in 0..QK4_NL {
            let mut al = [0f32; G];
            for j in 0..G {
                al[j] = id[j] * xt[i][j];
            }
            lt[i] = best_index_lanes(values, &al);
        }
        for j in 0..G {
            let yb = &mut y[BLOCK_BYTES * (g * G + j)..BLOCK_BYTES * (g * G + j + 1)];
            yb[..2].copy_from_slice(&fp32_to_fp16(d[j]).to_le_bytes());
            for i in 0..QK4_NL / 2 {
                yb[2 + i] = lt[i][j] | (lt[i + QK4_NL / 2][j] << 4);
            }
        }
    }
    for ib in groups * G..nb {
        let qw = quant_weights.map(|q| &q[QK4_NL * ib..QK4_NL * (ib + 1)]);
        quantize_row_iq4_nl_impl(
            &x[QK4_NL * ib..],
            &mut y[BLOCK_BYTES * ib..BLOCK_BYTES * (ib + 1)],
            qw,
            NTRY,
        );
    }
}
