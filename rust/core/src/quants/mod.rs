//! ggml's type table and the row-parallel entry points (`quantize`, `dequantize`).
//!
//! Rows are independent in every ggml quantizer (the reference paths even per block), so
//! spreading rows over rayon threads cannot change a byte, whatever the thread count.

pub mod common;
pub mod fast;
pub mod iq4_nl;
pub mod legacy;
pub mod q2_k;
pub mod q3_k;
pub mod q45_k;
pub mod q6_k;
pub mod q8_0;
pub mod refine;

pub use common::{
    best_index_int8, c_f32_to_i32, make_q3_quants, make_qkx2_quants, make_qkx3_quants,
    make_qp_quants, make_qx_quants, nearest_int, GROUP_MAX_EPS,
};

use crate::error::{Error, Result};
use crate::fp16::{
    ggml_compute_bf16_to_fp32, ggml_compute_fp16_to_fp32, ggml_compute_fp32_to_bf16,
    ggml_compute_fp32_to_fp16,
};
use crate::ggml_types;
use rayon::prelude::*;

pub const QK_K: usize = 256;

/// The ggml types simpo-q reads and writes, with ggml's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)] // ggml's names, so the two tables read alike
pub enum QuantType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    IQ4_NL = 20,
    BF16 = 30,
}

impl QuantType {
    pub const ALL: [QuantType; 14] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q2_K,
        QuantType::Q3_K,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
        QuantType::IQ4_NL,
    ];

    /// ggml's name of the type (from ggml's table, crate::ggml_types).
    pub fn name(self) -> &'static str {
        ggml_types::ggml_type_name(self as u32).expect("every QuantType is in ggml's table")
    }

    pub fn ggml_id(self) -> u32 {
        self as u32
    }

    pub fn from_ggml_id(id: u32) -> Option<QuantType> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    pub fn from_name(name: &str) -> Result<QuantType> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
                Error::UnknownType(name.to_string(), names.join(", "))
            })
    }

    /// Values per block (ggml's `blck_size`).
    pub fn block_size(self) -> usize {
        ggml_types::ggml_type_size(self as u32)
            .expect("every QuantType is in ggml's table")
            .0 as usize
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn type_size(self) -> usize {
        ggml_types::ggml_type_size(self as u32)
            .expect("every QuantType is in ggml's table")
            .1 as usize
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, QuantType::F32 | QuantType::F16 | QuantType::BF16)
    }

    /// Whether ggml's chunk quantizer reads the importance vector for this type.
    pub fn uses_imatrix(self) -> bool {
        self.is_quantized() && self != QuantType::Q8_0
    }
}

/// ggml's `ggml_row_size`, with the block-size check ggml asserts.
pub fn row_size(qtype: QuantType, n_per_row: usize) -> Result<usize> {
    let block = qtype.block_size();
    if n_per_row == 0 || n_per_row % block != 0 {
        return Err(Error::BadRowLength {
            arg: "n_per_row",
            qtype: qtype.name(),
            n_per_row,
            block,
        });
    }
    // a row must fit in memory as float32 (and its length in numpy's signed sizes)
    if n_per_row > isize::MAX as usize / 4 {
        return Err(Error::Invalid {
            arg: "n_per_row",
            msg: format!("{n_per_row} values per row is more than any memory holds"),
        });
    }
    Ok(n_per_row / block * qtype.type_size())
}

/// One row: the lane-parallel fast path where there is one, the scalar port otherwise.
/// Both give the same bytes.
pub fn quantize_row(qtype: QuantType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    if qtype.is_quantized() {
        fast::quantize_row_fast(qtype, x, y, imatrix)
    } else {
        quantize_row_reference(qtype, x, y, imatrix)
    }
}

