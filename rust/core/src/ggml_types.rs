//! ggml's type table: the id, name, values per block and bytes per block of every type a GGUF
//! can hold (not only the ones simpo-q quantizes), so files of any type can be read and sized.
//! The one owner of these numbers: `QuantType` and every block layout's byte count read them
//! from here (the layouts at compile time, through `block_bytes`).

/// (ggml type id, name, values per block, bytes per block)
const TABLE: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
];

/// Bytes per block of a ggml type id, at compile time (a block layout's size constant); an
/// unknown id does not compile.
pub const fn block_bytes(id: u32) -> usize {
    let mut i = 0;
    while i < TABLE.len() {
        if TABLE[i].0 == id {
            return TABLE[i].3 as usize;
        }
        i += 1;
    }
    panic!("not a ggml type id")
}

/// (values per block, bytes per block) of a ggml type id.
pub fn ggml_type_size(id: u32) -> Option<(u64, u64)> {
    TABLE.iter().find(|t| t.0 == id).map(|t| (t.2, t.3))
}

pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    TABLE.iter().find(|t| t.0 == id).map(|t| t.1)
}

/// Bytes of a tensor with dims `ne` (ne0 first), or None when ne0 is not a multiple of the
/// block size, the type is unknown, or the size overflows.
pub fn tensor_nbytes(id: u32, ne: &[u64]) -> Option<u64> {
    let (block, size) = ggml_type_size(id)?;
    let ne0 = *ne.first().unwrap_or(&1);
    if ne0 % block != 0 {
        return None;
    }
    let mut n = (ne0 / block).checked_mul(size)?;
    for &d in ne.iter().skip(1) {
        n = n.checked_mul(d)?;
    }
    Some(n)
}
