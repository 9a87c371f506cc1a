"""``pdserve`` command line; each subcommand imports its heavy dependencies lazily."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _tiny_model(args: argparse.Namespace) -> int:
    """Build (or reuse) a tiny test model and print only its directory on stdout."""
    from pdserve.tiny_model import build_tiny_model

    path = build_tiny_model(size=args.size, seed=args.seed, out_dir=args.out)
    print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    """Argument parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="pdserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-model", help="build the offline tiny Llama test model")
    tiny.add_argument("--size", default="tiny", help="model size (default: tiny)")
    tiny.add_argument("--seed", type=int, default=0, help="construction seed (default: 0)")
    tiny.add_argument("--out", type=Path, default=None, help="output dir (default: cache)")
    tiny.set_defaults(func=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pdserve`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileExistsError) as exc:
        print(f"pdserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