/// One row through the straightforward scalar port of ggml's chunk dispatch
/// (`quantize_<type>` for nrow = 1): the reference path without an importance vector, the
/// `_impl` path with one. This is the oracle the fast paths are tested against.
pub fn quantize_row_reference(qtype: QuantType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    let n = x.len();
    match (qtype, imatrix) {
        (QuantType::F32, _) => {
            for (o, v) in y.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        (QuantType::F16, _) => {
            for (o, &v) in y.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&ggml_compute_fp32_to_fp16(v).to_le_bytes());
            }
        }
        (QuantType::BF16, _) => {
            for (o, &v) in y.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&ggml_compute_fp32_to_bf16(v).to_le_bytes());
            }
        }
        (QuantType::Q8_0, _) => q8_0::quantize_row_q8_0_ref(x, y, n),
        (QuantType::Q4_0, None) => legacy::quantize_row_q4_0_ref(x, y, n),
        (QuantType::Q4_0, Some(w)) => legacy::quantize_row_q4_0_impl(x, y, n, w),
        (QuantType::Q4_1, None) => legacy::quantize_row_q4_1_ref(x, y, n),
        (QuantType::Q4_1, Some(w)) => legacy::quantize_row_q4_1_impl(x, y, n, w),
        (QuantType::Q5_0, None) => legacy::quantize_row_q5_0_ref(x, y, n),
        (QuantType::Q5_0, Some(w)) => legacy::quantize_row_q5_0_impl(x, y, n, w),
        (QuantType::Q5_1, None) => legacy::quantize_row_q5_1_ref(x, y, n),
        (QuantType::Q5_1, Some(w)) => legacy::quantize_row_q5_1_impl(x, y, n, w),
        (QuantType::Q2_K, None) => q2_k::quantize_row_q2_K_ref(x, y, n),
        (QuantType::Q2_K, Some(w)) => q2_k::quantize_row_q2_K_impl(x, y, n, w),
        (QuantType::Q3_K, None) => q3_k::quantize_row_q3_K_ref(x, y, n),
        (QuantType::Q3_K, Some(w)) => q3_k::quantize_row_q3_K_impl(x, y, n, w),
        (QuantType::Q4_K, None) => q45_k::quantize_row_q4_K_ref(x, y, n),
        (QuantType::Q4_K, Some(w)) => q45_k::quantize_row_q4_K_impl(x, y, n, w),
        (QuantType::Q5_K, None) => q45_k::quantize_row_q5_K_ref(x, y, n),
        (QuantType::Q5_K, Some(w)) => q45_k::quantize_row_q5_K_impl(x, y, n, w),
        (QuantType::Q6_K, None) => q6_k::quantize_row_q6_K_ref(x, y, n),
        (QuantType::Q6_K, Some(w)) => q6_k::quantize_row_q6_K_impl(x, y, n, w),
        (QuantType::IQ4_NL, w) => iq4_nl::quantize_iq4_nl(x, y, n, w),
    }
}

