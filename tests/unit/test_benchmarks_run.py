"""CLI wiring of pdserve.benchmarks.run: flags -> load settings and systems (no servers)."""

from pathlib import Path

import pytest
import yaml

from pdserve.benchmarks import run


def pd_yaml(path: Path) -> Path:
    engine_kwargs = {
        "max_model_len": 1024,
        "enforce_eager": True,
        "kv_transfer_config": {"kv_connector": "NixlConnector"},
    }
    model = {"model_id": "tiny", "model": "/models/tiny", "engine_kwargs": engine_kwargs}
    path.write_text(yaml.safe_dump({"applications": [{"args": {"models": [model]}}]}))
    return path


def test_load_settings_from_flags() -> None:
    args = run.build_parser().parse_args(
        ["--num-prompts", "10", "--max-concurrency", "0", "--request-rate", "2.5"]
    )
    load = run.load_settings(args)
    assert (load.num_prompts, load.max_concurrency, load.request_rate) == (10, None, 2.5)


def test_systems_in_cli_order_with_baseline_from_pd_yaml(tmp_path: Path) -> None:
    config = pd_yaml(tmp_path / "default.yaml")
    args = run.build_parser().parse_args(
        [
            "--systems",
            "vllm,pd",
            "--pd-config",
            str(config),
            "--engine-kwargs",
            '{"max_model_len": 512}',
        ]  # fmt: skip
    )
    vllm, pd = run.build_systems(args)
    assert (vllm.name, pd.name) == ("vllm", "pd")
    assert vllm.engine_kwargs == {"max_model_len": 512, "enforce_eager": True}
    assert vllm.model_name == pd.model_name == "tiny"
    assert "--max-model-len" in vllm.command and "--kv-transfer-config" not in vllm.command


def test_baseline_without_yaml_needs_model_flags(tmp_path: Path) -> None:
    missing = ["--systems", "vllm", "--pd-config", str(tmp_path / "none.yaml")]
    with pytest.raises(SystemExit):
        run.build_systems(run.build_parser().parse_args(missing))
    args = run.build_parser().parse_args([*missing, "--model-dir", "/m", "--model-name", "m"])
    (vllm,) = run.build_systems(args)
    assert (vllm.model_dir, vllm.model_name) == ("/m", "m")


def test_unknown_system_is_rejected(tmp_path: Path) -> None:
    args = run.build_parser().parse_args(["--systems", "sglang"])
    with pytest.raises(SystemExit, match="sglang"):
        run.build_systems(args)
