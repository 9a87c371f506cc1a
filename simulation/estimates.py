"""The planner's closed forms: the deployments it considers (`Candidate`), the load a trace
offers (`Workload`), and each candidate's load estimated from the profile — prefill as M/G/1
queues over the trace's own mix of prompts' chunked prefill times, the decode batch as the
fixed point of Little's law (B = λ·output·step(B)), engines that compute prompts beside their
decodes (colocated; PD's short prompts kept local) carrying both — and the pruning that keeps
what may hold the load for simulation."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from pdserve.simulation.profile_file import Profile
from pdserve.simulation.traces import TraceRequest

#: Candidates of each kind simulated beyond the smallest the estimate finds feasible.
KEEP_ABOVE_SMALLEST = 2
#: Estimates within this factor of a target are simulated anyway (closed forms are rough).
MARGIN = 1.5


@dataclass(frozen=True)
class Candidate:
    mode: str  # colocated | pd
    prefill: int  # engines computing prompts (colocated: all of them)
    decode: int  # engines decoding (colocated: the same engines)

    @property
    def engines(self) -> int:
        return self.prefill if self.mode == "colocated" else self.prefill + self.decode

    @property
    def replicas(self) -> dict[str, int]:
        if self.mode == "colocated":
            return {"colocated": self.prefill}
        return {"prefill": self.prefill, "decode": self.decode}

    def label(self) -> str:
        return (f"colocated ×{self.prefill}" if self.mode == "colocated"
                else f"pd {self.prefill}P+{self.decode}D")


@dataclass(frozen=True)
class Estimate:
    """Closed-form load of a candidate: utilisations, queueing TTFT, decode batch and ITL."""

    prefill_util: float
    decode_util: float
    ttft_s: float
    itl_s: float
    batch: float

    def feasible(self, ttft_s: float, itl_s: float, margin: float = MARGIN) -> bool:
        return (self.prefill_util < 1 and self.decode_util < 1
                and self.ttft_s <= ttft_s * margin and self.itl_s <= itl_s * margin)


@dataclass(frozen=True)
class Workload:
    rate: float  # requests/s
    prompt: float  # mean prompt tokens
    output: float  # mean output tokens
    prompts: tuple[int, ...] = ()  # every request's prompt tokens (the service-time mix)

    @classmethod
    def of(cls, trace: list[TraceRequest]) -> Workload:
        span = max(r.arrival_s for r in trace) - min(r.arrival_s for r in trace)
        return cls(rate=(len(trace) - 1) / span if span > 0 else float(len(trace)),
                   prompt=statistics.fmean(r.prompt_tokens for r in trace),
                   output=statistics.fmean(r.output_tokens for r in trace),
                   prompts=tuple(r.prompt_tokens for r in trace))


def candidates(budget: int, modes: tuple[str, ...] = ("colocated", "pd")) -> list[Candidate]:
    out = []
    if "colocated" in modes:
        out += [Candidate("colocated", n, n) for n in range(1, budget + 1)]
    if "pd" in modes:
        out += [Candidate("pd", p, d) for p in range(1, budget) for d in range(1, budget - p + 1)]
    return out


def prefill_seconds(profile: Profile, prompt: int, chunk: int) -> float:
    """A prompt's prefill alone on an engine: its chunks, one step each."""
    step = profile.step_times.model()
    chunk = max(1, chunk)
    seconds, done = 0.0, 0
    while done < prompt:
        n = min(chunk, prompt - done)
        seconds += step.seconds([(n, done, True, done == 0)])
        done += n
    return seconds


def estimate(profile: Profile, workload: Workload, candidate: Candidate, chunk: int,
             max_num_seqs: int, local_below: int = 0) -> Estimate:
    """Closed-form estimate, per engine. Decode: the batch B = λ_d·output·t(B) (Little's law)
    with t(B) = base + B·c, c = per_decode + context·per_decode_context, so
    B = λ_d·output·base / (1 − λ_d·output·c); it holds while λ_d·output·c < 1, B fits
    `max_num_seqs` and the KV cache (`decode_util`: the tightest of the three). Prefill: M/G/1
    (Pollaczek–Khinchine), waiting λ·E[S²] / (2(1 − ρ)) over the trace's own mix of prompts'
    chunked prefill times S. Prompts the engine computes beside its decodes (every prompt
    colocated; PD: those under `local_below` tokens, which the plan keeps on the decode pool)
    ride the decodes' steps: S grows by a decode step per chunk, and the decodes' gaps grow by
    the share of time spent on prompt chunks times a chunk's time."""
    times, overhead = profile.step_times, profile.graph_overhead
    scale = overhead.step_scale
    prompts = workload.prompts or (max(1, round(workload.prompt)),)
    alone = {n: prefill_seconds(profile, n, chunk) * scale + n * overhead.per_prefill_token_s
             + math.ceil(n / chunk) * overhead.per_step_s for n in set(prompts)}
    context = workload.prompt + workload.output / 2
    per_decode = (times.per_decode + context * times.per_decode_context) * scale
    base = times.base * scale + overhead.per_step_s
    demand = workload.rate / candidate.decode * workload.output  # decode tokens/s per engine
    if demand * per_decode >= 1:
        return Estimate(0.0, math.inf, math.inf, math.inf, math.inf)
    batch = demand * base / (1 - demand * per_decode)
    itl = base + batch * per_decode
    kv_tokens = profile.kv_cache.num_blocks * profile.kv_cache.block_size
    decode_util = max(demand * per_decode, batch / max_num_seqs,
                      batch * (workload.prompt + workload.output) / kv_tokens)
    beside = prompts if candidate.mode == "colocated" else [n for n in prompts if n < local_below]
    remote = [] if candidate.mode == "colocated" else [n for n in prompts if n >= local_below]
    ttft_parts = []
    stall = 0.0  # share of a decode engine's time spent on prompt chunks
    if beside:
        ride = {n: alone[n] + math.ceil(n / chunk) * batch * per_decode for n in set(beside)}
        rate = workload.rate * len(beside) / len(prompts) / candidate.decode
        rho, wait = _mg1(rate, [ride[n] for n in beside])
        stall = min(1.0, rate * statistics.fmean(alone[n] for n in beside))
        chunk_s = statistics.fmean(alone[n] / math.ceil(n / chunk) for n in beside)
        ttft_parts.append((len(beside), statistics.fmean(ride[n] for n in beside) + wait))
    else:
        rho, chunk_s = 0.0, 0.0
    prefill_util = rho
    if remote:
        rate = workload.rate * len(remote) / len(prompts) / candidate.prefill
        rho_p, wait = _mg1(rate, [alone[n] for n in remote])
        prefill_util = max(prefill_util, rho_p)
        transfer = 0.0
        if profile.kv_transfer is not None:
            kv = profile.kv_cache.bytes_per_token or 0
            transfer = profile.kv_transfer.alpha_s + statistics.fmean(
                n * kv for n in remote) / profile.kv_transfer.bytes_per_s
        ttft_parts.append((len(remote), statistics.fmean(alone[n] for n in remote) + wait
                           + transfer + itl))  # then one decode step for the first token
    itl += stall * chunk_s
    decode_util = max(decode_util, stall)
    queued = sum(k * t for k, t in ttft_parts) / sum(k for k, _ in ttft_parts)
    ttft = overhead.per_request_s + overhead.per_prompt_token_s * workload.prompt + queued
    return Estimate(prefill_util=prefill_util, decode_util=decode_util, ttft_s=ttft,
                    itl_s=itl, batch=batch)


