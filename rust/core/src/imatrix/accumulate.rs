use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// One weight's statistics: Σ x² per input column (float32, accumulated row by row in
/// token order, as llama-imatrix does) and the number of token rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub in_sum2: Vec<f32>,
    pub count: u64,
}

/// Entries by GGUF tensor name (sorted, as the files store them), with the run's facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
}

/// Columns per parallel job: large enough to amortise scheduling, small enough to spread.
const COLS_PER_JOB: usize = 256;

#[inline(always)]
fn add_stripe_generic(sums: &mut [f32], x: &[f32], rows: usize, n_cols: usize, c0: usize) {
    for r in 0..rows {
        let row = &x[r * n_cols + c0..r * n_cols + c0 + sums.len()];
        for (s, &v) in sums.iter_mut().zip(row) {
            *s += v * v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_stripe_avx2(sums: &mut [f32], x: &[f32], rows: usize, n_cols: usize, c0: usize) {
    add_stripe_generic(sums, x, rows, n_cols, c0)
}

/// Column stripe `c0..c0+sums.len()`: rows added in order (vectorized across columns only).
fn add_stripe(sums: &mut [f32], x: &[f32], rows: usize, n_cols: usize, c0: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { add_stripe_avx2(sums, x, rows, n_cols, c0) };
            return;
        }
    }
    add_stripe_generic(sums, x, rows, n_cols, c0)
}

impl Imatrix {
    /// Adds a batch of activations (`rows` × `n_cols`, row-major) to `name`'s entry. Columns
    /// are split over threads; within a column the rows are added in order, so the sums do
    /// not depend on the thread count.
    pub fn add(&mut self, name: &str, x: &[f32], n_cols: usize) -> Result<()> {
        if n_cols == 0 || x.len() % n_cols != 0 {
            return Err(Error::Invalid {
                arg: "activations",
                msg: format!(
                    "{name}: {} values is not a whole number of rows of {n_cols}",
                    x.len()
                ),
            });
        }
        let rows = x.len() / n_cols;
        let e = self
            .entries
            .entry(name.to_string())
            .or_insert_with(|| Entry {
                in_sum2: vec![0.0; n_cols],
                count: 0,
            });
        if e.in_sum2.len() != n_cols {
            return Err(Error::Invalid {
                arg: "activations",
                msg: format!(
                    "{name}: {n_cols} columns, earlier batches had {}",
                    e.in_sum2.len()
                ),
            });
        }
        e.in_sum2
            .par_chunks_mut(COLS_PER_JOB)
            .enumerate()
            .for_each(|(c, sums)| add_stripe(sums, x, rows, n_cols, c * COLS_PER_JOB));
        e.count += rows as u64;
        if let Some(j) = e.in_sum2.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid {
                arg: "activations",
                msg: format!("{name}: the sum of squares of column {j} is no longer finite"),
            });
        }
        Ok(())
    }

    /// Puts one weight's sums and count in place (replacing any entry): for statistics
    /// reduced elsewhere, as across the ranks of a distributed run. Every sum must be a finite
    /// sum of squares (not negative), and there must be at least one column.
    pub fn set_entry(&mut self, name: &str, in_sum2: Vec<f32>, count: u64) -> Result<()> {
        if in_sum2.is_empty() {
            return Err(Error::Invalid {
                arg: "in_sum2",
                msg: format!("{name}: no columns"),
            });
        }
        if let Some(j) = in_sum2.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::Invalid {
                arg: "in_sum2",
                msg: format!(
                    "{name}: column {j} is {}, not a finite sum of squares",
                    in_sum2[j]
                ),
            });
        }
        self.entries
            .insert(name.to_string(), Entry { in_sum2, count });
        Ok(())
    }

    /// Sums and counts add; datasets are appended; chunk counts add. A legacy file's
    /// entries (chunk_size 0: sums over calls of one chunk each) are scaled to tokens by this
    /// run's chunk size, as llama-imatrix does when it loads one.
    pub fn merge(&mut self, other: &Imatrix) -> Result<()> {
        let scale = if other.chunk_size == 0 && self.chunk_size > 0 {
            self.chunk_size
        } else {
            1
        };
        let scaled;
        let other = if scale > 1 {
            let mut o = other.clone();
            for e in o.entries.values_mut() {
                for v in e.in_sum2.iter_mut() {
                    *v *= scale as f32;
                }
                e.count *= scale as u64;
            }
            scaled = o;
            &scaled
        } else {
            other
        };
        // Checked before anything changes: a failed merge leaves `self` as it was.
        for (name, e) in &other.entries {
            if let Some(j) = e.in_sum2.iter().position(|v| !v.is_finite()) {
                return Err(Error::Invalid {
                    arg: "imatrix",
                    msg: format!("{name}: the sum of squares of column {j} overflows float32"),
                });
            }
            if let Some(mine) = self.entries.get(name) {
                if mine.in_sum2.len() != e.in_sum2.len() {
                    return Err(Error::Invalid {
                        arg: "imatrix",
                        msg: format!(
                            "{name}: {} columns in one file, {} in another",
                            mine.in_sum2.len(),
                            e.in_sum2.len()
                        ),
                    });
                }
                if let Some(j) = (0..e.in_sum2.len()).find(|&j| {
                    let v = mine.in_sum2[j] + e.in_sum2[j];
                    !v.is_finite()
                }) {
                    return Err(Error::Invalid {
                        arg: "imatrix",
                        msg: format!(
                            "{name}: the merged sum of squares of column {j} overflows float32 \
                             ({} + {})",
                            mine.in_sum2[j], e.in_sum2[j]
                        ),
                    });
                }
            }
        }
        for (name, e) in &other.entries {
            match self.entries.get_mut(name) {
                None => {
                    self.entries.insert(name.clone(), e.clone());
                }
                Some(mine) => {
                    for (a, b) in mine.in_sum2.iter_mut().zip(&e.in_sum2) {
                        *a += *b;
                    }
                    mine.count += e.count;
                }
            }
        }
        self.datasets.extend(other.datasets.iter().cloned());
        self.chunk_count += other.chunk_count;
        if self.chunk_size == 0 {
            self.chunk_size = other.chunk_size;
        }
        Ok(())
    }

    /// The importance vector llama-quantize derives: in_sum2 / count (1.0 where count is 0).
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        self.entries.get(name).map(|e| {
            let c = e.count as f32;
            e.in_sum2
                .iter()
                .map(|&s| if e.count > 0 { s / c } else { 1.0 })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_sequential_per_column_and_thread_independent() {
        let n_cols = 700;
        let x: Vec<f32> = (0..37 * n_cols)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let mut want = vec![0f32; n_cols];
        for r in 0..37 {
            for j in 0..n_cols {
                let v = x[r * n_cols + j];
                want[j] += v * v;
            }
        }
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut m = Imatrix::default();
            pool.install(|| m.add("w", &x, n_cols)).unwrap();
            assert_eq!(m.entries["w"].in_sum2, want);
            assert_eq!(m.entries["w"].count, 37);
        }
    }

    #[test]
    fn shape_changes_and_nonfinite_sums_are_errors() {
        let mut m = Imatrix::default();
        m.add("w", &[1.0; 8], 4).unwrap();
        assert!(m
            .add("w", &[1.0; 9], 3)
            .unwrap_err()
            .to_string()
            .contains("3 columns, earlier batches had 4"));
        assert!(m
            .add("v", &[1.0; 7], 4)
            .unwrap_err()
            .to_string()
            .contains("not a whole number of rows"));
        assert!(m
            .add("w", &[f32::MAX; 4], 4)
            .unwrap_err()
            .to_string()
            .contains("no longer finite"));
    }
}
