"""Writes the golden vectors under rust/core/tests/golden/, so `cargo test` checks bytes
without Python: inputs, ggml's bytes (`ggml_quantize_chunk`, llama-cpp-python 0.3.36) and
the reference dequantization (`gguf.quants.dequantize`). Run: .venv/bin/python tests/make_golden.py

File format (little-endian): b"SQGV", u32 version=1, u32 n_cases, then per case:
u32 len + kind name, u32 rows, u32 n_per_row, u8 has_imatrix, f32 x[rows*n],
[f32 imatrix[n]], u32 n_bytes, bytes, f32 dequantized[rows*n].
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from adversarial import DATA_KINDS, make_data, make_imatrix  # noqa: E402
from ggml_ref import GGML_TYPE_IDS, ggml  # noqa: E402

OUT = Path(__file__).parent.parent / "rust" / "core" / "tests" / "golden"


def main() -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    OUT.mkdir(parents=True, exist_ok=True)
    for qtype in GGML_TYPE_IDS:
        rng = np.random.default_rng(GGML_TYPE_IDS[qtype])
        cases = []
        for kind in DATA_KINDS:
            x = make_data(kind, 1, 256, rng)
            for ik in (None, "exp2", "one_hot"):
                w = None if ik is None else make_imatrix(ik, 256, rng)
                q = ggml().quantize(x, qtype, w)
                deq = np.asarray(dequantize(q, GGMLQuantizationType[qtype]), np.float32).reshape(x.shape)
                name = f"{kind}/{ik or 'none'}".encode()
                blob = struct.pack("<I", len(name)) + name + struct.pack("<IIB", 1, 256, w is not None)
                blob += x.astype("<f4").tobytes() + (b"" if w is None else w.astype("<f4").tobytes())
                blob += struct.pack("<I", q.nbytes) + q.tobytes() + deq.astype("<f4").tobytes()
                cases.append(blob)
        data = b"SQGV" + struct.pack("<II", 1, len(cases)) + b"".join(cases)
        (OUT / f"{qtype}.bin").write_bytes(data)
        print(f"wrote {OUT / (qtype + '.bin')} ({len(data)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
