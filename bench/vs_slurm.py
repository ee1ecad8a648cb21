"""Side by side with Slurm: the same workloads against a local single-node Slurm and against gpuherd, in one run.

    sudo .venv/bin/python bench/vs_slurm.py [--quick] [--reps N] [--markdown FILE] [--json FILE]

It holds the benchmarks' CPU lock (``--lock``, /tmp/gpuherd-cpu.lock) while it measures, not while it
installs. Figures and how to read them: docs/benchmarks.md, "Side by side with Slurm".

Run as root: the script installs Debian's ``slurm-wlm`` and ``munge`` when they are missing (saying so),
makes eight character devices ``/dev/herdbench-gpu[0-7]`` (``mknod c 1 3``, the same device as
/dev/null) that ``gres.conf`` declares as ``gpu:8``, so that slurmd sets ``CUDA_VISIBLE_DEVICES`` as on a
GPU node, writes a slurm.conf for one node named after this host in a temporary directory, and starts
munged, slurmctld and slurmd on it. gpuherd runs as ``bench/bench_service.py`` runs it (``herd serve``, 8
declared GPUs, a private tmux socket). A second Unix user is made for the isolation checks. Everything
is stopped and removed at the end, on an error or Ctrl-C too.

Measures, each on both systems in every repetition (the order alternating), reported as the median
over repetitions with the range, and the ratio Slurm / gpuherd (gpuherd / Slurm for throughput; above 1,
gpuherd is better):

- submit, one new process per call: ``sbatch --wrap true`` against ``herd submit -- true``, one after
  another, on a busy cluster (8 long jobs hold every GPU, so each new job waits); p50 per call; and the
  clients' start-up alone (``--version``). The same ``sbatch`` figure is also set against REST with a
  new TCP connection per call and against REST over one keep-alive connection.
- submit throughput: 50 clients at once in a closed loop (50 concurrent ``sbatch`` processes; 50
  keep-alive connections to gpuherd).
- submit-to-start: one job at a time on an idle cluster, its command ``date +%s.%N``; the time it prints
  minus the moment its submission was acknowledged. Slurm's submissions each come after a random
  pause of up to a second, since it starts them at its next pass (once a second): back to back, each
  would land just after a pass and wait the longest.
- turnover: 200 jobs of ``true``, 1 GPU each, queued with scheduling stopped (gpuherd ``--stopped``,
  Slurm's partition DOWN), then started; the time a GPU spends between one job and the next is
  (total - ideal) / 25, where the ideal is 25 rounds of ``true``.
- cancel: a job that ignores SIGTERM (``trap '' TERM``); time from the cancel request until the system
  reports the job over and its GPU free, minus the grace both are given before SIGKILL (gpuherd
  ``grace_s``, Slurm ``KillWait``, both 2 s).
- isolation: a second Unix user asks about root's running job (its command, its output, cancelling it,
  its log file); each system's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ (the server fixtures) is not installed
sys.path.insert(0, str(REPO / "bench"))

GPUS = 8
GRACE_S = 2  # gpuherd grace_s and Slurm KillWait, so that the cancel measure compares what comes after
SLURM_PACKAGES = ("slurm-wlm", "munge")
DEVICE_PREFIX = "/dev/herdbench-gpu"


# -- pure helpers (tested in tests/test_vs_slurm.py) -------------------------------------------------
@dataclass
class Figure:
    """One measure's values per repetition on both systems, in ``unit``; less is better (latencies)
    unless ``higher_is_better`` (throughput)."""
    name: str
    unit: str
    herd: list[float] = field(default_factory=list)
    slurm: list[float] = field(default_factory=list)
    higher_is_better: bool = False
    note: str = ""

    def ratio(self) -> float | None:
        """Slurm / gpuherd for latencies, gpuherd / Slurm for throughput: above 1, gpuherd is better."""
        if not self.herd or not self.slurm:
            return None
        herd, slurm = statistics.median(self.herd), statistics.median(self.slurm)
        better, worse = (herd, slurm) if self.higher_is_better else (slurm, herd)
        return better / worse if worse > 0 else None


def summarize(values: list[float], digits: int = 1) -> str:
    """'median [min-max]', or just the value for a single repetition, or '-' for none."""
    if not values:
        return "-"
    fmt = f"{{:.{digits}f}}"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def figure_digits(values: list[float]) -> int:
    biggest = max((abs(v) for v in values), default=0)
    return 0 if biggest >= 100 else 1 if biggest >= 10 else 2


def markdown_table(figures: list[Figure], slurm_label: str) -> str:
    rows = [f"| measure | gpuherd | {slurm_label} | ratio (gpuherd better when > 1) |", "|---|--:|--:|--:|"]
    for fig in figures:
        digits = figure_digits(fig.herd + fig.slurm)
        ratio = fig.ratio()
        ratio_text = ("-" if ratio is None else f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x" if ratio >= 0.1
                      else f"{ratio:.2g}x")
        name = f"{fig.name}, {fig.unit}" + (f" ({fig.note})" if fig.note else "")
        rows.append(f"| {name} | {summarize(fig.herd, digits)} | {summarize(fig.slurm, digits)} | {ratio_text} |")
    return "\n".join(rows)


def isolation_table(answers: list[tuple[str, str, str]], slurm_label: str) -> str:
    rows = [f"| a second user B, about root's running job | {slurm_label} | gpuherd |", "|---|---|---|"]
    rows += [f"| {question} | {slurm} | {herd} |" for question, slurm, herd in answers]
    return "\n".join(rows)


def parse_job_id(sbatch_output: str) -> int:
    """The id in sbatch's 'Submitted batch job 123' (or --parsable's '123' / '123;cluster')."""
    match = re.search(r"(?:Submitted batch job )?(\d+)(?:;\S+)?\s*$", sbatch_output.strip())
    if match is None:
        raise ValueError(f"sbatch did not say which job it submitted: {sbatch_output!r}")
    return int(match.group(1))


def parse_scontrol_record(text: str) -> dict[str, str]:
    """``scontrol -o show job``'s one line of Key=Value pairs (values without spaces, except the last
    keys' values, which may hold any text up to the next ' Key=')."""
    pairs = re.findall(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9_:/]*=|\s*$)", text.strip())
    return dict(pairs)


