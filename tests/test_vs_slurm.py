"""The pure parts of bench/vs_slurm.py (the side-by-side benchmark itself needs root and Slurm, and is not
part of the test suite): reading Slurm's answers, summaries, ratios, the generated configuration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "vs_slurm.py"


@pytest.fixture(scope="module")
def vs():
    spec = importlib.util.spec_from_file_location("vs_slurm", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_slurm"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("vs_slurm", None)


def test_sbatch_output_gives_the_job_id(vs):
    assert vs.parse_job_id("Submitted batch job 4711\n") == 4711
    assert vs.parse_job_id("4712\n") == 4712
    assert vs.parse_job_id("4713;herdbench\n") == 4713
    with pytest.raises(ValueError, match="did not say which job"):
        vs.parse_job_id("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification")


def test_scontrol_record_is_read_key_by_key(vs):
    line = ("JobId=7 JobName=wrap UserId=root(0) JobState=COMPLETING Reason=None Dependency=(null) "
            "Command=(null) WorkDir=/tmp StdOut=/tmp/out dir/7.out TresPerNode=gres:gpu:1")
    record = vs.parse_scontrol_record(line)
    assert record["JobId"] == "7" and record["JobState"] == "COMPLETING" and record["UserId"] == "root(0)"
    assert record["StdOut"] == "/tmp/out dir/7.out"  # a value with a space runs to the next key
    assert record["TresPerNode"] == "gres:gpu:1"
    assert vs.parse_scontrol_record("") == {}


def test_summary_is_median_and_range(vs):
    assert vs.summarize([3.0, 1.0, 2.0]) == "2.0 [1.0-3.0]"
    assert vs.summarize([412.4], digits=0) == "412"
    assert vs.summarize([]) == "-"
    assert vs.figure_digits([0.9, 1.2]) == 2 and vs.figure_digits([12.0]) == 1 and vs.figure_digits([150.0]) == 0


def test_ratio_says_how_many_times_better_gpuherd_is(vs):
    latency = vs.Figure("submit", "ms", herd=[2.0, 3.0, 4.0], slurm=[9.0, 10.0, 11.0])
    assert latency.ratio() == pytest.approx(10 / 3)
    throughput = vs.Figure("throughput", "jobs/s", herd=[100.0], slurm=[400.0], higher_is_better=True)
    assert throughput.ratio() == pytest.approx(0.25)  # Slurm better: below 1
    assert vs.Figure("x", "ms", herd=[1.0]).ratio() is None
    assert vs.Figure("x", "ms", herd=[0.0], slurm=[1.0]).ratio() is None  # no ratio to a zero


def test_markdown_tables(vs):
    figs = [vs.Figure("turnover", "ms", herd=[40.0, 50.0, 45.0], slurm=[800.0, 900.0, 850.0], note="8 GPUs"),
            vs.Figure("cancel", "ms", herd=[30.0])]
    table = vs.markdown_table(figs, "Slurm 22.05.8").splitlines()
    assert table[0] == "| measure | gpuherd | Slurm 22.05.8 | ratio (gpuherd better when > 1) |"
    assert table[2] == "| turnover, ms (8 GPUs) | 45 [40-50] | 850 [800-900] | 18.9x |"
    assert table[3] == "| cancel, ms | 30.0 | - | - |"
    isolation = vs.isolation_table([("cancels it", "no", "no (403)")], "Slurm").splitlines()
    assert isolation[0] == "| a second user B, about root's running job | Slurm | gpuherd |"
    assert isolation[2] == "| cancels it | no | no (403) |"


def test_slurm_conf_declares_one_gpu_node_without_cgroups(vs, tmp_path):
    conf = vs.slurm_conf(host="node1", state_dir=tmp_path, munge_socket=tmp_path / "m.sock", ctld_port=7001,
                         slurmd_port=7002)
    lines = conf.splitlines()
    for expected in ("GresTypes=gpu", "SelectType=select/cons_tres", "SchedulerType=sched/backfill",
                     "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", f"KillWait={vs.GRACE_S}",
                     "AccountingStorageType=accounting_storage/none", f"SchedulerParameters={vs.RESPONSIVE}",
                     f"AuthInfo=socket={tmp_path / 'm.sock'}", "SlurmctldPort=7001"):
        assert expected in lines, expected
    node = next(line for line in lines if line.startswith("NodeName="))
    assert "NodeName=node1 " in node and "Gres=gpu:8" in node
    assert "PartitionName=bench Nodes=node1" in conf
    defaults = vs.slurm_conf(host="n", state_dir=tmp_path, munge_socket=tmp_path, ctld_port=1, slurmd_port=2,
                             scheduler_parameters="")
    assert not any(line.startswith("SchedulerParameters") for line in defaults.splitlines())
    assert vs.gres_conf(8) == "Name=gpu File=/dev/herdbench-gpu[0-7]\n"