def _mg1(rate: float, services: list[float]) -> tuple[float, float]:
    """(utilisation, mean wait) of an M/G/1 queue with these service times."""
    mean = statistics.fmean(services)
    rho = rate * mean
    if rho >= 1:
        return rho, math.inf
    return rho, rate * statistics.fmean(s * s for s in services) / (2 * (1 - rho))


def prune(estimates: dict[Candidate, Estimate], ttft_s: float, itl_s: float,
          keep: int = KEEP_ABOVE_SMALLEST) -> list[Candidate]:
    """Feasible candidates (within `MARGIN` of the targets), per kind the smallest engine
    counts only: the smallest feasible and `keep` more."""
    out = []
    for mode in ("colocated", "pd"):
        feasible = sorted((c for c, e in estimates.items()
                           if c.mode == mode and e.feasible(ttft_s, itl_s)),
                          key=lambda c: (c.engines, c.prefill))
        if feasible:
            limit = feasible[0].engines + keep
            out += [c for c in feasible if c.engines <= limit]
    return out


#: Engines on the pool's other side when one pool's capacity is estimated alone: enough that
#: the other side adds only its unloaded latency.
_UNBOUNDED = 10**6


def pool_candidate(role: str) -> Candidate:
    """One engine of a `role` pool, the other PD pool never the bottleneck."""
    if role == "colocated":
        return Candidate("colocated", 1, 1)
    return Candidate("pd", 1, _UNBOUNDED) if role == "prefill" else Candidate("pd", _UNBOUNDED, 1)


#: Prompt lengths a capacity estimate keeps of a mix (evenly spaced order statistics): the
#: estimate's cost grows with the distinct lengths, the mix's shape needs few.
MIX_SAMPLE = 48


def mix_sample(prompts: tuple[int, ...], size: int = MIX_SAMPLE) -> tuple[int, ...]:
    """`size` evenly spaced order statistics of the prompts (each standing for an equal share
    of them); prompts without a token are left out."""
    ordered = sorted(p for p in prompts if p >= 1)
    if len(ordered) <= size:
        return tuple(ordered)
    return tuple(ordered[(2 * i + 1) * len(ordered) // (2 * size)] for i in range(size))


def engine_capacity(profile: Profile, role: str, prompts: tuple[int, ...], output: float,
                    chunk: int, max_num_seqs: int, local_below: int, ttft_s: float,
                    itl_s: float, iterations: int = 16) -> float:
    """Requests per second one engine of a `role` pool carries with the closed-form mean TTFT
    and ITL within the targets, for this mix of prompts (`mix_sample` of it) and mean output
    (bisection: the estimate worsens as the rate grows; 0 when even one request at a time
    misses). A prefill engine sees only the prompts it computes (`local_below` is the decode
    side's business), so its mix is taken as given. The targets are met on average: a floor
    from it is a lower bound, which the SLO policy's percentile signals build on."""
    candidate = pool_candidate(role)
    local = 0 if role == "prefill" else local_below
    prompts = mix_sample(prompts)

    def holds(rate: float) -> bool:
        workload = Workload(rate=rate, prompt=statistics.fmean(prompts), output=output,
                            prompts=prompts)
        return estimate(profile, workload, candidate, chunk, max_num_seqs,
                        local).feasible(ttft_s, itl_s, margin=1.0)

    if not prompts or not holds(1e-9):
        return 0.0  # not even one request at a time meets the targets
    low, high = 0.0, 1.0
    while holds(high):
        low, high = high, high * 2
        if high > 1e9:
            return math.inf
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    return low
