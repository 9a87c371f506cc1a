"""The designed sweep `pdserve profile` drives a real engine through: which batches to make
the engine compute so the step-time model sees the range a server meets.

- `prefill`: one prompt of L tokens (chunked by `max_num_batched_tokens`): chunks at growing
  context, the quadratic part of attention.
- `decode`: B prompts of C tokens, then their decodes: batch size × context.
- `mixed`: B decodes at context C, joined by a prompt of L tokens after a few steps: the
  chunks that share steps with decodes (what colocated serving does all day).

Points are pure data, so a run can be resumed point by point.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    kind: str  # prefill | decode | mixed
    batch: int  # decoding requests (prefill: 1)
    context: int  # their prompt length (prefill: the prompt length)
    output: int  # tokens each decodes
    joiner: int = 0  # mixed: prompt length of the request that joins
    repeat: int = 0

    @property
    def key(self) -> str:
        return (f"{self.kind}-b{self.batch}-c{self.context}-o{self.output}-j{self.joiner}"
                f"-r{self.repeat}")


def _grid(limit: int, values: list[int]) -> list[int]:
    return sorted({v for v in values if 1 <= v <= limit})


def design(max_model_len: int, max_num_seqs: int, kv_tokens: int, repeats: int = 2,
           quick: bool = False) -> list[Point]:
    """Sweep points that fit this engine (`kv_tokens`: KV capacity in tokens)."""
    output = 8 if quick else 16
    longest = max_model_len - output - 1
    prompts = _grid(longest, [16, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
                              longest])
    batches = _grid(max_num_seqs, [1, 2, 4, 8, 16, 32, 48, 64])
    contexts = _grid(longest, [32, 128, 256, 512, 1024, 1536, 2048])
    if quick:
        prompts, batches, contexts = prompts[::2], batches[::2], contexts[::2]
    points = [Point("prefill", 1, length, 2, repeat=r)
              for r in range(repeats) for length in prompts]
    points += [Point("decode", b, c, output, repeat=r)
               for r in range(repeats) for b in batches for c in contexts
               if b * (c + output) <= kv_tokens * 0.9]
    joiners = _grid(longest - output, [256, 1024, longest - output])  # decodes 2 × output
    points += [Point("mixed", b, c, output * 2, joiner=j, repeat=r)
               for r in range(max(1, repeats // 2)) for b in batches[1::2] for c in contexts[::2]
               for j in joiners
               if c + 2 * output < max_model_len
               and b * (c + 2 * output) + j + 2 * output <= kv_tokens * 0.9]
    return points
