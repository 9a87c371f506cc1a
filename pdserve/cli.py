"""``pdserve`` command line; each subcommand imports its heavy dependencies lazily."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdserve.simulation.traces import ARRIVALS  # standard library only


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
    from pdserve.simulation.profiler import profile, refit
    from pdserve.simulation.serve_config import load_app, pick_model

    if args.refit:
        result = refit(args.out)
        steps = result.step_times
        print(f"refitted {args.out}: {steps.steps} steps, held-out error "
              f"{steps.heldout_mape:.1f}% MAPE; host noise {steps.noise_mape or 0:.1f}%")
        return 0
    if args.config is None:
        raise ValueError("--config is required (unless --refit)")
    model = pick_model(load_app(args.config), args.model)
    result = profile(model, args.out, cores=args.cores, repeats=args.repeats, quick=args.quick,
                     kv_transfer=not args.no_kv_transfer, graph_runs=args.graph_runs,
                     command=args.command_line)
    steps = result.step_times
    noise = "" if steps.noise_mape is None else f"; host noise {steps.noise_mape:.1f}%"
    print(f"wrote {args.out}: {steps.steps} steps, step model held-out error "
          f"{steps.heldout_mape:.1f}% MAPE (p90 {steps.heldout_p90_ape:.1f}%{noise}), "
          f"{result.kv_cache.num_blocks} KV blocks of {result.kv_cache.block_size} tokens"
          + (f", KV pulls {result.kv_transfer.alpha_s * 1e3:.2f} ms + "
             f"{result.kv_transfer.bytes_per_s / 1e9:.2f} GB/s" if result.kv_transfer else ""))
    return 0


def _trace(args: argparse.Namespace) -> list:
    """The trace `simulate` and `plan` were given: a file, a vLLM dataset or a generator."""
    from pdserve.simulation import simulate, traces

    if args.trace is not None:
        trace = traces.read(args.trace)
    elif args.vllm_dataset is not None:
        trace = simulate.dataset_trace(args.config, args.model, args.vllm_dataset,
                                       args.tokenizer, args.arrivals, args.rate, args.duration,
                                       args.seed)
    elif args.rate is not None:
        trace = simulate.generated_trace(args.arrivals, args.rate, args.num_requests,
                                         args.duration, args.prompt_tokens, args.output_tokens,
                                         args.mixed, args.seed)
    else:
        raise ValueError("give --trace FILE, --vllm-dataset OPTIONS or --rate R (with "
                         "--arrivals, lengths)")
    return trace


def _simulate(args: argparse.Namespace) -> int:
    """Simulate a served model over a trace with a profile; write the report and plots."""
    from pdserve.simulation import simulate

    if args.also_model:
        return _simulate_app(args)
    trace = _trace(args)
    replicas = dict(_replica_count(v) for v in args.replicas or [])
    result = simulate.simulate(args.profile, args.config, trace, args.out, args.model,
                               args.seed, args.slo_ttft_ms, args.slo_itl_ms, replicas or None,
                               command=args.command_line,
                               autoscaling=None if args.autoscaling == "off" else args.autoscaling,
                               startup_s=args.startup_s, planner_profile=args.planner_profile)
    print((args.out / "report.md").read_text(), end="")
    return 0 if result["summary"]["completed"] else 1


def _simulate_app(args: argparse.Namespace) -> int:
    """Several models of the config on one clock, each its own generated trace (the same
    options, the seed advanced per model)."""
    from pdserve.simulation import app_sim, simulate

    if args.rate is None or args.trace or args.vllm_dataset or args.replicas:
        raise ValueError("--also-model simulates generated traces (--rate ...) of autoscaled "
                         "models: no --trace, --vllm-dataset or --replicas")
    if args.model is None:
        raise ValueError("--also-model needs --model (the first model)")
    models = [args.model, *args.also_model]
    if len(set(models)) < len(models):
        raise ValueError(f"a model was named twice: {models}")
    traces = {model: simulate.generated_trace(args.arrivals, args.rate, args.num_requests,
                                              args.duration, args.prompt_tokens,
                                              args.output_tokens, args.mixed, args.seed + i)
              for i, model in enumerate(models)}
    result = app_sim.simulate_app(
        args.profile, args.config, traces, args.out, args.seed, args.slo_ttft_ms,
        args.slo_itl_ms, None if args.autoscaling == "off" else args.autoscaling,
        args.startup_s, command=args.command_line, planner_profile=args.planner_profile)
    print((args.out / "report.md").read_text(), end="")
    return 0 if result["summary"]["completed"] else 1


def _plan(args: argparse.Namespace) -> int:
    """Search colocated and PD deployments of a model for a trace and an SLO; write the
    frontier and the recommended serve config."""
    from pdserve.simulation import planner

    result = planner.run(args.profile, args.config, args.model, _trace(args), args.slo_ttft_ms,
                         args.slo_itl_ms, args.attainment, args.budget, args.out,
                         search_rate=args.search_rate, seed=args.seed,
                         command=args.command_line)
    print((args.out / "plan.md").read_text(), end="")
    return 0 if result["recommended"] else 1


def _replica_count(value: str) -> tuple[str, int]:
    pool, _, count = value.partition("=")
    if pool not in ("prefill", "decode", "colocated") or not count.isdigit():
        raise ValueError(f"--replicas {value!r}: expected POOL=N, POOL one of prefill, "
                         "decode, colocated")
    return pool, int(count)


def _trace_arguments(parser: argparse.ArgumentParser) -> None:
    """The trace options `simulate` and `plan` share."""
    parser.add_argument("--trace", type=Path, default=None,
                     help="trace: JSONL (arrival_s, prompt_tokens, output_tokens, optional "
                     "prefix_id/prefix_tokens) or a vLLM serving-benchmark result file")
    parser.add_argument("--vllm-dataset", default=None, metavar="OPTIONS",
                     help="or sample a dataset with vLLM's serving benchmark, its options in "
                     "one string: \"--dataset-name sharegpt --dataset-path x.json "
                     "--num-prompts 500\" (arrivals: the dataset's own, or --rate/--arrivals)")
    parser.add_argument("--tokenizer", default=None,
                     help="with --vllm-dataset: tokenizer name or path (default: the model's)")
    parser.add_argument("--rate", type=float, default=None, help="or generate: requests/s")
    parser.add_argument("--arrivals", default="poisson", choices=ARRIVALS,
                     help="generated arrivals (default: poisson)")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--duration", type=float, default=None,
                     help="diurnal: seconds (one period; default: num-requests / rate)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--mixed", action="store_true",
                     help="half long prompts (--prompt-tokens, 16 out), half 64-token "
                     "prompts with --output-tokens out")


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
    prof.add_argument("--config", type=Path, default=None, help="serve config YAML")
    prof.add_argument("--model", default=None, help="model id (default: the config's only one)")
    prof.add_argument("--out", type=Path, required=True, help="profile file to write (JSON)")
    prof.add_argument("--cores", default=None,
                      help="cores the engine's threads are bound to, vLLM's syntax (default: the "
                      "first core this process may run on)")
    prof.add_argument("--repeats", type=int, default=2, help="runs of each sweep point")
    prof.add_argument("--quick", action="store_true", help="a coarser sweep (tests, a look)")
    prof.add_argument("--refit", action="store_true",
                      help="only fit the step model of --out again from its steps log")
    prof.add_argument("--no-kv-transfer", action="store_true",
                      help="skip the KV-transfer measurement (two more engines)")
    prof.add_argument("--graph-runs", type=Path, nargs="+", default=None, metavar="RESULT",
                      help="vLLM serving-benchmark results (--save-detailed) of concurrency-1 "
                      "runs against this config served: the graph's overhead over the bare "
                      "engine is calibrated from them")
    prof.set_defaults(func=_profile)
    sim = sub.add_parser("simulate", help="simulate a served model over a trace with a "
                         "profile (vLLM's own scheduler, the graph's router and PD plan)")
    sim.add_argument("--profile", type=Path, required=True, help="profile file (JSON)")
    sim.add_argument("--config", type=Path, required=True, help="serve config YAML")
    sim.add_argument("--model", default=None, help="model id (default: the config's only one)")
    sim.add_argument("--also-model", nargs="+", default=None, metavar="MODEL",
                     help="more models of the config, simulated with --model on one clock "
                     "under one autoscaler (the app-level policy shares the budget); each gets "
                     "a trace of the same generator options, its seed advanced")
    _trace_arguments(sim)
    sim.add_argument("--replicas", nargs="*", metavar="POOL=N",
                     help="replica counts instead of the config's (prefill=1 decode=2)")
    sim.add_argument("--autoscaling", default="config",
                     choices=("config", "slo_app", "slo", "ray_default", "off"),
                     help="autoscaled pools follow: the policy the config runs (default), "
                     "pdserve's SLO policy (app-level or per pool), Ray Serve's default, or "
                     "stay at their initial count (off); ignored with --replicas")
    sim.add_argument("--planner-profile", type=Path, default=None,
                     help="run the autoscaler's slow loop on this profile (as the config's "
                     "`planner.profile` would; interval 60 s)")
    sim.add_argument("--startup-s", type=float, default=None,
                     help="a new replica's start-up time (default: the profile's startup_s)")
    sim.add_argument("--slo-ttft-ms", type=float, default=None)
    sim.add_argument("--slo-itl-ms", type=float, default=None)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", type=Path, required=True, help="report folder")
    sim.set_defaults(func=_simulate)
    plan = sub.add_parser("plan", help="search colocated and PD deployments of a model for a "
                          "trace and an SLO (closed-form pruning, then simulation); write the "
                          "recommended serve config")
    plan.add_argument("--profile", type=Path, required=True, help="profile file (JSON)")
    plan.add_argument("--config", type=Path, required=True,
                      help="serve config YAML (the model, its engine arguments and pools)")
    plan.add_argument("--model", default=None, help="model id (default: the config's only one)")
    _trace_arguments(plan)
    plan.add_argument("--slo-ttft-ms", type=float, required=True)
    plan.add_argument("--slo-itl-ms", type=float, required=True,
                      help="every gap between a request's tokens within this")
    plan.add_argument("--attainment", type=float, default=90.0,
                      help="%% of requests that must meet the SLO (default: 90)")
    plan.add_argument("--budget", type=int, default=None,
                      help="most engines (default: the config's replica_budget, else 4)")
    plan.add_argument("--search-rate", action="store_true",
                      help="also find each candidate's largest sustainable rate (up to 8 more "
                      "simulations each)")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--out", type=Path, required=True,
                      help="folder for plan.{json,md} and serve_config.yaml")
    plan.set_defaults(func=_plan)
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
    args.command_line = "pdserve " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except (ValueError, FileExistsError, RuntimeError) as exc:
        print(f"pdserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"pdserve {args.command}: error: {exc.name or exc} is not installed "
              "(pip install 'pdserve[sim]' for profile and simulate)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
