//! GGUF writer and reader: round trip, the temporary-file contract, and corrupt input.

use simpo_q_core::gguf::{GgufFile, GgufWriter, TensorInfo, Value, ValueType};
use std::path::Path;

fn sample_kvs() -> Vec<(String, Value)> {
    vec![
        (
            "general.architecture".into(),
            Value::String("gemma2".into()),
        ),
        ("a.u8".into(), Value::U8(7)),
        ("a.i8".into(), Value::I8(-7)),
        ("a.u16".into(), Value::U16(700)),
        ("a.i16".into(), Value::I16(-700)),
        ("a.u32".into(), Value::U32(70000)),
        ("a.i32".into(), Value::I32(-70000)),
        ("a.f32".into(), Value::F32(1.5e-6)),
        ("a.bool".into(), Value::Bool(true)),
        ("a.u64".into(), Value::U64(1 << 40)),
        ("a.i64".into(), Value::I64(-(1 << 40))),
        ("a.f64".into(), Value::F64(std::f64::consts::PI)),
        (
            "a.strs".into(),
            Value::Array(
                ValueType::String,
                vec![
                    Value::String("<bos>".into()),
                    Value::String("▁héllo".into()),
                ],
            ),
        ),
        (
            "a.i32s".into(),
            Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-3)]),
        ),
        ("a.empty".into(), Value::Array(ValueType::F32, vec![])),
    ]
}

fn write_sample(path: &Path) -> Vec<Vec<u8>> {
    let infos = vec![
        TensorInfo {
            name: "token_embd.weight".into(),
            dims: vec![256, 3],
            ggml_type: 14,
        },
        TensorInfo {
            name: "blk.0.attn_norm.weight".into(),
            dims: vec![5],
            ggml_type: 0,
        },
        TensorInfo {
            name: "blk.0.attn_q.weight".into(),
            dims: vec![64, 2],
            ggml_type: 8,
        },
    ];
    let data: Vec<Vec<u8>> = vec![
        (0..3 * 210).map(|i| i as u8).collect(),
        (0..20).map(|i| (i * 3) as u8).collect(),
        (0..2 * 2 * 34).map(|i| (i * 7) as u8).collect(),
    ];
    let mut w = GgufWriter::create(path, &sample_kvs(), infos.clone()).unwrap();
    for (t, d) in infos.iter().zip(&data) {
        w.write_tensor(&t.name, d).unwrap();
    }
    w.finish().unwrap();
    data
}

#[test]
fn round_trip() {
    let dir = std::env::temp_dir().join(format!("sq-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.gguf");
    let data = write_sample(&path);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata, sample_kvs());
    assert_eq!(f.tensors.len(), 3);
    for (t, d) in f.tensors.iter().zip(&data) {
        assert_eq!(f.tensor_data(t), &d[..]);
        assert_eq!(t.offset % 32, 0);
    }
    assert_eq!(f.tensors[0].dims, vec![256, 3]);
    // no temporary file left behind
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unfinished_or_wrong_writes_leave_nothing() {
    let dir = std::env::temp_dir().join(format!("sq-gguf-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("b.gguf");
    let infos = vec![TensorInfo {
        name: "t".into(),
        dims: vec![32],
        ggml_type: 0,
    }];
    {
        let mut w = GgufWriter::create(&path, &[], infos.clone()).unwrap();
        assert!(w
            .write_tensor("u", &[0; 128])
            .unwrap_err()
            .to_string()
            .contains("out of order"));
        assert!(w
            .write_tensor("t", &[0; 12])
            .unwrap_err()
            .to_string()
            .contains("12 bytes given, 128 expected"));
    }
    let w = GgufWriter::create(&path, &[], infos).unwrap();
    assert!(w
        .finish()
        .unwrap_err()
        .to_string()
        .contains("1 of 1 tensors never written"));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let bad = GgufWriter::create(
        &path,
        &[],
        vec![TensorInfo {
            name: "q".into(),
            dims: vec![100],
            ggml_type: 12,
        }],
    );
    assert!(bad.err().unwrap().to_string().contains("cannot hold shape"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_and_corrupted_files_are_errors_not_crashes() {
    let dir = std::env::temp_dir().join(format!("sq-gguf-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.gguf");
    write_sample(&path);
    let good = std::fs::read(&path).unwrap();
    let p = Path::new("mem.gguf");
    // Cutting only the zero padding after the last tensor loses nothing; any earlier cut must fail.
    let parsed = GgufFile::from_bytes(p, good.clone()).unwrap();
    let last = parsed.tensors.last().unwrap();
    let data_end = (last.offset + last.nbytes) as usize;
    assert!(GgufFile::from_bytes(p, good[..data_end].to_vec()).is_ok());
    for cut in 0..data_end {
        let r = GgufFile::from_bytes(p, good[..cut].to_vec());
        assert!(r.is_err(), "truncated at {cut} was accepted");
        assert!(r.err().unwrap().to_string().starts_with("mem.gguf: "));
    }
    // every byte of the header set to a few hostile values: never a panic
    let header_len = GgufFile::from_bytes(p, good.clone()).unwrap().data_offset as usize;
    for i in 0..header_len {
        for v in [0x00u8, 0xff, 0x7f, 0x80, 0x01] {
            let mut b = good.clone();
            b[i] = v;
            let _ = GgufFile::from_bytes(p, b);
        }
    }
    // a count claiming more than the file holds is refused before allocating
    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(GgufFile::from_bytes(p, b)
        .err()
        .unwrap()
        .to_string()
        .contains("claims"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tensors_written_in_parts_equal_tensors_written_whole() {
    let dir = std::env::temp_dir().join(format!("sq-gguf-parts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let whole = dir.join("whole.gguf");
    let data = write_sample(&whole);
    let infos: Vec<TensorInfo> = GgufFile::open(&whole)
        .unwrap()
        .tensors
        .iter()
        .map(|t| TensorInfo {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
        })
        .collect();
    let parts = dir.join("parts.gguf");
    let mut w = GgufWriter::create(&parts, &sample_kvs(), infos.clone()).unwrap();
    for (t, d) in infos.iter().zip(&data) {
        // uneven pieces, an empty one among them
        for piece in [
            &d[..d.len() / 3],
            &d[d.len() / 3..d.len() / 3],
            &d[d.len() / 3..],
        ] {
            w.write_tensor_part(&t.name, piece).unwrap();
        }
    }
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&parts).unwrap()
    );
    // too many bytes in parts, and a whole write after a part, are refused
    let mut w = GgufWriter::create(&dir.join("bad.gguf"), &[], infos.clone()).unwrap();
    let n = data[0].len();
    w.write_tensor_part(&infos[0].name, &data[0][..n - 1])
        .unwrap();
    let e = w
        .write_tensor_part(&infos[0].name, &data[0][..2])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{} bytes given, {n} expected", n + 1)),
        "{e}"
    );
    let e = w
        .write_tensor(&infos[0].name, &data[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("written whole after a part"), "{e}");
    drop(w);
    std::fs::remove_dir_all(&dir).unwrap();
}