RESPONSIVE = "sched_min_interval=0,sched_interval=1,bf_interval=1,batch_sched_delay=0"


def slurm_conf(*, host: str, state_dir: Path, munge_socket: Path, ctld_port: int, slurmd_port: int,
               gpus: int = GPUS, kill_wait_s: int = GRACE_S, scheduler_parameters: str = RESPONSIVE) -> str:
    """The slurm.conf of the single-node cluster: tuned for responsiveness (see docs/benchmarks.md)."""
    return f"""\
ClusterName=herdbench
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={state_dir}/ctld
SlurmdSpoolDir={state_dir}/spool
SlurmctldPidFile={state_dir}/slurmctld.pid
SlurmdPidFile={state_dir}/slurmd.pid
SlurmctldLogFile={state_dir}/slurmctld.log
SlurmdLogFile={state_dir}/slurmd.log
# No cgroups in a container: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Responsive rather than the defaults (a full pass every 60 s, backfill every 30 s): event-driven
# passes are never throttled (sched_min_interval=0), a full pass every second, backfill every second.
{f"SchedulerParameters={scheduler_parameters}" if scheduler_parameters else "# SchedulerParameters: the defaults"}
KillWait={kill_wait_s}
MinJobAge=10
MaxJobCount=100000
ReturnToService=2
GresTypes=gpu
# 16 CPUs declared on a 2-core machine, so that 8 one-GPU jobs (1 CPU each) run at once, as on a GPU node.
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=1000 Gres=gpu:{gpus} State=UNKNOWN
PartitionName=bench Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(gpus: int = GPUS) -> str:
    return f"Name=gpu File={DEVICE_PREFIX}[0-{gpus - 1}]\n"


# -- effects: Slurm --------------------------------------------------------------------------------
def say(text: str) -> None:
    print(text, flush=True)


def ensure_slurm_installed() -> None:
    missing = [p for p in ("sbatch", "slurmctld", "slurmd", "munged", "mungekey") if shutil.which(p) is None
               and not Path("/usr/sbin", p).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}: run as root to install {' '.join(SLURM_PACKAGES)}, "
                         "or install them yourself")
    say(f"installing {' '.join(SLURM_PACKAGES)} with apt-get (missing: {', '.join(missing)}) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *SLURM_PACKAGES], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SlurmCluster:
    """munged, slurmctld and slurmd on a generated configuration in a temporary directory."""

    def __init__(self, scheduler_parameters: str = RESPONSIVE) -> None:
        self.scheduler_parameters = scheduler_parameters
        self.dir = Path(tempfile.mkdtemp(prefix="herdbench-slurm-", dir="/tmp"))
        self.dir.chmod(0o755)  # the second user reaches munge's socket and the config in here
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self.devices: list[Path] = []
        self.version = ""

    def start(self) -> SlurmCluster:
        for sub in ("ctld", "spool", "munge", "out"):
            (self.dir / sub).mkdir()
        (self.dir / "out").chmod(0o1777)
        for i in range(GPUS):
            device = Path(f"{DEVICE_PREFIX}{i}")
            device.unlink(missing_ok=True)
            subprocess.run(["mknod", str(device), "c", "1", "3"], check=True)
            self.devices.append(device)
        munge_key = self.dir / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(munge_key)], check=True, capture_output=True)
        munge_socket = self.dir / "munge" / "munge.socket"
        (self.dir / "munge").chmod(0o755)
        self.conf.write_text(slurm_conf(host=self.host, state_dir=self.dir, munge_socket=munge_socket,
                                        ctld_port=free_port(), slurmd_port=free_port(),
                                        scheduler_parameters=self.scheduler_parameters))
        (self.dir / "gres.conf").write_text(gres_conf())
        self._daemon(["munged", "--foreground", "--force", "--socket", str(munge_socket), "--key-file", str(munge_key),
                      "--pid-file", str(self.dir / "munge" / "munged.pid"), "--log-file", str(self.dir / "munge.log"),
                      "--seed-file", str(self.dir / "munge" / "seed")])
        self._wait(lambda: munge_socket.exists(), "munged's socket")
        self._daemon(["slurmctld", "-D", "-c", "-f", str(self.conf)])
        self._wait(lambda: self.ok(["scontrol", "ping"]) and "UP" in self.run(["scontrol", "ping"]), "slurmctld")
        self._daemon(["slurmd", "-D", "-N", self.host, "-f", str(self.conf)])
        self._wait(lambda: "idle" in self.run(["sinfo", "-h", "-o", "%T"]), "the node to be idle", timeout_s=60)
        self.version = self.run(["sbatch", "--version"]).strip()
        return self

    def _daemon(self, command: list[str]) -> None:
        log = (self.dir / f"{Path(command[0]).name}.out").open("wb")
        self.procs.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def _wait(self, ready, what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                                 for p in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out")))
                raise SystemExit(f"Slurm did not come up (waiting for {what}):\n{logs}")
            time.sleep(0.1)

    def run(self, command: list[str], *, as_user: str | None = None, check: bool = True) -> str:
        return self.result(command, as_user=as_user, check=check).stdout

    def result(self, command: list[str], *, as_user: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
        if as_user is not None:
            command = ["runuser", "-u", as_user, "--", "env", f"SLURM_CONF={self.conf}", *command]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def ok(self, command: list[str]) -> bool:
        return self.result(command).returncode == 0

    def sbatch(self, *args: str) -> int:
        return parse_job_id(self.run(["sbatch", "--parsable", "-D", "/tmp", *args]))

    def job(self, job_id: int) -> dict[str, str]:
        out = self.result(["scontrol", "-o", "show", "job", str(job_id)]).stdout
        return parse_scontrol_record(out) if out.strip() else {}

    def active(self) -> int:
        return len(self.run(["squeue", "-h", "-o", "%i"]).split())

    def cancel_all(self, timeout_s: float = 60) -> None:
        self.result(["scancel", "--partition", "bench"])
        deadline = time.monotonic() + timeout_s
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.1)

    def partition(self, state: str) -> None:
        self.run(["scontrol", "update", "PartitionName=bench", f"State={state}"])

    def hold_all_gpus(self) -> list[int]:
        ids = [self.sbatch("--gres=gpu:1", "-o", "/dev/null", "--wrap", "sleep 3600") for _ in range(GPUS)]
        deadline = time.monotonic() + 30
        while any(self.job(i).get("JobState") != "RUNNING" for i in ids):
            if time.monotonic() > deadline:
                raise SystemExit("Slurm did not start the 8 jobs that hold the GPUs")
            time.sleep(0.1)
        return ids

    def stop(self, keep_logs: Path | None = None) -> None:
        with contextlib.suppress(Exception):
            if self.procs and self.procs[-1].poll() is None:
                self.cancel_all(timeout_s=20)
        for proc in reversed(self.procs):
            stop_process(proc)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for path in [*self.dir.glob("*.log"), *self.dir.glob("*.out"), self.conf, self.dir / "gres.conf"]:
                with contextlib.suppress(OSError):
                    shutil.copy(path, keep_logs)
        for device in self.devices:
            device.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def second_user():
    """A Unix user made for the isolation checks, removed afterwards (with any process of theirs)."""
    name = f"herdb{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/bash", name], check=True,
                   capture_output=True)
    try:
        yield name
    finally:
        uid = pwd.getpwnam(name).pw_uid
        for entry in os.scandir("/proc"):
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and os.stat(entry.path).st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
        subprocess.run(["userdel", name], capture_output=True, check=False)


# -- the measures -----------------------------------------------------------------------------------
def p50_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def slurm_submit_latency(slurm: SlurmCluster, calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        slurm.sbatch("--gres=gpu:1", "-o", "/dev/null", "--wrap", "true")
        times.append(time.perf_counter() - t)
    return p50_ms(times)


def slurm_submit_throughput(slurm: SlurmCluster, clients: int, per_client: int) -> float:
    def client(_: int) -> None:
        for _ in range(per_client):
            slurm.sbatch("--gres=gpu:1", "-o", "/dev/null", "--wrap", "true")

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return clients * per_client / (time.perf_counter() - t)


def process_latency(command: list[str], calls: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return p50_ms(times)


def herd_cli(*args: str) -> list[str]:
    from tests.helpers import herd_command
    return [*herd_command(), *args]


async def herd_new_connection_latency(port: int, calls: int) -> float:
    from bench_service import Connection
    body = {"user": "bench", "command": "true", "gpu_count": 1, "cwd": "/tmp"}
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        conn = Connection(port)
        await conn.open()
        status, _ = await conn.post_json("/queue/submit", body)
        conn.close()
        times.append(time.perf_counter() - t)
        if status != 201:
            raise SystemExit(f"gpuherd answered {status} to a submission")
    return p50_ms(times)


def slurm_submit_to_start(slurm: SlurmCluster, runs: int, seed: int) -> float:
    """Each submission after a random pause of up to a second: Slurm starts these jobs at its next pass
    (once a second), so back to back submissions would all land just after one and wait the longest."""
    pauses = random.Random(seed)
    delays = []
    for _ in range(runs):
        time.sleep(pauses.uniform(0, 1))
        out = slurm.dir / "out" / f"start-{uuid.uuid4().hex[:8]}"
        slurm.sbatch("--gres=gpu:1", "-o", str(out), "--wrap", "date +%s.%N")
        acknowledged = time.time()
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_text().strip()):
            if time.monotonic() > deadline:
                raise SystemExit("a Slurm job did not start within 30 s")
            time.sleep(0.005)
        delays.append(float(out.read_text().split()[0]) - acknowledged)
        while slurm.active():  # one at a time: the next one finds the GPU free
            time.sleep(0.02)
    return p50_ms(delays)


def slurm_turnover(slurm: SlurmCluster, jobs: int, ideal_s: float) -> float:
    slurm.partition("DOWN")
    for _ in range(jobs):
        slurm.sbatch("--gres=gpu:1", "-o", "/dev/null", "--wrap", "true")
    t0 = time.perf_counter()
    slurm.partition("UP")
    while slurm.active():
        time.sleep(0.05)
    total = time.perf_counter() - t0
    return (total - ideal_s) / (jobs / GPUS) * 1000


def unignorable_marker() -> tuple[str, str]:
    """A command that ignores SIGTERM, and the unique text of its sleep's command line."""
    marker = f"6000.{uuid.uuid4().int % 10**6}"
    return f"trap '' TERM; sleep {marker}; true", f"sleep {marker}"