pub fn dequantize_row(qtype: QuantType, x: &[u8], y: &mut [f32]) {
    let k = y.len();
    match qtype {
        QuantType::F32 => {
            for (o, b) in y.iter_mut().zip(x.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        QuantType::F16 => {
            for (o, b) in y.iter_mut().zip(x.chunks_exact(2)) {
                *o = ggml_compute_fp16_to_fp32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        QuantType::BF16 => {
            for (o, b) in y.iter_mut().zip(x.chunks_exact(2)) {
                *o = ggml_compute_bf16_to_fp32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        QuantType::Q4_0 => legacy::dequantize_row_q4_0(x, y, k),
        QuantType::Q4_1 => legacy::dequantize_row_q4_1(x, y, k),
        QuantType::Q5_0 => legacy::dequantize_row_q5_0(x, y, k),
        QuantType::Q5_1 => legacy::dequantize_row_q5_1(x, y, k),
        QuantType::Q8_0 => q8_0::dequantize_row_q8_0(x, y, k),
        QuantType::Q2_K => q2_k::dequantize_row_q2_K(x, y, k),
        QuantType::Q3_K => q3_k::dequantize_row_q3_K(x, y, k),
        QuantType::Q4_K => q45_k::dequantize_row_q4_K(x, y, k),
        QuantType::Q5_K => q45_k::dequantize_row_q5_K(x, y, k),
        QuantType::Q6_K => q6_k::dequantize_row_q6_K(x, y, k),
        QuantType::IQ4_NL => iq4_nl::dequantize_row_iq4_nl(x, y, k),
    }
}

/// Branch-free scan (vectorizes): true when no value is NaN or infinite.
#[inline]
/// Whether every value of the row is finite and at most `limit` in magnitude (NaN fails).
fn row_is_within(x: &[f32], limit: f32) -> bool {
    if limit == f32::MAX {
        // the common case, as a bit test that vectorises
        return x.iter().fold(0u32, |acc, v| {
            acc | ((v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
        }) == 0;
    }
    x.iter().fold(true, |ok, v| ok & (v.abs() <= limit))
}

/// The largest importance × weight² the importance-weighted quantizers can take. Their
/// weighted sums add up to 256 terms of (importance · |weight|) · weight · level, with
/// levels up to 32 in magnitude (the k-quants weight by importance · √(σ² + x²), which is
/// of the order of importance · |weight|); 256 · 32 · 1e34 ≈ 8e37 stays below f32::MAX.
/// Beyond it the sums become infinite and the blocks NaN or zero. Real importances (means of
/// squared activations) times squared weights stay below 1e12.
pub const MAX_IMPORTANCE_WEIGHT2: f32 = 1.0e34;

/// The largest weight magnitude that keeps importance · weight² within
/// [`MAX_IMPORTANCE_WEIGHT2`] (weights below 1 count as 1), or an error when the importance
/// vector alone is too large.
pub fn weight_limit(imatrix: Option<&[f32]>) -> Result<f32> {
    let Some(w) = imatrix else {
        return Ok(f32::MAX);
    };
    let (col, wmax) = w
        .iter()
        .copied()
        .enumerate()
        .fold((0, 0.0f32), |b, (i, v)| if v > b.1 { (i, v) } else { b });
    if wmax > MAX_IMPORTANCE_WEIGHT2 {
        return Err(Error::Invalid {
            arg: "imatrix",
            msg: format!(
                "value {wmax:e} at column {col} is too large: the weighted block sums would \
                 overflow float32 (at most {MAX_IMPORTANCE_WEIGHT2:e}; is it an importance matrix?)"
            ),
        });
    }
    if wmax == 0.0 {
        return Ok(f32::MAX);
    }
    // in f64: for importances below ~3e-5 the f32 quotient overflows to infinity, which would
    // let any weight through (x² itself then overflows in the block sums)
    let limit = (f64::from(MAX_IMPORTANCE_WEIGHT2) / f64::from(wmax)).sqrt();
    Ok((limit.min(f64::from(f32::MAX)) as f32).max(1.0))
}

/// An importance vector: one finite, non-negative value per column.
pub fn validate_importance(n_per_row: usize, imatrix: Option<&[f32]>) -> Result<()> {
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(Error::ImatrixLength {
                arg: "imatrix",
                len: w.len(),
                n_per_row,
            });
        }
        for (col, &v) in w.iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::Invalid {
                    arg: "imatrix",
                    msg: format!("non-finite value {v} at column {col}"),
                });
            }
            if v < 0.0 {
                return Err(Error::Negative {
                    arg: "imatrix",
                    value: v,
                    col,
                });
            }
        }
    }
    Ok(())
}

/// Rejects what ggml would abort on or silently garble: non-finite data (ggml aborts on a
/// non-finite scale; we say where the bad value is) and unusable importance vectors.
pub fn validate(x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>) -> Result<()> {
    validate_importance(n_per_row, imatrix)?;
    if let Some(pos) = x.par_iter().position_first(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            arg: "x",
            value: x[pos],
            row: pos / n_per_row,
            col: pos % n_per_row,
        });
    }
    Ok(())
}

/// Quantizes `x` (rows of `n_per_row` values, row-major) into `out`
/// (`rows × row_size` bytes), spreading rows over the current rayon pool.
pub fn quantize_into(
    qtype: QuantType,
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    let rs = row_size(qtype, n_per_row)?;
    if x.len() % n_per_row != 0 {
        return Err(Error::BadLength {
            arg: "x",
            len: x.len(),
            expected: n_per_row,
        });
    }
    let rows = x.len() / n_per_row;
    if out.len() != rows * rs {
        return Err(Error::Invalid {
            arg: "out",
            msg: format!("has {} bytes, {} needed", out.len(), rows * rs),
        });
    }
    validate_importance(n_per_row, imatrix)?;
    let imatrix = if qtype.uses_imatrix() { imatrix } else { None };
    let limit = weight_limit(imatrix)?;
    // The finiteness (and, with importances, magnitude) check is fused into each row's job
    // (the row is in cache anyway); a bad row is left unwritten and the error names it.
    let any_bad = out
        .par_chunks_mut(rs)
        .zip(x.par_chunks(n_per_row))
        .map(|(y, xr)| {
            if row_is_within(xr, limit) {
                quantize_row(qtype, xr, y, imatrix);
                false
            } else {
                true
            }
        })
        .reduce(|| false, |a, b| a | b);
    if any_bad {
        validate(x, n_per_row, None)?;
        let pos = x
            .iter()
            .position(|v| v.abs() > limit)
            .expect("a row failed the magnitude check");
        return Err(Error::Invalid {
            arg: "x",
            msg: format!(
                "weight {:e} at row {}, column {} is too large for its importance vector: \
                 importance · weight² would overflow the weighted block sums (weights up to \
                 {limit:e} fit)",
                x[pos],
                pos / n_per_row,
                pos % n_per_row
            ),
        });
    }
    Ok(())
}

/// `quantize_into`, then the refined encoder on every row (see `refine`): the same format,
/// never a block worse than ggml's. Types without a refinement are left as ggml writes them.
pub fn quantize_into_refined(
    qtype: QuantType,
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    quantize_into(qtype, x, n_per_row, imatrix, out)?;
    if !refine::is_refinable(qtype) {
        return Ok(());
    }
    let rs = row_size(qtype, n_per_row)?;
    let imatrix = if qtype.uses_imatrix() { imatrix } else { None };
    out.par_chunks_mut(rs)
        .zip(x.par_chunks(n_per_row))
        .for_each(|(y, xr)| {
            refine::refine_row(qtype, xr, imatrix, y);
        });
    Ok(())
}

pub fn quantize(
    qtype: QuantType,
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>> {
    let rs = row_size(qtype, n_per_row)?;
    let mut out = vec![0u8; x.len() / n_per_row * rs];
    quantize_into(qtype, x, n_per_row, imatrix, &mut out)?;
    Ok(out)
}

pub fn dequantize_into(
    qtype: QuantType,
    data: &[u8],
    n_per_row: usize,
    out: &mut [f32],
) -> Result<()> {
    let rs = row_size(qtype, n_per_row)?;
    if data.len() % rs != 0 {
        return Err(Error::BadLength {
            arg: "data",
            len: data.len(),
            expected: rs,
        });
    }
    let values = (data.len() / rs)
        .checked_mul(n_per_row)
        .ok_or_else(|| Error::Invalid {
            arg: "data",
            msg: "the dequantized size overflows the address space".into(),
        })?;
    if out.len() != values {
        return Err(Error::Invalid {
            arg: "out",
            msg: format!("has {} values, {} needed", out.len(), values),
        });
    }
    out.par_chunks_mut(n_per_row)
        .zip(data.par_chunks(rs))
        .for_each(|(y, x)| dequantize_row(qtype, x, y));
    Ok(())
}

pub fn dequantize(qtype: QuantType, data: &[u8], n_per_row: usize) -> Result<Vec<f32>> {
    let rs = row_size(qtype, n_per_row)?;
    let mut out = vec![0f32; (data.len() / rs).saturating_mul(n_per_row)];
    dequantize_into(qtype, data, n_per_row, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_sizes_are_errors_not_wraparounds() {
        for t in QuantType::ALL {
            let b = t.block_size();
            for n in [
                b,
                1 << 40,
                (1 << 61) / b * b,
                (1 << 62) / b * b,
                usize::MAX / b * b,
            ] {
                let exact = (n / b) as u128 * t.type_size() as u128;
                match row_size(t, n) {
                    Ok(rs) => assert_eq!(rs as u128, exact, "{t:?} {n}"),
                    Err(_) => assert!(n > isize::MAX as usize / 4, "{t:?} {n}"),
                }
            }
        }
        assert!(row_size(QuantType::F32, 1 << 62).is_err());
        assert!(dequantize(QuantType::F32, &[0; 8], (1 << 62) + 1).is_err());
        assert!(dequantize(QuantType::F32, &[], 1 << 62).is_err());
    }

    #[test]
    fn overflowing_importances_are_refused_for_every_imatrix_type() {
        let x: Vec<f32> = (0..256).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let mut huge = vec![1.0f32; 256];
        huge[3] = 3e38;
        let mut big = vec![1.0f32; 256];
        big[5] = 1e33; // fits alone, not with weights of 5
        for t in QuantType::ALL.into_iter().filter(|t| t.uses_imatrix()) {
            let e = quantize(t, &x, 256, Some(&huge)).unwrap_err().to_string();
            assert!(e.contains("column 3 is too large"), "{t:?}: {e}");
            let e = quantize(t, &x, 256, Some(&big)).unwrap_err().to_string();
            assert!(e.contains("at row 0, column"), "{t:?}: {e}");
            let ok = vec![1e10f32; 256];
            let y = quantize(t, &x, 256, Some(&ok)).unwrap();
            let back = dequantize(t, &y, 256).unwrap();
            assert!(back.iter().all(|v| v.is_finite()), "{t:?}");
            assert!(back.iter().any(|v| *v != 0.0), "{t:?}: all zero");
            // tiny importances do not lift the limit: 1e-5 · (3.2e19)² is past it
            let mut x_big = x.clone();
            x_big[0] = 3.162_281e19;
            let e = quantize(t, &x_big, 256, Some(&[1e-5f32; 256]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("at row 0, column 0"), "{t:?}: {e}");
        }
    }

    #[test]
    fn errors_name_the_argument() {
        let x = vec![0.5f32; 512];
        let e = quantize(QuantType::Q3_K, &x, 100, None).unwrap_err();
        assert!(e.to_string().starts_with("n_per_row: n_per_row 100"), "{e}");
        let e = quantize(QuantType::Q3_K, &x, 256, Some(&[1.0; 255])).unwrap_err();
        assert!(e.to_string().starts_with("imatrix: length 255"), "{e}");
        let mut w = vec![1.0f32; 256];
        w[3] = -2.0;
        let e = quantize(QuantType::Q3_K, &x, 256, Some(&w)).unwrap_err();
        assert!(
            e.to_string().contains("negative value -2 at column 3"),
            "{e}"
        );
        let mut y = x.clone();
        y[300] = f32::NAN;
        let e = quantize(QuantType::Q6_K, &y, 256, None).unwrap_err();
        assert!(e.to_string().contains("at row 1, column 44"), "{e}");
        assert!(QuantType::from_name("Q9_K").is_err());
        let e = dequantize(QuantType::Q3_K, &[0u8; 111], 256).unwrap_err();
        assert!(e.to_string().starts_with("data: length 111"), "{e}");
    }

    #[test]
    fn type_table_matches_ggml() {
        let expect = [
            ("Q3_K", 11, 256, 110),
            ("Q4_K", 12, 256, 144),
            ("Q5_K", 13, 256, 176),
            ("Q6_K", 14, 256, 210),
            ("Q8_0", 8, 32, 34),
            ("Q4_0", 2, 32, 18),
            ("Q4_1", 3, 32, 20),
            ("Q5_0", 6, 32, 22),
            ("Q5_1", 7, 32, 24),
            ("IQ4_NL", 20, 32, 18),
            ("BF16", 30, 1, 2),
        ];
        for (name, id, block, size) in expect {
            let t = QuantType::from_name(name).unwrap();
            assert_eq!(
                (t.ggml_id(), t.block_size(), t.type_size()),
                (id, block, size),
                "{name}"
            );
            assert_eq!(QuantType::from_ggml_id(id), Some(t));
        }
    }
}
