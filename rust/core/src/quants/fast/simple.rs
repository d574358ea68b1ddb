//! The reference paths of the 32-value block types: Q8_0, Q4_0 and Q5_0 with 8 blocks in 8
//! lanes; Q4_1 and Q5_1 one block at a time (see `q_1_block`). The per-block maximum
//! searches keep ggml's order (first index wins); Q8_0's `roundf` is rebuilt from `trunc` so
//! it vectorizes: x − trunc(x) is exact, so comparing it with 0.5 rounds halves away from
//! zero exactly as roundf does.

use super::lanes::signed_absmax_lanes;
use crate::fp16::ggml_compute_fp32_to_fp16 as fp32_to_fp16;
use crate::quants::common::c_f32_to_i32;
use crate::quants::legacy::{self, min_max};
use crate::quants::{q8_0, QuantType};

const G: usize = 8;
const QK: usize = 32;

#[inline(always)]
fn roundf(x: f32) -> f32 {
    let t = x.trunc();
    let frac = x - t;
    let up = frac.abs() >= 0.5;
    if up {
        t + 1.0f32.copysign(x)
    } else {
        t
    }
}

#[inline(always)]
fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
}

#[inline(always)]
pub fn quantize_row_simple_ref_fast(qtype: QuantType, x: &[f32], y: &mut [u8]) {
    let bs = qtype.type_size();
    if matches!(qtype, QuantType::Q4_1 | QuantType::Q5_1) {
        let (qmax, five) = if qtype == QuantType::Q4_1 {
            (15.0, false)
        } else {
            (31.0, true)
        };
        let mut xs = x.chunks_exact(QK * G);
        let mut ys = y.chunks_exact_mut(bs * G);
        for (xg, yg) in (&mut xs).zip(&mut ys) {
            let (min, max) = q_1_min_max(xg);
            for (j, (xb, yb)) in xg.chunks_exact(QK).zip(yg.chunks_exact_mut(bs)).enumerate() {
                q_1_block(xb, yb, min[j], max[j], qmax, five);
            }
        }
        for (xb, yb) in xs
            .remainder()
            .chunks_exact(QK)
            .zip(ys.into_remainder().chunks_exact_mut(bs))
        {
            let (min, max) = min_max(xb);
            q_1_block(xb, yb, min, max, qmax, five);
        }
        return;
    }
    let nb = x.len() / QK;
    let groups = nb / G;
    for g in 0..groups {
        let mut xt = [[0f32; G]; QK];
        for j in 0..G {
            let xb = &x[QK * (g * G + j)..];
            for i in 0..QK {
                xt[i][j] = xb[i];
            }
        }
        let yg = &mut y[bs * G * g..bs * G * (g + 1)];
        match qtype {
            QuantType::Q8_0 => q8_0(&xt, yg),
            QuantType::Q4_0 => q_0(&xt, yg, -8.0, 8.5, 15, false),
            QuantType::Q5_0 => q_0(&xt, yg, -16.0, 16.5, 31, true),
            _ => unreachable!(),
        }
    }
    // the last blocks (fewer than one group) through the scalar port itself
    let (xr, yr) = (&x[groups * G * QK..], &mut y[groups * G * bs..]);
    match qtype {
        QuantType::Q8_0 => q8_0::quantize_row_q8_0_ref(xr, yr, xr.len()),
        QuantType::Q4_0 => legacy::quantize_row_q4_0_ref(xr, yr, xr.len()),
        QuantType::Q5_0 => legacy::quantize_row_q5_0_ref(xr, yr, xr.len()),
        _ => unreachable!(),
    }
}

#[inline(always)]
fn q8_0(xt: &[[f32; G]; QK], yg: &mut [u8]) {
    let mut amax = [0f32; G];
    for row in xt {
        for j in 0..G {
            let a = row[j].abs();
            amax[j] = if amax[j] > a { amax[j] } else { a };
        }
    }
    let mut id = [0f32; G];
    let mut d = [0f32; G];
    for j in 0..G {
        d[j] = amax[j] / 127.0;
        id[j] = if d[j] != 0.0 { 1.0 / d[j] } else { 0.0 };
    }
    let mut q = [[0u8; G]; QK];
    for i in 0..QK {
        for j in 0..G {
            q[i][j] = c_f32_to_i32(roundf(xt[i][j] * id[j])) as u8;
        }
    }
    for j in 0..G {
        let yb = &mut yg[34 * j..34 * (j + 1)];
        put_f16(yb, 0, d[j]);
        for i in 0..QK {
            yb[2 + i] = q[i][j];
        }
    }
}