def processes_matching(text: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").strip().decode() == text:
                    pids.append(int(entry.name))
    return pids


def wait_for(predicate, timeout_s: float, what, interval_s: float = 0.01) -> None:
    """``what``: a text, or a function giving one (the state worth seeing when it times out)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(interval_s)


def slurm_cancel(slurm: SlurmCluster) -> float:
    command, cmdline = unignorable_marker()
    job_id = slurm.sbatch("--gres=gpu:1", "-o", "/dev/null", "--wrap", command)
    wait_for(lambda: processes_matching(cmdline), 30, "the Slurm job to run")
    t = time.perf_counter()
    slurm.run(["scancel", str(job_id)])
    # Over: not COMPLETING any more (slurmctld has heard that the processes are gone and freed the GPU).
    wait_for(lambda: slurm.job(job_id).get("JobState", "CANCELLED") == "CANCELLED", 60, "the cancel")
    took = time.perf_counter() - t
    if processes_matching(cmdline):
        raise SystemExit("Slurm reported the job over while its process was still running")
    return took - GRACE_S


def herd_cancel(server) -> float:
    command, cmdline = unignorable_marker()
    job_id = server.http.post("/queue/submit", json={"user": "bench", "command": command, "gpu_count": 1,
                                                     "cwd": "/tmp"}).json()["job_id"]
    wait_for(lambda: processes_matching(cmdline), 30,
             lambda: f"the gpuherd job to run: {server.http.get(f'/jobs/{job_id}').json()}")
    t = time.perf_counter()
    server.http.delete(f"/queue/{job_id}").raise_for_status()
    wait_for(lambda: server.http.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
             and server.http.get("/gpu/status").json()["free_gpus"] == GPUS, 60, "the cancel")
    took = time.perf_counter() - t
    if processes_matching(cmdline):
        raise SystemExit("gpuherd reported the job over while its process was still running")
    return took - GRACE_S


# -- isolation ---------------------------------------------------------------------------------------
def read_as(user: str, path: Path) -> str:
    result = subprocess.run(["runuser", "-u", user, "--", "cat", str(path)], capture_output=True, check=False)
    return "yes" if result.returncode == 0 else f"no: {result.stderr.decode(errors='replace').strip().split(': ')[-1]}"


def bold_yes(answer: str) -> str:
    return "**yes**" if answer == "yes" else answer


def shown(secret: str, text: str) -> str:
    return "yes" if secret in text else "no"


def slurm_isolation(slurm: SlurmCluster, other: str) -> dict[str, str]:
    secret = f"secret-{uuid.uuid4().hex[:8]}"
    out = slurm.dir / "out" / f"{uuid.uuid4().hex[:8]}.out"  # where others may enter, as Debian's 0755 homes
    script = slurm.dir / "out" / f"{uuid.uuid4().hex[:8]}.sh"  # sbatch job.sh, the usual way
    script.write_text(f"#!/bin/bash\necho {secret}\nsleep 600\n")
    job_id = slurm.sbatch("--gres=gpu:1", "-o", str(out), str(script))
    wait_for(lambda: out.exists() and secret in out.read_text(), 30, "the Slurm job's output")
    queue = slurm.result(["squeue", "-h", "-o", "%i %u %o"], as_user=other).stdout
    record = slurm.result(["scontrol", "show", "job", str(job_id)], as_user=other).stdout
    written = slurm.result(["scontrol", "write", "batch_script", str(job_id), "-"], as_user=other).stdout
    command_path = parse_scontrol_record(" ".join(record.split())).get("Command", "")
    script_text = slurm.result(["cat", command_path], as_user=other).stdout if command_path.startswith("/") else ""
    revealing = [how for how, text in (("`squeue -o %o`", queue), ("`scontrol show job`", record),
                                       ("`scontrol write batch_script`", written),
                                       ("`cat` the script `scontrol show job` names", script_text)) if secret in text]
    cancel = slurm.result(["scancel", str(job_id)], as_user=other)
    still = slurm.job(job_id).get("JobState") == "RUNNING"
    answers = {
        "sees the job in the queue": shown(f"{job_id} root", queue) + " (`squeue`)",
        "sees its command": f"**yes** ({', '.join(revealing)})" if revealing else "no (`squeue -o %o`, "
                            "`scontrol show job`, `scontrol write batch_script`, the script's file)",
        "reads its output through the scheduler": "no such command (output is a file)",
        "reads its log file": bold_yes(read_as(other, out)) + " (`cat` the `--output` file, mode as the job's umask made it)",
        "cancels it": ("no" if still else "**yes**")
                      + f" (`scancel`: {cancel.stderr.strip().split(': ')[-1] if cancel.stderr.strip() else 'exit 0'})",
    }
    slurm.cancel_all()
    return answers


def herd_isolation(other: str) -> dict[str, str]:
    from tests.helpers import request_over_socket
    from tests.herd_server import HerdServer
    root = Path(tempfile.mkdtemp(prefix="herdbench-iso-", dir="/tmp"))
    root.chmod(0o755)  # every user reaches the socket inside, as a lab's /srv/gpuherd
    server = HerdServer(root / "herd", "--gpus", str(GPUS), single_user=False).start()
    try:
        sock = server.workdir / "herd.sock"
        secret = f"secret-{uuid.uuid4().hex[:8]}"
        status, job = request_over_socket(sock, "POST", "/queue/submit",
                                          {"command": f"echo {secret}; sleep 600", "gpu_count": 1, "cwd": "/tmp"})
        if status != 201:
            raise SystemExit(f"gpuherd refused the isolation job: {status} {job}")
        job_id = job["job_id"]
        wait_for(lambda: secret in (request_over_socket(sock, "GET", f"/jobs/{job_id}/logs")[1] or {}).get("text", ""),
                 30, "the gpuherd job's output")
        log_file = Path(request_over_socket(sock, "GET", f"/jobs/{job_id}")[1]["log_path"])
        _, queue = request_over_socket(sock, "GET", "/queue", as_user=other)
        seen_status, seen = request_over_socket(sock, "GET", f"/jobs/{job_id}", as_user=other)
        log_status, _ = request_over_socket(sock, "GET", f"/jobs/{job_id}/logs", as_user=other)
        cancel_status, cancel = request_over_socket(sock, "DELETE", f"/queue/{job_id}", as_user=other)
        still = request_over_socket(sock, "GET", f"/jobs/{job_id}")[1]["status"] == "running"
        answers = {
            "sees the job in the queue": shown(f'"id": {job_id}', json.dumps(queue)) + " (`GET /queue`)",
            "sees its command": ("**yes**" if secret in json.dumps(seen) else "no")
                                + f" (`GET /jobs/{{id}}`: {seen_status}, the command blank)",
            "reads its output through the scheduler": ("yes" if log_status == 200 else "no") + f" (`GET /jobs/{{id}}/logs`: {log_status})",
            "reads its log file": f"{bold_yes(read_as(other, log_file))} (`cat` the job's `log_path`)",
            "cancels it": ("no" if still else "**yes**") + f" (`DELETE /queue/{{id}}`: {cancel_status}, "
                          f"\"{(cancel or {}).get('detail', '').split('; ')[-1].replace(other, 'B')}\")",
        }
        request_over_socket(sock, "DELETE", f"/queue/{job_id}")
        return answers
    finally:
        server.close(signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class Sizes:
    latency_calls: int
    cli_calls: int
    throughput_clients: int
    throughput_per_client: int
    start_runs: int
    turnover_jobs: int
    cancels: int


FULL = Sizes(latency_calls=100, cli_calls=20, throughput_clients=50, throughput_per_client=10, start_runs=10,
             turnover_jobs=200, cancels=2)
QUICK = Sizes(latency_calls=20, cli_calls=5, throughput_clients=50, throughput_per_client=4, start_runs=3,
              turnover_jobs=200, cancels=1)


def measure_submit(slurm: SlurmCluster, sizes: Sizes, figs: dict[str, Figure], herd_first: bool) -> None:
    import bench_service

    def on_slurm() -> None:
        holders = slurm.hold_all_gpus()
        say(f"  slurm: 8 jobs hold the GPUs ({holders[0]}-{holders[-1]}); {sizes.latency_calls} x sbatch ...")
        sbatch = slurm_submit_latency(slurm, sizes.latency_calls)
        for key in ("submit_cli", "submit_conn", "submit_keepalive"):
            figs[key].slurm.append(sbatch)
        n = sizes.throughput_clients * sizes.throughput_per_client
        throughput = slurm_submit_throughput(slurm, sizes.throughput_clients, sizes.throughput_per_client)
        figs["throughput"].slurm.append(throughput)
        figs["client_startup"].slurm.append(process_latency(["sbatch", "--version"], sizes.cli_calls, slurm.env))
        say(f"  slurm: sbatch p50 {sbatch:.2f} ms; {sizes.throughput_clients} concurrent sbatch: {throughput:.0f}/s "
            f"({n} jobs)")
        slurm.cancel_all()

    def on_herd() -> None:
        with bench_service.busy_server() as server:
            say(f"  gpuherd: 8 jobs hold the GPUs; {sizes.cli_calls} x herd submit, {sizes.latency_calls} x REST ...")
            cli = process_latency(herd_cli("submit", "--url", server.url, "-g", "1", "-D", "/tmp", "--", "true"),
                                  sizes.cli_calls)
            conn = asyncio.run(herd_new_connection_latency(server.port, sizes.latency_calls))
            keep = asyncio.run(bench_service.submit_load(server.port, 1, sizes.latency_calls)).p50_ms
            many = asyncio.run(bench_service.submit_load(server.port, sizes.throughput_clients,
                                                         sizes.throughput_per_client))
        figs["submit_cli"].herd.append(cli)
        figs["client_startup"].herd.append(process_latency(herd_cli("--version"), sizes.cli_calls))
        figs["submit_conn"].herd.append(conn)
        figs["submit_keepalive"].herd.append(keep)
        figs["throughput"].herd.append(many.throughput)
        say(f"  gpuherd: herd submit p50 {cli:.1f} ms; REST new connection p50 {conn:.2f} ms; keep-alive p50 "
            f"{keep:.2f} ms; {sizes.throughput_clients} clients: {many.throughput:.0f}/s ({many.errors} errors)")

    for step in ((on_herd, on_slurm) if herd_first else (on_slurm, on_herd)):
        step()


def measure_start(slurm: SlurmCluster, sizes: Sizes, figs: dict[str, Figure], herd_first: bool) -> None:
    import bench_service

    def on_slurm() -> None:
        value = slurm_submit_to_start(slurm, sizes.start_runs, seed=len(figs["start"].slurm))
        figs["start"].slurm.append(value)
        say(f"  slurm: submit-to-start p50 {value:.0f} ms ({sizes.start_runs} jobs, one at a time)")

    def on_herd() -> None:
        figs["start"].herd.append(statistics.median(bench_service.bench_submit_to_start(sizes.start_runs)))

    for step in ((on_herd, on_slurm) if herd_first else (on_slurm, on_herd)):
        step()


def measure_turnover(slurm: SlurmCluster, sizes: Sizes, figs: dict[str, Figure], herd_first: bool) -> None:
    import bench_service

    def on_slurm() -> None:
        ideal = sizes.turnover_jobs / GPUS * bench_service.time_of_true()
        value = slurm_turnover(slurm, sizes.turnover_jobs, ideal)
        figs["turnover"].slurm.append(value)
        say(f"  slurm: turnover {value:.0f} ms per job per GPU ({sizes.turnover_jobs} x true on {GPUS} GPUs)")

    def on_herd() -> None:
        figs["turnover"].herd.append(bench_service.bench_turnover(sizes.turnover_jobs, GPUS)["overhead_per_job_ms"])

    for step in ((on_herd, on_slurm) if herd_first else (on_slurm, on_herd)):
        step()


def measure_cancel(slurm: SlurmCluster, sizes: Sizes, figs: dict[str, Figure], herd_first: bool) -> None:
    import bench_service

    def on_slurm() -> None:
        values = [slurm_cancel(slurm) * 1000 for _ in range(sizes.cancels)]
        figs["cancel"].slurm.append(statistics.median(values))
        say(f"  slurm: cancel of a TERM-ignoring job: KillWait + {statistics.median(values):.0f} ms")

    def on_herd() -> None:
        config = Path(tempfile.mkdtemp(prefix="herdbench-")) / "herd.yaml"
        config.write_text(f"grace_s: {GRACE_S}\n")
        try:
            with bench_service.Server("--config", str(config)) as server:
                values = [herd_cancel(server) * 1000 for _ in range(sizes.cancels)]
        finally:
            shutil.rmtree(config.parent, ignore_errors=True)
        figs["cancel"].herd.append(statistics.median(values))
        say(f"  gpuherd: cancel of a TERM-ignoring job: grace + {statistics.median(values):.0f} ms")

    for step in ((on_herd, on_slurm) if herd_first else (on_slurm, on_herd)):
        step()


MEASURES = {"submit": measure_submit, "start": measure_start, "turnover": measure_turnover, "cancel": measure_cancel}


def new_figures(sizes: Sizes) -> dict[str, Figure]:
    return {
        "submit_cli": Figure("submit, one new process per call, p50", "ms", note="`herd submit` vs `sbatch`"),
        "client_startup": Figure("the client's start-up alone, p50", "ms", note="`herd --version` vs `sbatch --version`"),
        "submit_conn": Figure("submit, one new connection per call, p50", "ms", note="REST vs `sbatch`"),
        "submit_keepalive": Figure("submit, one keep-alive client, p50", "ms", note="REST vs `sbatch`"),
        "throughput": Figure(f"submit, {sizes.throughput_clients} clients at once", "jobs/s", higher_is_better=True,
                             note="REST keep-alive vs concurrent `sbatch`"),
        "start": Figure("submit-to-start, p50", "ms"),
        "turnover": Figure(f"turnover, {sizes.turnover_jobs} x `true` on {GPUS} GPUs", "ms a GPU idles between jobs"),
        "cancel": Figure("cancel of a TERM-ignoring job", "ms after the grace", note=f"grace = KillWait = {GRACE_S} s"),
    }


@contextlib.contextmanager
def cpu_lock(path: str | None):
    """The shared benchmark lock (as ``flock PATH``), held while measuring only."""
    if not path:
        yield
        return
    import fcntl
    with open(path, "a") as handle:
        say(f"waiting for the CPU lock {path} ...")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or "unknown"


def report(figs: dict[str, Figure], isolation: list[tuple[str, str, str]], *, slurm_version: str, reps: int,
           command: str) -> str:
    label = slurm_version.replace("slurm-wlm", "Slurm").replace("slurm", "Slurm") or "Slurm"
    header = (f"`{command}` at commit `{git_commit()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on "
              f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {label}; "
              f"{reps} repetition{'s' if reps > 1 else ''}, median [range].")
    lines = [
        header,
        "",
        markdown_table(list(figs.values()), label),
    ]
    if isolation:
        lines += ["", isolation_table(isolation, label)]
    return "\n".join(lines) + "\n"


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, fewer calls (a smoke run)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--parts", default="submit,start,turnover,cancel,isolation", help="which parts, comma-separated")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument("--scheduler-parameters", default=RESPONSIVE,
                        help=f"Slurm's SchedulerParameters ('' for Slurm's defaults; default {RESPONSIVE})")
    parser.add_argument("--keep-logs", type=Path, help="copy Slurm's configuration and logs here at the end")
    parser.add_argument("--lock", default="/tmp/gpuherd-cpu.lock", help="lock file held while measuring ('' for none)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: Slurm's daemons, the GPU devices (mknod) and the second user need it")
    if shutil.which("tmux") is None or shutil.which("curl") is None:
        raise SystemExit("needs tmux (gpuherd's jobs) and curl (the second user's requests)")
    parts = args.parts.split(",")
    unknown = set(parts) - {*MEASURES, "isolation"}
    if unknown:
        raise SystemExit(f"unknown parts {', '.join(sorted(unknown))}; choose from {', '.join([*MEASURES, 'isolation'])}")
    reps = args.reps or (1 if args.quick else 3)
    sizes = QUICK if args.quick else FULL
    ensure_slurm_installed()
    import bench_service
    # SIGTERM ends the run the way Ctrl-C does: through every finally below.
    signal.signal(signal.SIGTERM, interrupted)
    figs = new_figures(sizes)
    isolation: list[tuple[str, str, str]] = []
    # The lock covers the clean-up too: the next run makes the same devices, which this one removes.
    with cpu_lock(args.lock):
        slurm = SlurmCluster(args.scheduler_parameters)
        try:
            say(f"starting munged, slurmctld and slurmd in {slurm.dir} ...")
            slurm.start()
            say(f"{slurm.version} up on node {slurm.host} with gpu:{GPUS}; {reps} repetition(s) of {', '.join(parts)}")
            with bench_service.kept_workdirs():  # removed at the end: see there why
                for rep in range(reps):
                    for name in parts:
                        if name in MEASURES:
                            say(f"[{rep + 1}/{reps}] {name}")
                            MEASURES[name](slurm, sizes, figs, herd_first=(rep % 2 == 0))
            if "isolation" in parts:
                say("isolation: a second Unix user asks about root's running job")
                with second_user() as other:
                    on_slurm = slurm_isolation(slurm, other)
                    on_herd = herd_isolation(other)
                isolation = [(q, on_slurm[q], on_herd[q]) for q in on_slurm]
        finally:
            say("stopping Slurm and removing its files and devices ...")
            slurm.stop(args.keep_logs)
    command = "python bench/vs_slurm.py" + (" --quick" if args.quick else "") + (
        f" --reps {args.reps}" if args.reps else "") + (
        f" --scheduler-parameters '{args.scheduler_parameters}'" if args.scheduler_parameters != RESPONSIVE else "")
    text = report({k: f for k, f in figs.items() if f.herd or f.slurm}, isolation, slurm_version=slurm.version,
                  reps=reps, command=command)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({k: f.__dict__ for k, f in figs.items()}, indent=2))


if __name__ == "__main__":
    main()
