"""Request traces for the simulator: read, write and generate.

A trace is a list of `TraceRequest`s (arrival time, prompt length, output length, optionally a
shared-prefix id and its length). JSONL, one request per line:

    {"arrival_s": 0.52, "prompt_tokens": 1536, "output_tokens": 16}
    {"arrival_s": 0.90, "prompt_tokens": 600, "output_tokens": 64, "prefix_id": "doc-3",
     "prefix_tokens": 512}

Also read: a result file of vLLM's serving benchmark (`vllm bench serve --save-result
--save-detailed`: `start_times`, `input_lens`, `output_lens`), which replays exactly the
requests a measured run sent; and any dataset vLLM's serving benchmark samples (`sharegpt`,
`random`, `prefix_repetition`, `burstgpt`, timed traces, ...), sampled by vLLM's own code with
its own arguments and the served model's tokenizer, each prompt's own tokens kept (so prefix
sharing in the dataset reaches the prefix caches and the router). Generated: Poisson, bursty
(gamma inter-arrivals with a coefficient of variation above 1, as vLLM's `--burstiness` below
1) and diurnal (a sinusoidal rate, by thinning) arrivals.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_id: str | None = None
    prefix_tokens: int = 0
    prompt_ids: tuple[int, ...] | None = None  # the prompt's own tokens, when a dataset gave it

    def token_ids(self, index: int, vocab: int) -> list[int]:
        """The prompt's own tokens when known, else deterministic ones: the shared prefix (the
        same for every request naming `prefix_id`), then tokens of this request alone."""
        if self.prompt_ids is not None:
            return list(self.prompt_ids)
        low, high = token_range(vocab)
        shared = min(self.prefix_tokens, self.prompt_tokens) if self.prefix_id else 0
        prefix_rng = random.Random(f"prefix:{self.prefix_id}")
        own_rng = random.Random(f"request:{index}")
        return ([prefix_rng.randrange(low, high) for _ in range(shared)]
                + [own_rng.randrange(low, high) for _ in range(self.prompt_tokens - shared)])


def token_range(vocab: int) -> tuple[int, int]:
    """Token ids a generated prompt draws from (`randrange(low, high)`): clear of the lowest
    ids, where tokenizers usually keep their special tokens, and of the top of the vocabulary."""
    return 10, max(11, vocab - 10)


def read_jsonl(path: Path) -> list[TraceRequest]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row.get("prompt_ids") is not None:
                row["prompt_ids"] = tuple(row["prompt_ids"])
            out.append(TraceRequest(**row))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: not a trace request ({e})") from e
    return sorted(out, key=lambda r: r.arrival_s)


def write_jsonl(path: Path, trace: Iterable[TraceRequest]) -> None:
    with Path(path).open("w") as f:
        for request in trace:
            row = {k: v for k, v in asdict(request).items() if v not in (None, 0) or
                   k in ("arrival_s", "prompt_tokens", "output_tokens")}
            f.write(json.dumps(row) + "\n")


def read_vllm_result(path: Path, skip_failed: bool = True,
                     prompts: Sequence[TraceRequest] | None = None) -> list[TraceRequest]:
    """The requests a run of vLLM's serving benchmark sent (its detailed result file);
    `prompts`: the dataset it sent, in order, whose tokens the requests then carry (their
    lengths must be the result's)."""
    data = json.loads(Path(path).read_text())
    starts, inputs, outputs = (data.get(k) for k in ("start_times", "input_lens", "output_lens"))
    if not starts or not inputs or not outputs:
        raise ValueError(f"{path}: no start_times/input_lens/output_lens (run vLLM's benchmark "
                         "with --save-result --save-detailed)")
    errors = data.get("errors") or [""] * len(starts)
    first = min(starts)
    if prompts is not None and [p.prompt_tokens for p in prompts] != [int(i) for i in inputs]:
        raise ValueError(f"{path}: the prompts given are not the ones the run sent")
    ids = [p.prompt_ids for p in prompts] if prompts is not None else [None] * len(starts)
    trace = [TraceRequest(arrival_s=s - first, prompt_tokens=int(i), output_tokens=int(o),
                          prompt_ids=t)
             for s, i, o, e, t in zip(starts, inputs, outputs, errors, ids, strict=False)
             if not (skip_failed and e) and o > 0]
    return sorted(trace, key=lambda r: r.arrival_s)


def read(path: Path) -> list[TraceRequest]:
    """A trace from JSONL or a vLLM benchmark result (told apart by content)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("{") and '"start_times"' in text[:2_000_000]:
        return read_vllm_result(path)
    return read_jsonl(path)


def read_vllm_dataset(arguments: str, tokenizer: str) -> list[TraceRequest]:
    """Requests sampled from a dataset by vLLM's serving benchmark's own code: `arguments` are
    its dataset options (`--dataset-name sharegpt --dataset-path x.json --num-prompts 500
    --seed 0`, ...), `tokenizer` a name or path. Arrival times are the dataset's (timed traces)
    or 0 (give the trace arrivals with `with_arrivals`)."""
    import argparse
    import shlex

    from vllm.benchmarks.datasets import get_samples
    from vllm.benchmarks.serve import add_cli_args
    from vllm.tokenizers import get_tokenizer

    parser = argparse.ArgumentParser(prog="vLLM dataset options", add_help=False,
                                     exit_on_error=False)
    add_cli_args(parser)
    try:
        args, unknown = parser.parse_known_args(shlex.split(arguments))
    except (argparse.ArgumentError, SystemExit) as e:
        raise ValueError(f"vLLM dataset options {arguments!r}: {e}") from e
    if unknown:
        raise ValueError(f"vLLM dataset options: unknown {' '.join(unknown)}")
    tok = get_tokenizer(tokenizer)
    out = []
    for sample in get_samples(args, tok):
        prompt = sample.prompt
        if sample.multi_modal_data or sample.chat_messages:
            raise ValueError(f"dataset {args.dataset_name!r}: multimodal and chat samples are "
                             "not simulated")
        if isinstance(prompt, str):
            ids = tok(prompt).input_ids
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            ids = prompt
        else:
            raise ValueError(f"dataset {args.dataset_name!r}: prompts of type "
                             f"{type(prompt).__name__} (multimodal or chat) are not simulated")
        out.append(TraceRequest(arrival_s=float(sample.timestamp or 0.0),
                                prompt_tokens=len(ids), output_tokens=int(
                                    sample.expected_output_len), prompt_ids=tuple(ids)))
    if not out:
        raise ValueError(f"vLLM dataset options {arguments!r}: no requests sampled")
    if any(r.arrival_s for r in out):
        first = min(r.arrival_s for r in out)
        out = [replace(r, arrival_s=r.arrival_s - first) for r in out]
    return sorted(out, key=lambda r: r.arrival_s)


def with_arrivals(requests: Sequence[TraceRequest], arrivals: Sequence[TraceRequest]
                  ) -> list[TraceRequest]:
    """`requests` (their prompts and lengths, in order, cycled when fewer) at the arrival
    times of `arrivals` (a generated trace)."""
    if not requests:
        raise ValueError("no requests to give arrival times")
    return [replace(requests[i % len(requests)], arrival_s=a.arrival_s)
            for i, a in enumerate(arrivals)]


# -- generators ---------------------------------------------------------------------------
#: Generated arrival patterns `pdserve simulate --arrivals` offers.
ARRIVALS = ("poisson", "bursty", "diurnal")
Lengths = Callable[[random.Random], tuple[int, int]]


def fixed_lengths(prompt: int, output: int) -> Lengths:
    return lambda rng: (prompt, output)


def mixed_lengths(long_prompt: int, long_prompt_output: int, short_prompt: int,
                  long_decode_output: int, long_share: float = 0.5) -> Lengths:
    """Long prompts with short outputs and short prompts with long decodes (the mixed
    benchmark's workload)."""
    def draw(rng: random.Random) -> tuple[int, int]:
        if rng.random() < long_share:
            return long_prompt, long_prompt_output
        return short_prompt, long_decode_output
    return draw


def poisson(rate: float, count: int, lengths: Lengths, seed: int = 0) -> list[TraceRequest]:
    return gamma(rate, count, lengths, burstiness=1.0, seed=seed)


def gamma(rate: float, count: int, lengths: Lengths, burstiness: float,
          seed: int = 0) -> list[TraceRequest]:
    """Gamma inter-arrivals of mean 1/rate and shape `burstiness` (1: Poisson; below 1:
    bursty, coefficient of variation 1/sqrt(burstiness)), as vLLM's serving benchmark."""
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be > 0")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        prompt, output = lengths(rng)
        out.append(TraceRequest(arrival_s=t, prompt_tokens=prompt, output_tokens=output))
    return out


def diurnal(mean_rate: float, duration_s: float, period_s: float, lengths: Lengths,
            amplitude: float = 0.8, seed: int = 0) -> list[TraceRequest]:
    """Poisson arrivals whose rate follows mean × (1 + amplitude × sin(2πt / period)),
    drawn by thinning a Poisson process at the peak rate."""
    if not 0 <= amplitude < 1:
        raise ValueError("amplitude must be in [0, 1)")
    rng = random.Random(seed)
    peak = mean_rate * (1 + amplitude)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(peak)
        if t >= duration_s:
            return out
        rate = mean_rate * (1 + amplitude * math.sin(2 * math.pi * t / period_s))
        if rng.random() * peak <= rate:
            prompt, output = lengths(rng)
            out.append(TraceRequest(arrival_s=t, prompt_tokens=prompt, output_tokens=output))


def multiturn(*, sessions_per_s: float, sessions: int, turns: int, first_tokens: int,
              turn_tokens: int, output_tokens: int, think_s: float, vocab: int,
              seed: int = 0) -> list[TraceRequest]:
    """Chat sessions (the routing benchmark's `multiturn` kind, open-loop): sessions start as
    a Poisson process; each turn's prompt is the previous prompt, that turn's answer
    (`output_tokens` tokens of its own: not what the simulated engine generated, so a cache
    holds a session's prefix up to the previous prompt) and a new user message of
    `turn_tokens`; turn k+1 arrives `think_s` (exponential, mean) after turn k arrives, so
    now and then before turn k has finished. Prompts carry their tokens, so the shared
    prefixes reach the caches and the router."""
    if sessions_per_s <= 0 or think_s <= 0:
        raise ValueError("sessions_per_s and think_s must be > 0")
    rng = random.Random(seed)
    low, high = token_range(vocab)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(low, high) for _ in range(n)]

    out, start = [], 0.0
    for _ in range(sessions):
        start += rng.expovariate(sessions_per_s)
        t, prompt = start, tokens(first_tokens + turn_tokens)
        for turn in range(turns):
            if turn:
                t += rng.expovariate(1 / think_s)
                prompt += tokens(output_tokens) + tokens(turn_tokens)
            out.append(TraceRequest(arrival_s=t, prompt_tokens=len(prompt),
                                    output_tokens=output_tokens, prompt_ids=tuple(prompt)))
    return sorted(out, key=lambda r: r.arrival_s)
