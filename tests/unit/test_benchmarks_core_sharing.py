"""The core-sharing probe's step classification, on the step records the real engine writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.benchmarks.core_sharing_probe import CONFIG, computes_a_prompt, engine_args
from pdserve.simulation.real_engine import StepRecord

ROOT = Path(__file__).resolve().parents[2]


def test_a_step_with_a_prompt_chunk_is_a_prefill_step() -> None:
    decode = StepRecord(work={"a": (1, 600, False, False), "b": (1, 520, False, False)},
                        preempted=frozenset(), seconds=0.01)
    mixed = StepRecord(work={"a": (1, 601, False, False), "c": (512, 0, True, True)},
                       preempted=frozenset(), seconds=0.4)
    assert not computes_a_prompt(decode)
    assert computes_a_prompt(mixed)


def test_the_probe_runs_the_engine_the_profile_was_measured_with() -> None:
    import json

    kwargs = engine_args(ROOT / CONFIG)
    profile = json.loads((ROOT / "benchmarks/results/sim-calibration-cpu-v2/profile.json")
                         .read_text())
    assert {k: v for k, v in kwargs.items() if k != "model"} == profile["engine_kwargs"]


def _p50s(scale: float) -> dict[str, float]:
    return {key: scale * base for key, base in (
        ("decode_step_p50_ms", 10.0), ("prefill_step_p50_ms", 400.0),
        ("decode_cpu_p50_ms", 9.0), ("prefill_cpu_p50_ms", 390.0))}


def test_a_pair_reports_how_much_slower_sharing_stepped_in_time_and_in_cpu() -> None:
    from pdserve.benchmarks.core_sharing_probe import pair

    alone, shared = _p50s(1.0), {**_p50s(2.0), "decode_cpu_p50_ms": 9.9}
    got = pair(alone, shared)
    assert got["decode_ratio"] == got["prefill_ratio"] == got["prefill_cpu_ratio"] == 2.0
    assert abs(got["decode_cpu_ratio"] - 1.1) < 1e-9
    assert "by_core" not in got


def test_engines_on_several_cores_are_also_reported_per_core() -> None:
    """Each engine reports (core, decode steps, prefill steps), steps as (elapsed, CPU): the
    per-core p50s and ratios keep the cores apart."""
    from pdserve.benchmarks.core_sharing_probe import medians, p50s, pair

    results = [("1", [(0.020, 0.011)] * 3, [(1.0, 0.5)]), ("1", [(0.022, 0.012)] * 3, []),
               ("0", [(0.010, 0.010)] * 5, [(0.45, 0.45)])]
    core1 = p50s([r for r in results if r[0] == "1"])
    assert core1["decode_step_p50_ms"] == pytest.approx(21.0)
    assert core1["decode_cpu_p50_ms"] == pytest.approx(11.5)
    assert core1["prefill_cpu_p50_ms"] == pytest.approx(500.0) and core1["decode_steps"] == 6
    alone = _p50s(1.0)
    shared = {**p50s(results), "by_core": {"0": p50s(results[2:]), "1": core1}}
    got = pair(alone, shared)
    assert got["by_core"]["1"]["decode_cpu_ratio"] == pytest.approx(11.5 / 9.0)
    assert got["by_core"]["0"]["prefill_cpu_ratio"] == pytest.approx(450.0 / 390.0)
    assert medians([got, got])["by_core"]["1"]["decode_cpu_ratio"]["median"] \
        == pytest.approx(11.5 / 9.0)
    empty = p50s([("2", [(0.01, 0.01)], [])])
    assert empty["prefill_cpu_p50_ms"] is None and empty["prefill_steps"] == 0


def test_medians_over_pairs_keep_their_range() -> None:
    from pdserve.benchmarks.core_sharing_probe import medians, pair

    pairs = [pair(_p50s(1.0), _p50s(s)) for s in (2.4, 1.7, 2.0)]
    got = medians(pairs)
    assert got["decode_ratio"] == {"median": 2.0, "low": 1.7, "high": 2.4}
    assert set(got) == {"decode_ratio", "prefill_ratio", "decode_cpu_ratio", "prefill_cpu_ratio"}


def test_the_probe_writes_what_it_measured_into_a_profile(tmp_path: Path) -> None:
    """One core listed measures time-sharing's extra cost, two cores the cost of stepping side
    by side; each run sets its own field and keeps the other's and where it came from."""
    import shutil

    from pdserve.benchmarks.core_sharing_probe import contention_kind, write_contention
    from pdserve.simulation import profile_file

    path = tmp_path / "p.json"
    shutil.copy(ROOT / "benchmarks/results/sim-calibration-cpu-v2/profile-pd.json", path)
    assert contention_kind(["1", "1"]) == "shared_core_scale"
    assert contention_kind(["0", "1"]) == "other_core_scale"
    for placement in (["1"], ["1", "1", "0"], ["0", "1", "2"], ["1", "1", "1"]):
        assert contention_kind(placement) is None  # not what a profile's scales mean

    def result(cores: list[str], decode: float) -> dict:
        ratio = {"median": decode, "low": decode - 0.1, "high": decode + 0.1}
        return {"cores": cores, "pairs": [{}, {}, {}], "decode_cpu_ratio": ratio,
                "prefill_cpu_ratio": {"median": 1.01, "low": 1.0, "high": 1.02}}

    write_contention(path, result(["1", "1"], 1.12), "probe --cores 1")
    write_contention(path, result(["0", "1"], 0.97), "probe --cores 0,1")
    got = profile_file.load(path).core_contention
    assert (got.shared_core_scale, got.prefill_shared_core_scale) == (1.12, 1.01)
    assert got.other_core_scale == 1.0  # a ratio below 1 is drift, not a speed-up
    assert got.prefill_other_core_scale == 1.01
    assert "probe --cores 1" in got.source and "probe --cores 0,1" in got.source
    with pytest.raises(SystemExit, match="two engines"):
        write_contention(path, result(["1", "1", "0"], 1.5), "probe --cores 1,1,0")
    write_contention(path, result(["1", "1"], 1.3), "probe --cores 1 again")
    got = profile_file.load(path).core_contention
    assert got.shared_core_scale == 1.3 and got.other_core_scale == 1.0
    assert "again" in got.source and "probe --cores 1 (" not in got.source  # replaced
    assert "probe --cores 0,1" in got.source and "not measured" not in got.source


def test_a_profile_of_another_engine_is_refused_before_measuring(tmp_path: Path) -> None:
    from pdserve.benchmarks.core_sharing_probe import check_profile

    profile = ROOT / "benchmarks/results/sim-calibration-cpu-v2/profile-pd.json"
    kwargs = engine_args(ROOT / CONFIG)
    with pytest.raises(SystemExit, match="other engine arguments"):
        check_profile(profile, {**kwargs, "max_model_len": 4096})
    with pytest.raises(SystemExit, match="version"):
        (tmp_path / "old.json").write_text('{"version": 0}')
        check_profile(tmp_path / "old.json", kwargs)


def test_a_one_token_prompt_chunk_is_a_decode_s_cost_for_probe_and_simulator_alike() -> None:
    """The last prompt token of a pulled or cached request is computed alone: the probe and the
    simulated host classify it by the one rule (`step_model.is_prefill_step`)."""
    from pdserve.simulation.step_model import is_prefill_step

    pulled = StepRecord(work={"a": (1, 600, False, False), "p": (1, 511, True, True)},
                        preempted=frozenset(), seconds=0.01)
    assert not computes_a_prompt(pulled)
    assert not is_prefill_step(pulled.work.values())
    assert is_prefill_step([(2, 510, True, True)])
