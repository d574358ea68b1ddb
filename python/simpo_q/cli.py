"""The `simpo-q` command line: parses arguments and calls the public Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _tiny_model(args: argparse.Namespace) -> int:
    from simpo_q.tiny import TinyConfig, build_tiny_model

    cfg = TinyConfig(seed=args.seed, layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                     heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim, vocab=args.vocab,
                     shards=args.shards)
    out = build_tiny_model(args.dir, cfg, pretrain_steps=args.pretrain_steps, quiet=args.quiet)
    if not args.quiet:
        for p in sorted(out.iterdir()):
            print(f"wrote {p} ({p.stat().st_size} bytes)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from simpo_q.demo import run_demo

    for path in run_demo(Path(args.out), cache=Path(args.cache), quiet=args.quiet):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simpo-q",
        description="SimPO preference fine-tuning to an importance-weighted k-quant GGUF.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-file lines")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tiny-model", help="write the tiny real Gemma-2 checkpoint (deterministic)")
    t.add_argument("dir", help="output directory")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--intermediate", type=int, default=512)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--kv-heads", type=int, default=2)
    t.add_argument("--head-dim", type=int, default=64)
    t.add_argument("--vocab", type=int, default=3072)
    t.add_argument("--shards", type=int, default=1, help="write N safetensors files plus an index")
    t.add_argument("--pretrain-steps", type=int, default=0,
                   help="train briefly on the bundled text first, so it is a real (tiny) language model")
    t.set_defaults(func=_tiny_model)

    d = sub.add_parser("demo", help="the main job on the embedded default (tiny pretrained Gemma-2)")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--cache", default=".cache")
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:
        print(f"simpo-q: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
