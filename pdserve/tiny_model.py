"""Deterministic, offline tiny Llama models for tests and benchmarks.

A *random* model makes a poor test subject: its logits are nearly tied, so tiny numerical
differences (compiled vs eager, chunked vs whole prefill) flip greedy choices, and a model
that ignores its context lets "disaggregated output == colocated output" pass with garbage
KV. So this builds an HF-format ``LlamaForCausalLM`` whose greedy choices are confident
(top-1/top-2 logprob gap ~11-23 nats) *and* depend on early context, without a model hub:

* a byte-level BPE tokenizer trained locally on English-like text (shared by all sizes);
* weights *constructed*, not trained: see :mod:`pdserve.tiny_weights`.

:func:`resolve_model` maps ``pdserve://<size>`` to a built, cached directory and passes any
other name through. :func:`recall_prompt_text` makes prompts whose continuation depends on an
early token. Near-ties remain where the last 3 tokens occurred twice with different
successors (e.g. multi-turn chats with repeated role markers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdserve.models import URI_PREFIX
from pdserve.tiny_weights import (
    BOS_ID,
    EOS_ID,
    HEAD_DIM,
    PAD_ID,
    ROPE_THETA,
    SPECIAL_TOKENS,
    construct_weights,
)

FORMAT_VERSION = 2
TINY_MODEL_URI = URI_PREFIX + "tiny"
MARKER_FILE = ".pdserve-complete"
TOKENIZER_VOCAB_SIZE = 512
# The generation prompt repeats the first two words of the last message, so the induction
# rule makes the assistant echo that message from its third word on: chat replies are
# confident *and* depend on the whole prompt, not just on the closing role marker.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}"
    "{{ messages[-1]['content'].split(' ')[:2] | join(' ') }}{% endif %}"
)

# Common English words: the tokenizer corpus and the prompt helpers draw from this list.
_WORDS_TEXT = """
    the of and to in is it you that he was for on are with as his they be at one have this
    from or had by hot word but what some we can out other were all there when up use your
    how said an each she which do their time if will way about many then them write would
    like so these her long make thing see him two has look more day could go come did number
    sound no most people my over know water than call first who may down side been now find
    any new work part take get place made live where after back little only round man year
    came show every good me give our under name very through just form sentence great think
    say help low line differ turn cause much mean before move right boy old too same tell
    does set three want air well also play small end put home read hand port large spell add
    even land here must big high such follow act why ask men change went light kind off need
    house picture try us again animal point mother world near build self earth father head
    stand own page should country found answer school grow study still learn plant cover food
    sun four between state keep eye never last let thought city tree cross farm hard start
    might story saw far sea draw left late run while press close night real life few north
    open seem together next white children begin got walk example ease paper group always
    music those both mark often letter until mile river car feet care second book carry took
    science eat room friend began idea fish mountain stop once base hear horse cut sure watch
    color face wood main enough plain girl usual young ready above ever red list though feel
    talk bird soon body dog family direct pose leave song measure door product black short
    """
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS_TEXT.split()))


@dataclass(frozen=True)
class ModelSize:
    """Shape of one ``pdserve://<size>`` model; dims beyond the circuit stay zero."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int = 2048
    match_dim: int = 16  # per-token code the induction head matches on
    read_dim: int = 28  # per-token code the MLP detects and the output layer reads
    code_steps: int = 400


# One row per size; a bigger benchmark model is one more row with the same tokenizer.
SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden=128, layers=2, heads=4, intermediate=512),
    # Smallest size whose 1k-token prefill costs >= 10x the graph's per-request overhead, so
    # benchmarks measure the model rather than pdserve. Measured on the 2-core AVX2 box, one
    # engine with its OpenMP threads bound to one core (float32, eager): the colocated graph
    # adds ~15-28 ms per short request over bare vLLM (TTFT medians, max_tokens=1); this size
    # (10.2 M params) prefills 1024 tokens in ~350 ms (~2.9k tok/s, >= 12x) and decodes
    # ~110 tok/s (~9 ms/token). Smaller candidates fell short (hidden 384 x 4 layers: 288 ms;
    # 256 x 8: 260 ms); the 20-50 M guess is far over it (512 x 8, 34 M: 930 ms).
    "bench": ModelSize(hidden=320, layers=6, heads=5, intermediate=1280),
}


def _log(msg: str) -> None:
    """Progress goes to stderr so CLI stdout carries only the model directory."""
    print(f"[pdserve.tiny_model] {msg}", file=sys.stderr, flush=True)


def pdserve_home() -> Path:
    """Root of pdserve's caches: ``$PDSERVE_HOME`` or ``~/.cache/pdserve``."""
    return Path(os.environ.get("PDSERVE_HOME") or Path.home() / ".cache" / "pdserve")


def default_model_dir(size: str, seed: int, steps: int | None = None) -> Path:
    """Cache directory of one build; a non-default step count gets its own directory."""
    name = f"{size}-seed{seed}-v{FORMAT_VERSION}"
    if steps is not None and steps != SIZES[size].code_steps:
        name += f"-steps{steps}"
    return pdserve_home() / "models" / name


