//! Golden vectors: inputs with ggml's bytes (`ggml_quantize_chunk`, llama-cpp-python 0.3.36)
//! and gguf-py's dequantization, written by `tests/make_golden.py`. They let `cargo test`
//! check byte identity without Python.

use simpo_q_core::quants::{dequantize, quantize, QuantType};
use std::path::PathBuf;

struct Case {
    name: String,
    rows: usize,
    n_per_row: usize,
    x: Vec<f32>,
    imatrix: Option<Vec<f32>>,
    expected: Vec<u8>,
    dequantized: Vec<f32>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> usize {
        u32::from_le_bytes(self.take(4).try_into().unwrap()) as usize
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

fn load(qtype: QuantType) -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{}.bin", qtype.name()));
    let buf = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = Reader { buf: &buf, pos: 0 };
    assert_eq!(r.take(4), b"SQGV");
    assert_eq!(r.u32(), 1);
    let n = r.u32();
    (0..n)
        .map(|_| {
            let len = r.u32();
            let name = String::from_utf8(r.take(len).to_vec()).unwrap();
            let rows = r.u32();
            let n_per_row = r.u32();
            let has_w = r.take(1)[0] != 0;
            let x = r.f32s(rows * n_per_row);
            let imatrix = has_w.then(|| r.f32s(n_per_row));
            let nb = r.u32();
            let expected = r.take(nb).to_vec();
            let dequantized = r.f32s(rows * n_per_row);
            Case {
                name,
                rows,
                n_per_row,
                x,
                imatrix,
                expected,
                dequantized,
            }
        })
        .collect()
}

#[test]
fn quantized_bytes_equal_ggml() {
    for qtype in QuantType::ALL {
        for case in load(qtype) {
            let got = quantize(qtype, &case.x, case.n_per_row, case.imatrix.as_deref()).unwrap();
            assert_eq!(
                got,
                case.expected,
                "{} {}: bytes differ from ggml",
                qtype.name(),
                case.name
            );
        }
    }
}

#[test]
fn dequantized_values_equal_gguf_py() {
    for qtype in QuantType::ALL {
        for case in load(qtype) {
            let got = dequantize(qtype, &case.expected, case.n_per_row).unwrap();
            assert_eq!(got.len(), case.rows * case.n_per_row);
            for (i, (a, b)) in got.iter().zip(&case.dequantized).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{} {}: value {i}: {a} vs {b}",
                    qtype.name(),
                    case.name
                );
            }
        }
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let x: Vec<f32> = (0..64 * 512)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    let w: Vec<f32> = (0..512).map(|i| 1.0 + (i % 13) as f32).collect();
    for qtype in QuantType::ALL {
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| quantize(qtype, &x, 512, Some(&w)).unwrap());
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap()
            .install(|| quantize(qtype, &x, 512, Some(&w)).unwrap());
        assert_eq!(one, many, "{}", qtype.name());
    }
}
