"""Constructed weights of the tiny Llama model (see :mod:`pdserve.tiny_model`).

Weights are *constructed*, not trained (a short CPU training run formed no induction heads in
minutes), for two rules. Induction: if the last 3 tokens occurred before, predict the token
that followed them (copy). Else follow a fixed successor map ``f(token)`` that walks a cycle
of word tokens. Layer 0: heads attending to offsets 1-3 (RoPE phases); layer 1: an induction
head (BOS is its no-match sink) and an MLP lookup table for ``f``.

The construction fixes which ids are special (BOS is the attention sink), so the special
tokens are defined here and the tokenizer is checked against them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdserve.tiny_model import ModelSize

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIAL_TOKENS))

# Construction constants (see construct_weights). Head dim 64 gives 32 RoPE planes; with
# this base, planes 0-5 rotate fast enough to locate offsets and planes 7-31 barely rotate
# over 2048 positions, so they carry position-independent content matching.
HEAD_DIM = 64
ROPE_THETA = 1e20
POS_PLANE_WEIGHTS = (0.32, 0.153, 0.157, 0.15, 0.116, 0.103)  # max-min margin ~0.15
POS_SCORE = 140.0  # offset heads: ~21 nats between the right offset and any other
GRAM = 3  # the induction head matches the last GRAM tokens
MATCH_PLANE0, SINK_PLANE = 7, 31
MATCH_SCORE, SINK_LEVEL = 75.0, 2.72  # exact match scores 3, partial ones <= ~2.45
COPY_WEIGHT, LOGIT_SCALE, GATE_GAIN, GATE_THRESHOLD = 3.0, 16.0, 34.0, 0.65


@contextlib.contextmanager
def _deterministic_torch() -> Iterator[None]:
    """One thread (fixed reduction order, no OpenMP spinning on a busy box) and deterministic
    kernels; the caller's torch settings are restored afterwards."""
    import torch

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _token_codes(n: int, dim: int, seed: int, steps: int) -> tuple[Any, float]:
    """``n`` unit vectors with small pairwise correlation (seeded; repulsion by Adam)."""
    import torch

    with _deterministic_torch():
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, dim, dtype=torch.float64, generator=gen).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.01)
        eye = torch.eye(n, dtype=torch.bool)
        for _ in range(steps):
            u = x / x.norm(dim=1, keepdim=True)
            gram = (u @ u.T).masked_fill(eye, -2.0)
            loss = torch.logsumexp(30.0 * gram, dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        u = (x / x.norm(dim=1, keepdim=True)).detach()
    return u, float((u @ u.T).masked_fill(eye, -2.0).max())


@dataclass(frozen=True)
class _Layout:
    """Residual-stream dims of the construction; ``z*`` are rms-normalized unit entries."""

    match: slice  # m(x_i): match code of the current token
    read: slice  # r(x_i): read code of the current token
    prev: tuple[slice, ...]  # m(x_{i-1}), m(x_{i-2}), ... written by layer 0
    out: slice  # prediction, in read-code space
    const: int  # 1 everywhere: thresholds and position-only queries
    bos: int  # sqrt(2) on BOS (the attention sink)
    special: int  # sqrt(2) on the other special tokens
    z0: float  # layer-0 input, and BOS anywhere (|x|^2 = 3)
    z1: float  # layer-1 input elsewhere (|x|^2 = 3 + GRAM)
    zf: float  # final norm (|x|^2 = 4 + GRAM)


def _layout(spec: ModelSize) -> _Layout:
    """Place the blocks; fail early when a size cannot hold the circuit."""
    km, kr, h = spec.match_dim, spec.read_dim, spec.hidden
    end = km + kr + GRAM * km + kr
    if end + 3 > h or 2 * MATCH_PLANE0 + GRAM * km > 2 * SINK_PLANE or spec.layers < 2:
        raise ValueError(f"model size {spec} too small for the construction")
    if spec.heads < GRAM or spec.heads * HEAD_DIM < kr:
        raise ValueError(f"model size {spec} needs at least {GRAM} heads")
    prev = tuple(slice(km + kr + g * km, km + kr + (g + 1) * km) for g in range(GRAM))
    return _Layout(
        match=slice(0, km),
        read=slice(km, km + kr),
        prev=prev,
        out=slice(end - kr, end),
        const=end,
        bos=end + 1,
        special=end + 2,
        z0=math.sqrt(h / 3),
        z1=math.sqrt(h / (3 + GRAM)),
        zf=math.sqrt(h / (4 + GRAM)),
    )


def construct_weights(
    spec: ModelSize, vocab: int, succ: list[int], seed: int, steps: int
) -> tuple[dict[str, Any], float]:
    """All tensors of the two-rule model, keyed like HF ``LlamaForCausalLM``."""
    import torch

    if spec.intermediate < vocab:
        raise ValueError("intermediate size must cover the vocabulary (one neuron per token)")
    lay, h, n_special = _layout(spec), spec.hidden, len(SPECIAL_TOKENS)
    match = torch.zeros(vocab, spec.match_dim, dtype=torch.float64)
    read = torch.zeros(vocab, spec.read_dim, dtype=torch.float64)
    match[n_special:], _ = _token_codes(vocab - n_special, spec.match_dim, seed, steps)
    read[n_special:], max_corr = _token_codes(vocab - n_special, spec.read_dim, seed + 1, steps)
    emb = torch.zeros(vocab, h, dtype=torch.float64)
    emb[:, lay.match], emb[:, lay.read], emb[:, lay.const] = match, read, 1.0
    emb[BOS_ID, lay.bos] = math.sqrt(2)
    emb[[UNK_ID, EOS_ID, PAD_ID], lay.special] = math.sqrt(2)
    w: dict[str, Any] = {"model.embed_tokens.weight": emb}
    qkv_shape, width = (spec.heads * HEAD_DIM, h), spec.heads * HEAD_DIM
    for layer in range(spec.layers):
        pre = f"model.layers.{layer}."
        attn = [torch.zeros(qkv_shape, dtype=torch.float64) for _ in range(3)]
        attn.append(torch.zeros(h, width, dtype=torch.float64))
        mlp = [torch.zeros(spec.intermediate, h, dtype=torch.float64) for _ in range(2)]
        mlp.append(torch.zeros(h, spec.intermediate, dtype=torch.float64))
        if layer == 0:
            for g in range(GRAM):
                _offset_head(attn, g * HEAD_DIM, g + 1, lay.match, lay.prev[g], lay)
        elif layer == 1:
            _induction_head(attn, lay)
            _successor_mlp(mlp, read, succ, lay)
        for name, t in zip(("q", "k", "v", "o"), attn, strict=True):
            w[f"{pre}self_attn.{name}_proj.weight"] = t
        for name, t in zip(("gate", "up", "down"), mlp, strict=True):
            w[f"{pre}mlp.{name}_proj.weight"] = t
        w[f"{pre}input_layernorm.weight"] = torch.ones(h, dtype=torch.float64)
        w[f"{pre}post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.float64)
    w["model.norm.weight"] = torch.ones(h, dtype=torch.float64)
    head = torch.zeros(vocab, h, dtype=torch.float64)
    head[:, lay.out] = LOGIT_SCALE * read / lay.zf
    head[:n_special, lay.const] = -50.0 / lay.zf  # special tokens are never predicted
    w["lm_head.weight"] = head
    return {name: t.float().contiguous() for name, t in w.items()}, max_corr


def _rope_freq(plane: int) -> float:
    """Angle per position of one RoPE plane (HF/vLLM neox layout: dims p and p + 32)."""
    return ROPE_THETA ** (-2 * plane / HEAD_DIM)


def _offset_head(
    attn: list[Any], base: int, offset: int, src: slice, dst: slice, lay: _Layout
) -> None:
    """Head attending to position ``i - offset`` (query/key from the constant dim only)."""
    q, k, v, o = attn
    half = HEAD_DIM // 2
    for plane, weight in enumerate(POS_PLANE_WEIGHTS):
        amp = math.sqrt(math.sqrt(HEAD_DIM) * POS_SCORE * weight) / lay.z0
        phase = offset * _rope_freq(plane)
        q[base + plane, lay.const] = amp
        k[base + plane, lay.const] = amp * math.cos(phase)
        k[base + half + plane, lay.const] = amp * math.sin(phase)
    for c in range(src.stop - src.start):
        v[base + c, src.start + c] = 1.0 / lay.z0
        o[dst.start + c, base + c] = 1.0


def _induction_head(attn: list[Any], lay: _Layout) -> None:
    """Head 0 of layer 1: match (x_i, x_{i-1}, ...) against (x_{j-1}, x_{j-2}, ...), copy
    r(x_j). Scores barely depend on distance (slow planes); BOS is the no-match sink."""
    q, k, v, o = attn
    slow = list(range(MATCH_PLANE0, SINK_PLANE))
    dims = slow + [HEAD_DIM // 2 + p for p in slow]
    lam = math.sqrt(math.sqrt(HEAD_DIM) * MATCH_SCORE) / lay.z1
    queries = (lay.match, *lay.prev[:-1])
    km = lay.match.stop - lay.match.start
    for g, (q_blk, k_blk) in enumerate(zip(queries, lay.prev, strict=True)):
        for c in range(km):
            q[dims[g * km + c], q_blk.start + c] = lam
            k[dims[g * km + c], k_blk.start + c] = lam
    for c in range(lay.read.stop - lay.read.start):
        v[c, lay.read.start + c] = 1.0 / lay.z1
        o[lay.out.start + c, c] = COPY_WEIGHT
    sink = math.sqrt(math.sqrt(HEAD_DIM) * MATCH_SCORE * SINK_LEVEL)
    q[SINK_PLANE, lay.const] = sink / lay.z1
    k[SINK_PLANE, lay.bos] = sink / (math.sqrt(2) * lay.z0)


def _successor_mlp(mlp: list[Any], read: Any, succ: list[int], lay: _Layout) -> None:
    """One SwiGLU neuron per token: fires on the current token's read code, writes f(token).

    BOS and the other specials have zero codes; their neurons fire on their flag dims.
    """
    gate, up, down = mlp
    fire = GATE_GAIN * (1 - GATE_THRESHOLD)
    silu_fire = fire / (1 + math.exp(-fire))
    for tok in range(len(SPECIAL_TOKENS), read.shape[0]):
        gate[tok, lay.read] = GATE_GAIN * read[tok] / lay.z1
        gate[tok, lay.const] = -GATE_GAIN * GATE_THRESHOLD / lay.z1
        up[tok, lay.const] = 1.0 / lay.z1
        down[lay.out, tok] = read[succ[tok]] / silu_fire
    for tok, flag, z in ((BOS_ID, lay.bos, lay.z0), (UNK_ID, lay.special, lay.z1)):
        gate[tok, flag] = fire / (math.sqrt(2) * z)
        up[tok, lay.const] = 1.0 / z
        down[lay.out, tok] = read[succ[tok]] / silu_fire
