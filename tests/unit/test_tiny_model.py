"""Offline tiny model: reproducible bytes, a consistent tokenizer, confident recall."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pdserve import tiny_model
from pdserve.models import resolve_model
from pdserve.tiny_model import (
    SPECIAL_TOKENS,
    TINY_MODEL_URI,
    build_tiny_model,
    file_digests,
    random_words,
    recall_prompt_from_words,
)

FAST_STEPS = 20  # token-code optimization steps: enough for a working model, ~1 s


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fast build shared by the read-only tests of this module."""
    return build_tiny_model(out_dir=tmp_path_factory.mktemp("m") / "a", steps=FAST_STEPS)


def test_same_seed_gives_identical_bytes(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(out_dir=tmp_path / "b", steps=FAST_STEPS)
    digests = file_digests(model_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(digests)
    assert digests == file_digests(again)


def test_other_seed_gives_other_weights(model_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_model(seed=1, out_dir=tmp_path / "c", steps=FAST_STEPS)
    assert file_digests(other)["model.safetensors"] != file_digests(model_dir)["model.safetensors"]
    assert file_digests(other)["tokenizer.json"] == file_digests(model_dir)["tokenizer.json"]


def test_complete_dir_is_reused(model_dir: Path) -> None:
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(out_dir=model_dir, steps=FAST_STEPS) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_refuses_foreign_nonempty_dir(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(out_dir=tmp_path / "x", steps=FAST_STEPS)


def test_concurrent_builds_share_one_directory(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from pdserve.tiny_model import build_tiny_model;"
        f"print(build_tiny_model(out_dir=Path(sys.argv[1]), steps={FAST_STEPS}))"
    )
    out = tmp_path / "shared"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert results == [str(out), str(out)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "shared"]


def test_tokenizer_matches_model_vocab(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    config = json.loads((model_dir / "config.json").read_text())
    assert len(tok.get_vocab()) == config["vocab_size"]
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32"
    for i in range(len(SPECIAL_TOKENS), config["vocab_size"]):
        assert tok.decode([i]) != "", f"id {i} decodes to empty text"
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))


def test_chat_template_renders(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "tell me about the river"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The generation prompt repeats two words so that the reply echoes the message.
    assert text == "<s><|user|>tell me about the river\n<|assistant|>tell me"
    assert tok(text, add_special_tokens=False)["input_ids"][0] == tok.bos_token_id
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )


def test_recall_is_confident_and_context_dependent(model_dir: Path) -> None:
    """Greedy continuation copies the span; changing one early word changes it."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def next_tokens(text: str, n: int = 6) -> tuple[str, float]:
        ids = tok(text)["input_ids"]
        min_gap = float("inf")
        with torch.no_grad():
            for _ in range(n):
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                top = logits.log_softmax(-1).topk(2)
                min_gap = min(min_gap, float(top.values[0] - top.values[1]))
                ids.append(int(top.indices[0]))
        return tok.decode(ids[-n:]), min_gap

    words = random_words(random.Random(7), 120)
    text, gap = next_tokens(recall_prompt_from_words(words, 20))
    assert text.split()[:2] == words[20:22]
    assert gap > 5.0
    changed = list(words)
    changed[20] = next(w for w in tiny_model.WORDS if w not in words)
    changed_text, _ = next_tokens(recall_prompt_from_words(changed, 20))
    assert changed_text != text
    plain_text, plain_gap = next_tokens("the water was hot")
    assert plain_text.strip() and plain_gap > 5.0


def test_chat_reply_echoes_the_message(model_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "tell me about the river and the sea"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, len(ids) :]).startswith(" about the river and")


def test_resolve_model_passes_through_other_names() -> None:
    assert resolve_model("some/hf-id") == "some/hf-id"
    assert resolve_model("/models/llama") == "/models/llama"


def test_resolve_model_rejects_unknown_size() -> None:
    with pytest.raises(ValueError, match=r"known: all-minilm-l6-v2, .*tiny"):
        resolve_model("pdserve://nope")


def test_resolve_model_finds_the_packaged_embedding_model() -> None:
    path = Path(resolve_model("pdserve://all-minilm-l6-v2"))
    assert (path / "config.json").is_file()


def test_resolve_model_builds_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDSERVE_HOME", str(tmp_path))
    path = resolve_model(TINY_MODEL_URI)
    assert Path(path) == tmp_path / "models" / f"tiny-seed0-v{tiny_model.FORMAT_VERSION}"
    assert (Path(path) / "model.safetensors").is_file()
    assert resolve_model(TINY_MODEL_URI) == path


def test_cli_prints_only_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pdserve.cli import main

    out = tmp_path / "cli"
    build_tiny_model(out_dir=out, steps=FAST_STEPS)  # prebuilt: the CLI only reuses it
    assert main(["tiny-model", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}\n"
