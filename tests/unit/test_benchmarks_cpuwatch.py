"""Other-process CPU accounting of pdserve.benchmarks.cpuwatch."""

import os

from pdserve.benchmarks import cpuwatch


def test_foreign_cpu_seconds_counts_deltas_and_new_processes() -> None:
    before = {(1, 10.0): 5.0, (2, 11.0): 1.0}
    after = {(1, 10.0): 7.5, (3, 12.0): 0.5}  # pid 2 exited, pid 3 is new
    assert cpuwatch.foreign_cpu_seconds(before, after) == 3.0


def test_snapshot_excludes_this_process() -> None:
    snap = cpuwatch.foreign_cpu_snapshot()
    assert os.getpid() not in {pid for pid, _ in snap}
    assert all(cpu >= 0 for cpu in snap.values())


def test_step_watch_reports_wall_and_other_cpu() -> None:
    watch = cpuwatch.StepWatch()
    watch.begin()
    out = watch.end()
    assert set(out) == {"step_wall_s", "other_cpu_s"} and out["step_wall_s"] >= 0


def test_proc_stat_reads_a_name_with_spaces_and_parentheses(tmp_path) -> None:
    from pdserve.benchmarks.cpuwatch import proc_stat

    fields = " ".join(str(i) for i in range(3, 40))
    path = tmp_path / "stat"
    path.write_text(f"4242 (VLLM::Worker (x) y) {fields}\n")
    name, rest = proc_stat(str(path))
    assert name == "VLLM::Worker (x) y"
    assert rest[0] == "3" and rest[16] == "19"  # field 19 of the file: nice
