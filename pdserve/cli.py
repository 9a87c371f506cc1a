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


def _ingest(args: argparse.Namespace) -> int:
    """Index files into a running pipeline's vector store (replacing files indexed before)."""
    from pdserve.ingest import find_files, ingest_local, ingest_ray_data

    files = find_files(args.paths)
    if not files:
        raise ValueError(f"no text or Markdown files under {' '.join(args.paths)}")
    if args.ray_data:
        totals = ingest_ray_data(args.url, args.pipeline, files, args.batch_docs,
                                 args.concurrency, args.ray_address)
    else:
        totals = ingest_local(args.url, args.pipeline, files, args.batch_docs)
    print(f"indexed {totals['documents']} documents as {totals['chunks']} chunks "
          f"into pipeline {args.pipeline!r}")
    return 0


def _new_key(args: argparse.Namespace) -> int:
    """Print a new API key (once: only its hash is kept) and the entry that admits it."""
    import yaml

    from pdserve.deployments.api.keys import key_hash, new_key
    from pdserve.deployments.config.security import ApiKeyEntry

    key = new_key()
    entry = ApiKeyEntry(name=args.name, sha256=key_hash(key),
                        scopes=args.scopes.split(","),
                        models=args.models.split(",") if args.models else None)
    doc = yaml.safe_dump({"keys": [entry.model_dump(exclude_none=True)]}, sort_keys=False)
    print(f"# the key (shown once; give it to {args.name}):\n# {key}\n"
          f"# its entry, for the file `auth.keys_file` names (under `keys:`):\n{doc}", end="")
    return 0


def _profile(args: argparse.Namespace) -> int:
    """Measure the engine of a served model on this machine; write its profile file."""
    from pdserve.simulation.profiler import profile
    from pdserve.simulation.serve_config import load_app, pick_model

    model = pick_model(load_app(args.config), args.model)
    result = profile(model, args.out, cores=args.cores, repeats=args.repeats, quick=args.quick,
                     kv_transfer=not args.no_kv_transfer, graph_report=args.graph_report,
                     command="pdserve profile " + " ".join(sys.argv[2:]))
    steps = result.step_times
    print(f"wrote {args.out}: {steps.steps} steps, step model held-out error "
          f"{steps.heldout_mape:.1f}% MAPE (p90 {steps.heldout_p90_ape:.1f}%), "
          f"{result.kv_cache.num_blocks} KV blocks of {result.kv_cache.block_size} tokens"
          + (f", KV pulls {result.kv_transfer.alpha_s * 1e3:.2f} ms + "
             f"{result.kv_transfer.bytes_per_s / 1e9:.2f} GB/s" if result.kv_transfer else ""))
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
    ingest = sub.add_parser("ingest", help="index text/Markdown files into a served pipeline")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    ingest.add_argument("--pipeline", required=True, help="pipeline name (its model id)")
    ingest.add_argument("--url", default="http://127.0.0.1:8000",
                        help="the pdserve server (default: http://127.0.0.1:8000)")
    ingest.add_argument("--batch-docs", type=int, default=16,
                        help="documents per upsert call (default: 16)")
    ingest.add_argument("--ray-data", action="store_true",
                        help="read and send on Ray Data (large corpora, Ray clusters)")
    ingest.add_argument("--ray-address", default=None,
                        help="with --ray-data: Ray cluster address (default: the running "
                        "cluster, or a local one)")
    ingest.add_argument("--concurrency", type=int, default=4,
                        help="with --ray-data: parallel senders (default: 4)")
    ingest.set_defaults(func=_ingest)
    prof = sub.add_parser("profile", help="measure a served model's engine on this machine "
                          "(step times, KV capacity, KV transfer) for `pdserve simulate`")
    prof.add_argument("--config", type=Path, required=True, help="serve config YAML")
    prof.add_argument("--model", default=None, help="model id (default: the config's only one)")
    prof.add_argument("--out", type=Path, required=True, help="profile file to write (JSON)")
    prof.add_argument("--cores", default="0",
                      help="cores the engine's threads are bound to, vLLM's syntax (default: 0)")
    prof.add_argument("--repeats", type=int, default=2, help="runs of each sweep point")
    prof.add_argument("--quick", action="store_true", help="a coarser sweep (tests, a look)")
    prof.add_argument("--no-kv-transfer", action="store_true",
                      help="skip the KV-transfer measurement (two more engines)")
    prof.add_argument("--graph-report", type=Path, default=None,
                      help="an overhead benchmark report.json: take the graph's per-request "
                      "and per-token overhead from it")
    prof.set_defaults(func=_profile)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys", required=True)
    new = keys.add_parser("new", help="make a key; print it and its keys-file entry")
    new.add_argument("--name", required=True, help="who holds the key")
    new.add_argument("--scopes", default="inference",
                     help="comma-separated: inference, documents:write, admin "
                     "(default: inference)")
    new.add_argument("--models", default=None,
                     help="comma-separated models/pipelines the key may use (default: all)")
    new.set_defaults(func=_new_key)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pdserve`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileExistsError, RuntimeError) as exc:
        print(f"pdserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