def is_complete(path: Path) -> bool:
    """A build is usable only once its marker (written last) exists."""
    return (path / MARKER_FILE).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so concurrent processes build a directory only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_tiny_model(
    size: str = "tiny", seed: int = 0, out_dir: Path | None = None, steps: int | None = None
) -> Path:
    """Build (or reuse) a model directory; same seed and machine give byte-identical files.

    ``steps`` is the number of token-code optimization steps (fewer: faster, less margin).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(sorted(SIZES))}")
    final = Path(out_dir) if out_dir is not None else default_model_dir(size, seed, steps)
    final = final.expanduser().absolute()
    if is_complete(final):
        return final
    with _file_lock(final.parent / f".{final.name}.lock"):
        if is_complete(final):
            return final
        if final.exists():
            if any(final.iterdir()):
                raise FileExistsError(f"{final} exists, is not empty and is not a pdserve model")
            final.rmdir()
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _build_into(tmp, size, seed, SIZES[size].code_steps if steps is None else steps)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_into(out: Path, size: str, seed: int, steps: int) -> None:
    """Write tokenizer, weights, configs and finally the completion marker."""
    from safetensors.torch import save_file

    start = time.monotonic()
    spec = SIZES[size]
    tokenizer = train_tokenizer()
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    _write_tokenizer_files(tokenizer, out, spec)
    (out / "config.json").write_text(_dumps(model_config(spec, vocab_size)))
    (out / "generation_config.json").write_text(
        _dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID})
    )
    _log(f"tokenizer ready ({vocab_size} tokens); constructing {size} seed={seed}")
    normal, words = _token_classes(tokenizer)
    succ = _successor_map(random.Random(seed), normal, words)
    tensors, max_corr = construct_weights(spec, vocab_size, succ, seed, steps)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    marker = {"format_version": FORMAT_VERSION, "size": size, "seed": seed, "steps": steps}
    marker["code_max_corr"] = round(max_corr, 4)
    (out / MARKER_FILE).write_text(_dumps(marker))
    elapsed = time.monotonic() - start
    _log(f"built {size} seed={seed} in {elapsed:.1f}s (max code corr {max_corr:.3f})")


def _dumps(obj: Any) -> str:
    """Stable JSON so identical builds give identical bytes."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- tokenizer


def _corpus_lines() -> list[str]:
    """Deterministic English-like text (plus chat markers) for training the tokenizer."""
    rng = random.Random(1234)
    lines = []
    for i in range(4000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.2:
            words[0] = words[0].capitalize()
        sentence = " ".join(words) + rng.choice([".", ".", ",", "?", "!", ":", ";"])
        if i % 7 == 0:
            sentence = f"<|{rng.choice(['user', 'assistant', 'system'])}|>{sentence}"
        if i % 11 == 0:
            sentence += f" {rng.randint(0, 9999)}"
        lines.append(sentence)
    return lines


def train_tokenizer() -> Any:
    """Train the shared byte-level BPE tokenizer (a ``tokenizers.Tokenizer``; deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, not {i}")
    return tok


def _write_tokenizer_files(tok: Any, out: Path, spec: ModelSize) -> None:
    """tokenizer.json plus a tokenizer_config.json that transformers and vLLM both accept."""
    tok.save(str(out / "tokenizer.json"))
    unk, bos, eos, pad = SPECIAL_TOKENS
    special_map = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.max_positions,
        "chat_template": CHAT_TEMPLATE,
        **special_map,
    }
    (out / "tokenizer_config.json").write_text(_dumps(config))
    (out / "special_tokens_map.json").write_text(_dumps(special_map))


def _token_classes(tok: Any) -> tuple[list[int], list[int]]:
    """Non-special ids, and the ids that decode to a whole ' word' (targets of ``f``)."""
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    normal = list(range(len(SPECIAL_TOKENS), vocab_size))
    word_re = re.compile(r"^ [a-z]{2,}$")
    return normal, [i for i in normal if word_re.match(tok.decode([i]))]


def _successor_map(rng: random.Random, normal: list[int], words: list[int]) -> list[int]:
    """The context-free rule ``f``: one long cycle through word tokens; others jump in.

    Special tokens get a successor too, so a prompt of just BOS has a clear next token.
    """
    order = list(words)
    rng.shuffle(order)
    succ = [rng.choice(words) for _ in range(max(normal) + 1)]
    for i, tok in enumerate(order):
        succ[tok] = order[(i + 1) % len(order)]
    return succ


# --------------------------------------------------------------------------- config


def model_config(spec: ModelSize, vocab_size: int) -> dict[str, Any]:
    """HF LlamaForCausalLM config written to config.json (float32, untied embeddings)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_positions,
        "num_attention_heads": spec.heads,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": spec.heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": ROPE_THETA,
        "rope_parameters": {"rope_theta": ROPE_THETA, "rope_type": "default"},
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "dtype": "float32",
        "vocab_size": vocab_size,
    }


# --------------------------------------------------------------------------- prompts


def random_words(rng: random.Random, n_words: int) -> list[str]:
    """``n_words`` distinct words from :data:`WORDS` (distinct: no ambiguous 2-gram repeats)."""
    if n_words > len(WORDS):
        raise ValueError(f"at most {len(WORDS)} distinct words")
    return rng.sample(WORDS, n_words)


def recall_prompt_from_words(words: list[str], n_repeat: int = 20) -> str:
    """Span ``words`` followed by its first ``n_repeat`` words again.

    The model continues by copying ``words[n_repeat:]``, so its greedy output depends on
    tokens hundreds of positions back: changing ``words[n_repeat]`` changes the continuation
    (the negative control for KV-transfer tests). Use distinct words (:func:`random_words`):
    a 2-gram that occurs twice with different successors makes the copy ambiguous.
    """
    if not 0 < n_repeat < len(words):
        raise ValueError("n_repeat must be between 1 and len(words) - 1")
    return " ".join(words) + " " + " ".join(words[:n_repeat])


def recall_prompt_text(rng: random.Random, n_words: int, n_repeat: int = 20) -> str:
    """A prompt the model is confident on: ``n_words`` distinct words, then a recall cue.

    About 2.3 tokens per word; the greedy continuation copies the words after the cue.
    """
    return recall_prompt_from_words(random_words(rng, n_words), n_repeat)


def file_digests(path: Path) -> dict[str, str]:
    """sha256 of every file in a model directory (for reproducibility checks)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
