//! Q4_K and Q5_K with the 8 sub-block (scale, min) searches of a super-block in 8 lanes.

use super::lanes::make_qkx_quants_lanes;
use crate::quants::q45_k::{finish_block, finish_impl_scales, finish_ref_scales};
use crate::quants::QK_K;

#[inline(always)]
pub fn quantize_row_q45_K_fast(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>, q5: bool) {
    let block_bytes = if q5 { 176 } else { 144 };
    let nmax = if q5 { 31 } else { 15 };
    for (b, (x, y)) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(block_bytes))
        .enumerate()
    {
        let mut xt = [[0f32; 8]; 32];
        for j in 0..8 {
            for i in 0..32 {
                xt[i][j] = x[32 * j + i];
            }
        }
        let mut wt = [[0f32; 8]; 32];
        let mut lg = [[0u8; 32]; 8];
        let mut mins = [0f32; 8];
        let (d, dmin) = match quant_weights {
            None => {
                let mut sum_x2 = [0f32; 8];
                for row in &xt {
                    for j in 0..8 {
                        sum_x2[j] += row[j] * row[j];
                    }
                }
                let mut av_x = [0f32; 8];
                for j in 0..8 {
                    av_x[j] = (sum_x2[j] / 32.0).sqrt();
                }
                for i in 0..32 {
                    for j in 0..8 {
                        wt[i][j] = av_x[j] + xt[i][j].abs();
                    }
                }
                let (rmin, nstep) = if q5 { (-0.5, 15) } else { (-1.0, 20) };
                let scales = make_qkx_quants_lanes::<32, 8>(
                    nmax, &xt, &wt, &mut lg, &mut mins, rmin, 0.1, nstep, false,
                );
                finish_ref_scales(&scales, &mins, &mut y[crate::quants::q45_k::SCALES])
            }
            Some(qw) => {
                let qw = &qw[QK_K * b..QK_K * (b + 1)];
                let mut sum_x2 = 0.0f32;
                for &v in x {
                    sum_x2 += v * v;
                }
                let sigma2 = 2.0 * sum_x2 / QK_K as f32;
                let mut sw = [0f32; 8];
                for i in 0..32 {
                    for j in 0..8 {
                        wt[i][j] = qw[32 * j + i] * (sigma2 + xt[i][j] * xt[i][j]).sqrt();
                        sw[j] += wt[i][j];
                    }
                }
                let scales = make_qkx_quants_lanes::<32, 8>(
                    nmax, &xt, &wt, &mut lg, &mut mins, -0.9, 0.05, 36, false,
                );
                finish_impl_scales(
                    &scales,
                    &mins,
                    &sw,
                    q5,
                    &mut y[crate::quants::q45_k::SCALES],
                )
            }
        };
        let mut l = [0u8; QK_K];
        for j in 0..8 {
            l[32 * j..32 * j + 32].copy_from_slice(&lg[j]);
        }
        finish_block(x, &mut l, y, d, dmin, q5);
    }
}
