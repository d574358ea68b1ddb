"""llama.cpp's per-tensor type policy (`llama_tensor_get_type`) for dense models, the file
types simpo-q writes, and llama-quantize's overrides. Facts: docs/conversion.md,
checked against llama-cpp-python 0.3.36's llama-quant.cpp (256-block → 32-block fallbacks:
Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then F16)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from simpo_q._native import SimpoQError, type_info

# name → (llama_ftype id, default ggml type)
FILE_TYPES = {
    "F32": (0, "F32"),
    "F16": (1, "F16"),
    "BF16": (32, "BF16"),
    "Q8_0": (7, "Q8_0"),
    "Q2_K": (10, "Q2_K"),
    "Q2_K_S": (21, "Q2_K"),
    "Q3_K_S": (11, "Q3_K"),
    "Q3_K_M": (12, "Q3_K"),
    "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"),
    "Q4_K_M": (15, "Q4_K"),
    "Q5_K_S": (16, "Q5_K"),
    "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}
# llama-quantize's COPY: every tensor as it is in the input GGUF, the input's file type kept
COPY = "COPY"
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
BLOCK_NAME = re.compile(r"^blk\.(\d+)\.")


def weights_map_key(name: str) -> tuple[int, str]:
    """llama.cpp's tensor order: the block number first (non-block tensors count as −1),
    then plain string order."""
    m = BLOCK_NAME.match(name)
    return (int(m.group(1)) if m else -1, name)


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def should_quantize(name: str, ndim: int) -> bool:
    return name.endswith("weight") and ndim >= 2 and "_norm.weight" not in name


@dataclass
class Overrides:
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: list[tuple[str, str]] = field(default_factory=list)  # (regex, type), first match wins
    pure: bool = False
    leave_output: bool = False  # --leave-output-tensor: output.weight keeps its input type


def ggml_type_name(t: str) -> str:
    """ggml's spelling of a type (q3_K, q8_0, bf16), as llama.cpp's logs print it."""
    return t.lower().replace("_k", "_K")


def _block(t: str) -> int:
    return type_info(t)[1]


def _fallback(name: str, t: str, ne0: int) -> str:
    if ne0 % _block(t) == 0:
        return t
    new = FALLBACK.get(t, t)
    if ne0 % _block(new) != 0:
        new = "F16"
    return new


def check_file_type(ftype: str) -> str:
    """The file type's canonical (upper-case) name, from a name or llama-quantize's number
    (`15` is Q4_K_M), or a clear error."""
    by_id = {str(i): name for name, (i, _) in FILE_TYPES.items()}
    if ftype.strip() in by_id:
        return by_id[ftype.strip()]
    if ftype.strip().upper() == COPY:
        return COPY
    if ftype.upper() not in FILE_TYPES:
        raise SimpoQError(
            f"--type: unknown file type {ftype!r}; supported: "
            f"{', '.join(f'{n} ({i})' for n, (i, _) in FILE_TYPES.items())}, {COPY}"
        )
    return ftype.upper()


@dataclass
class _State:
    """What llama.cpp's type choice knows of the model and counts as it goes (its
    quantize_state_impl)."""

    ftype: str
    default: str
    has_output: bool  # an untied head; otherwise token_embd is the output
    n_attn_v: int
    n_layer: int
    llama_70b: bool  # llama.cpp's LLM_TYPE_70B: its attn_v gets more bits
    n_gqa: int  # query heads per key head (n_head / n_head_kv), from the attn_q/attn_k rows
    i_attn_v: int = 0
    i_ffn_down: int = 0


def _is_llama_70b(arch: str, shapes: dict[str, tuple[int, ...]], n_layer: int) -> bool:
    """llama-quant's model-type inference: a llama of 80 layers whose key heads are fewer than
    its query heads (fewer attn_k rows than attn_q rows)."""
    q, k = shapes.get("blk.0.attn_q.weight"), shapes.get("blk.0.attn_k.weight")
    return arch == "llama" and n_layer == 80 and q is not None and k is not None and q[0] != k[0]


def _n_gqa(shapes: dict[str, tuple[int, ...]]) -> int:
    """n_head / n_head_kv of layer 0: attn_q's rows over attn_k's (both heads × head_dim)."""
    q, k = shapes.get("blk.0.attn_q.weight"), shapes.get("blk.0.attn_k.weight")
    return q[0] // k[0] if q is not None and k is not None and k[0] else 1


def plan_types(
    ftype: str,
    tensors: list[tuple[str, tuple[int, ...]]],
    ov: Overrides | None = None,
    input_types: dict[str, str] | None = None,
    fallbacks: list[str] | None = None,
    arch: str = "",
    n_layer: int | None = None,
) -> dict[str, str]:
    """The output type of every tensor (GGUF names, numpy shapes), in llama.cpp's order.
    `fallbacks` collects llama-quantize's warning line for each tensor whose row length
    does not fit its type. `arch`: the GGUF architecture (one llama.cpp rule depends on it)."""
    ov = ov or Overrides()
    ftype = check_file_type(ftype)
    default = FILE_TYPES[ftype][1]
    names = sorted((n for n, _ in tensors), key=weights_map_key)
    shapes = dict(tensors)
    # llama.cpp's ffn_down rules count in the model's layers (its block count), which a pruned
    # model no longer has all of; attn_v's count the tensors
    if n_layer is None:
        n_layer = sum(1 for n in names if n.endswith("ffn_down.weight"))
    qs = _State(
        ftype,
        default,
        "output.weight" in shapes,
        sum(1 for n in names if n.endswith("attn_v.weight")),
        n_layer,
        _is_llama_70b(arch, shapes, n_layer),
        _n_gqa(shapes),
    )
    out: dict[str, str] = {}
    patterns = []
    for p, t in ov.tensor_types:
        try:
            patterns.append((re.compile(p), t))
        except re.error as e:
            raise SimpoQError(f"--tensor-type {p}={t}: {p!r} is not a valid regular expression ({e})") from e
    for name in names:
        shape = shapes[name]
        if not should_quantize(name, len(shape)) or (ov.leave_output and name == "output.weight"):
            out[name] = (input_types or {}).get(name, "F32")
            continue
        ne0 = shape[-1]
        t = default
        quantized_default = default not in ("F32", "F16", "BF16")
        if not ov.pure and quantized_default:
            t = _get_type(qs, name, ne0, ov)
        if name.endswith("attn_v.weight"):
            qs.i_attn_v += 1
        if name.endswith("ffn_down.weight"):
            qs.i_ffn_down += 1
        if ov.token_embedding_type and name == "token_embd.weight":
            t = ov.token_embedding_type.upper()
        if ov.output_tensor_type and name == "output.weight":
            t = ov.output_tensor_type.upper()
        for rx, tt in patterns:
            if rx.search(name):
                t = tt.upper()
                break
        new = _fallback(name, t, ne0)
        if new != t and fallbacks is not None:
            # llama.cpp's tensor_type_fallback wording
            unusual = "(WARNING: must use F16 due to unusual shape) " if new == "F16" else ""
            fallbacks.append(
                f"warning: {name:<36s} - ncols {ne0:6d} not divisible by {_block(t):3d} (required for "
                f"type {ggml_type_name(t):>7s}) {unusual}-> falling back to {ggml_type_name(new):>7s}"
            )
        out[name] = new
    return out


def requires_imatrix(ftype: str, name: str, t: str) -> bool:
    """llama.cpp's tensor_requires_imatrix for the types simpo-q writes: the Q2_K tensors of a
    Q2_K_S file (its head and embedding excepted)."""
    return ftype == "Q2_K_S" and t == "Q2_K" and name not in ("token_embd.weight", "output.weight")


def _get_type(qs: _State, name: str, ne0: int, ov: Overrides) -> str:
    """llama.cpp's llama_tensor_get_type for the file types simpo-q writes."""
    ftype, default = qs.ftype, qs.default
    t = default
    if name == "output.weight" or (name == "token_embd.weight" and not qs.has_output):
        if ov.output_tensor_type:
            return ov.output_tensor_type.upper()
        if ne0 % _block(default) != 0:
            return "Q8_0"
        return "Q6_K" if default != "Q8_0" else "Q8_0"
    if name.endswith("attn_v.weight"):
        i = qs.i_attn_v
        if ftype == "Q2_K":
            t = "Q4_K" if qs.n_gqa >= 4 else "Q3_K"
        elif ftype == "Q2_K_S" and qs.n_gqa >= 4:
            t = "Q4_K"
        elif ftype == "Q3_K_M":
            t = "Q5_K" if i < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            t = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, qs.n_attn_v):
            t = "Q6_K"
        elif ftype == "Q4_K_S" and i < 4:
            t = "Q5_K"
        if qs.llama_70b and t in ("Q3_K", "Q4_K"):
            # 8 query heads share each attn_v: more bits for little size
            t = "Q5_K"
    elif name.endswith("ffn_down.weight"):
        i, n_layer = qs.i_ffn_down, qs.n_layer
        if ftype == "Q2_K":
            t = "Q3_K"
        elif ftype == "Q2_K_S":
            if i < n_layer // 8:
                t = "Q4_K"
        elif ftype == "Q3_K_M":
            t = "Q5_K" if i < n_layer // 16 else "Q4_K"
        elif ftype == "Q3_K_L":
            t = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_layer):
            t = "Q6_K"
        elif ftype == "Q4_K_S" and i < n_layer // 8:
            t = "Q5_K"
    elif name.endswith("attn_output.weight"):
        if ftype == "Q2_K":
            t = "Q3_K"
        elif ftype == "Q3_K_M":
            t = "Q4_K"
        elif ftype == "Q3_K_L":
            t = "Q5_K"
    return t