/// Q4_0 / Q5_0: d = (signed absmax) / div; q = min(qmax, (int8)(x·id + bias)).
#[inline(always)]
fn q_0(xt: &[[f32; G]; QK], yg: &mut [u8], div: f32, bias: f32, qmax: i8, five: bool) {
    let (_, max) = signed_absmax_lanes(xt);
    let mut d = [0f32; G];
    let mut id = [0f32; G];
    for j in 0..G {
        d[j] = max[j] / div;
        id[j] = if d[j] != 0.0 { 1.0 / d[j] } else { 0.0 };
    }
    let mut q = [[0u8; G]; QK];
    for i in 0..QK {
        for j in 0..G {
            q[i][j] = qmax.min(c_f32_to_i32(xt[i][j] * id[j] + bias) as i8) as u8;
        }
    }
    pack(yg, &d, &q, five);
}

/// Minimum and maximum of 8 consecutive blocks, without transposing them: each block's 32
/// values are four 8-wide vectors as they lie, reduced per lane, and the lanes are then
/// reduced for all 8 blocks side by side. That order differs from ggml's left-to-right scan
/// only in which of two equal values wins, which changes the bits only for ±0, so a zero
/// result is taken again in ggml's order.
#[inline(always)]
fn q_1_min_max(xg: &[f32]) -> ([f32; G], [f32; G]) {
    let mut mn = [[f32::MAX; G]; G];
    let mut mx = [[-f32::MAX; G]; G];
    for (b, xb) in xg.chunks_exact(QK).enumerate() {
        for c in xb.chunks_exact(G) {
            for l in 0..G {
                mn[b][l] = if c[l] < mn[b][l] { c[l] } else { mn[b][l] };
                mx[b][l] = if c[l] > mx[b][l] { c[l] } else { mx[b][l] };
            }
        }
    }
    let mut min = [f32::MAX; G];
    let mut max = [-f32::MAX; G];
    for l in 0..G {
        for b in 0..G {
            min[b] = if mn[b][l] < min[b] { mn[b][l] } else { min[b] };
            max[b] = if mx[b][l] > max[b] { mx[b][l] } else { max[b] };
        }
    }
    for (b, xb) in xg.chunks_exact(QK).enumerate() {
        if min[b] == 0.0 || max[b] == 0.0 {
            (min[b], max[b]) = min_max(xb);
        }
    }
    (min, max)
}

/// Q4_1 / Q5_1, one block: d = (max − min) / qmax, m = min, q = (x − min)·id + 0.5 truncated.
#[inline(always)]
fn q_1_block(xb: &[f32], yb: &mut [u8], min: f32, max: f32, qmax: f32, five: bool) {
    let d = (max - min) / qmax;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // Levels kept in i32 lanes: ggml's (int8_t) cast then MIN(15, ·) is a sign extension of
    // the low byte and a signed minimum, both vector instructions at this width; only the
    // low five bits are ever stored.
    let mut q = [0i32; QK];
    for (qi, &v) in q.iter_mut().zip(xb) {
        let l = c_f32_to_i32((v - min) * id + 0.5);
        *qi = if five { l } else { ((l << 24) >> 24).min(15) };
    }
    put_f16(yb, 0, d);
    put_f16(yb, 2, min);
    let qs = if five { 8 } else { 4 };
    for i in 0..QK / 2 {
        yb[qs + i] = ((q[i] & 0x0F) | ((q[i + QK / 2] & 0x0F) << 4)) as u8;
    }
    if five {
        let mut qh = 0u32;
        for (i, &l) in q.iter().enumerate() {
            qh |= (((l & 0x10) >> 4) as u32) << i;
        }
        yb[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

#[inline(always)]
fn pack(yg: &mut [u8], d: &[f32; G], q: &[[u8; G]; QK], five: bool) {
    let head = 2;
    let qs = head + if five { 4 } else { 0 };
    let bs = qs + QK / 2;
    // Nibbles and high bits combined across the 8 lanes first (vectorizes), then each
    // block's bytes gathered once.
    let mut nib = [[0u8; G]; QK / 2];
    let mut qh = [0u32; G];
    for i in 0..QK / 2 {
        for j in 0..G {
            let (a, b) = (q[i][j], q[i + QK / 2][j]);
            nib[i][j] = (a & 0x0F) | ((b & 0x0F) << 4);
            qh[j] |= (((a & 0x10) >> 4) as u32) << i;
            qh[j] |= (((b & 0x10) >> 4) as u32) << (i + QK / 2);
        }
    }
    for j in 0..G {
        let yb = &mut yg[bs * j..bs * (j + 1)];
        put_f16(yb, 0, d[j]);
        for i in 0..QK / 2 {
            yb[qs + i] = nib[i][j];
        }
        if five {
            yb[head..head + 4].copy_from_slice(&qh[j].to_le_bytes());
        }
    }
}
