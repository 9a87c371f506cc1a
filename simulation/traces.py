"""Request traces for the simulator: read, write and generate.

A trace is a list of `TraceRequest`s (arrival time, prompt length, output length, optionally a
shared-prefix id and its length). JSONL, one request per line:

    {"arrival_s": 0.52, "prompt_tokens": 1536, "output_tokens": 16}
    {"arrival_s": 0.90, "prompt_tokens": 600, "output_tokens": 64, "prefix_id": "doc-3",
     "prefix_tokens": 512}

Also read: a result file of vLLM's serving benchmark (`vllm bench serve --save-result
--save-detailed`: `start_times`, `input_lens`, `output_lens`), which replays exactly the
requests a measured run sent. Generated: Poisson, bursty (gamma inter-arrivals with a
coefficient of variation above 1, as vLLM's `--burstiness` below 1) and diurnal (a sinusoidal
rate, by thinning) arrivals.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_id: str | None = None
    prefix_tokens: int = 0

    def token_ids(self, index: int, vocab: int) -> list[int]:
        """Deterministic prompt tokens: the shared prefix (the same for every request naming
        `prefix_id`), then tokens of this request alone."""
        low, high = 10, max(11, vocab - 10)
        shared = min(self.prefix_tokens, self.prompt_tokens) if self.prefix_id else 0
        prefix_rng = random.Random(f"prefix:{self.prefix_id}")
        own_rng = random.Random(f"request:{index}")
        return ([prefix_rng.randrange(low, high) for _ in range(shared)]
                + [own_rng.randrange(low, high) for _ in range(self.prompt_tokens - shared)])


def read_jsonl(path: Path) -> list[TraceRequest]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(TraceRequest(**json.loads(line)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: not a trace request ({e})") from e
    return sorted(out, key=lambda r: r.arrival_s)


def write_jsonl(path: Path, trace: Iterable[TraceRequest]) -> None:
    with Path(path).open("w") as f:
        for request in trace:
            row = {k: v for k, v in asdict(request).items() if v not in (None, 0) or
                   k in ("arrival_s", "prompt_tokens", "output_tokens")}
            f.write(json.dumps(row) + "\n")


def read_vllm_result(path: Path, skip_failed: bool = True) -> list[TraceRequest]:
    """The requests a run of vLLM's serving benchmark sent (its detailed result file)."""
    data = json.loads(Path(path).read_text())
    starts, inputs, outputs = (data.get(k) for k in ("start_times", "input_lens", "output_lens"))
    if not starts or not inputs or not outputs:
        raise ValueError(f"{path}: no start_times/input_lens/output_lens (run vLLM's benchmark "
                         "with --save-result --save-detailed)")
    errors = data.get("errors") or [""] * len(starts)
    first = min(starts)
    trace = [TraceRequest(arrival_s=s - first, prompt_tokens=int(i), output_tokens=int(o))
             for s, i, o, e in zip(starts, inputs, outputs, errors, strict=False)
             if not (skip_failed and e) and o > 0]
    return sorted(trace, key=lambda r: r.arrival_s)


def read(path: Path) -> list[TraceRequest]:
    """A trace from JSONL or a vLLM benchmark result (told apart by content)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("{") and '"start_times"' in text[:2_000_000]:
        return read_vllm_result(path)
    return read_jsonl(path)


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
