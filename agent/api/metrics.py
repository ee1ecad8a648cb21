"""``GET /metrics``: the cluster in Prometheus' text format, through prometheus-client.

Every family is read at the scrape from the door (``tools.door.observe.figures``), so nothing here is
a process-wide registry: each app (and each test) has its own figures. Names follow Prometheus'
conventions: ``gpuherd_`` first, base units (seconds, bytes, ratios 0-1), ``_total`` for counters.
A GPU's live readings are left out where nothing measures them (a declared inventory).
"""

from __future__ import annotations

from typing import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from agent.api.deps import ToolsDep
from tools.door import observe

router = APIRouter(tags=["metrics"])

MIB = 1024 * 1024


def families(figures: observe.Figures, *, stream_clients: int) -> Iterator[Metric]:
    gpus = GaugeMetricFamily("gpuherd_gpus", "GPUs by state (free, allocated, drained, unhealthy) on each node.",
                             labels=["node", "state"])
    for node, states in figures.gpus_by_state.items():
        for state, count in states.items():
            gpus.add_metric([node, state], count)
    yield gpus
    yield GaugeMetricFamily("gpuherd_inventory_detected", "1 if the GPUs were detected through NVML, 0 if declared.",
                            value=int(figures.detected))

    labels = ["node", "gpu", "uuid"]
    info = GaugeMetricFamily("gpuherd_gpu_info", "Each GPU, with its model and its state, always 1.",
                             labels=[*labels, "model", "state"])
    util = GaugeMetricFamily("gpuherd_gpu_utilization_ratio", "GPU utilization (0-1), where measured.", labels=labels)
    used = GaugeMetricFamily("gpuherd_gpu_memory_used_bytes", "GPU memory in use, where measured.", labels=labels)
    total = GaugeMetricFamily("gpuherd_gpu_memory_total_bytes", "GPU memory, where known.", labels=labels)
    temp = GaugeMetricFamily("gpuherd_gpu_temperature_celsius", "GPU temperature, where measured.", labels=labels)
    power = GaugeMetricFamily("gpuherd_gpu_power_watts", "GPU power draw, where measured.", labels=labels)
    ecc = GaugeMetricFamily("gpuherd_gpu_ecc_uncorrected_errors", "Uncorrectable ECC errors since the driver "
                            "loaded (volatile), where the board has ECC.", labels=labels)
    procs = GaugeMetricFamily("gpuherd_gpu_processes", "Compute processes on each GPU: of gpuherd jobs (owner=job) "
                              "or outside gpuherd (owner=foreign).", labels=[*labels, "owner"])
    for g in figures.gpus:
        key = [g.node, str(g.index), g.uuid]
        info.add_metric([*key, g.model or "", g.state], 1)
        if g.utilization_pct is not None:
            util.add_metric(key, g.utilization_pct / 100)
        if g.memory_used_mib is not None:
            used.add_metric(key, g.memory_used_mib * MIB)
        if g.memory_total_mib is not None:
            total.add_metric(key, g.memory_total_mib * MIB)
        if g.temperature_c is not None:
            temp.add_metric(key, g.temperature_c)
        if g.power_w is not None:
            power.add_metric(key, g.power_w)
        if g.ecc_uncorrected is not None:
            ecc.add_metric(key, g.ecc_uncorrected)
        if g.utilization_pct is not None or g.memory_used_mib is not None:  # measured: its processes are known
            procs.add_metric([*key, "job"], g.job_processes)
            procs.add_metric([*key, "foreign"], g.foreign_processes)
    yield from (info, util, used, total, temp, power, ecc, procs)

    jobs = GaugeMetricFamily("gpuherd_jobs", "Jobs by status (finished ones included).", labels=["status"])
    for status, count in sorted(figures.jobs_by_status.items()):
        jobs.add_metric([status], count)
    yield jobs
    yield GaugeMetricFamily("gpuherd_queue_length", "Jobs waiting in the queue.", value=figures.queue_length)
    yield GaugeMetricFamily("gpuherd_queue_gpus", "GPUs the waiting jobs ask for.", value=figures.queued_gpus)
    yield GaugeMetricFamily("gpuherd_queue_oldest_wait_seconds", "How long the longest-waiting job has waited.",
                            value=figures.oldest_wait_s or 0.0)
    in_use = GaugeMetricFamily("gpuherd_user_gpus_in_use", "GPUs each user's jobs hold now.", labels=["user"])
    for user, count in figures.gpus_in_use_by_user.items():
        in_use.add_metric([user], count)
    yield in_use

    wait = HistogramMetricFamily("gpuherd_job_wait_seconds", "Time from queueing to start of each job started "
                                 "since the server started.")
    wait.add_metric([], _buckets(figures.wait), figures.wait.sum)
    yield wait
    passes = HistogramMetricFamily("gpuherd_scheduler_pass_seconds", "Duration of the scheduler's passes by phase "
                                   "(collect, enforce, decide, validate, apply, explain; total: the whole pass).",
                                   labels=["phase"])
    for phase, h in figures.passes.items():
        passes.add_metric([phase], _buckets(h), h.sum)
    yield passes
    yield GaugeMetricFamily("gpuherd_scheduler_running", "1 if the scheduler starts jobs, 0 if it is stopped.",
                            value=int(figures.scheduler_running))
    policy = GaugeMetricFamily("gpuherd_scheduler_policy", "The scheduling policy in use, always 1.", labels=["policy"])
    policy.add_metric([figures.policy], 1)
    yield policy
    yield CounterMetricFamily("gpuherd_agent_fallbacks", "Passes where the agent policy's fallback started jobs "
                              "without the model (fallback events), since the server started.", value=figures.fallbacks)
    yield CounterMetricFamily("gpuherd_jobs_started", "Jobs started since the server started.", value=figures.jobs_started)
    finished = CounterMetricFamily("gpuherd_jobs_finished", "Jobs ended since the server started, by final status.",
                                   labels=["status"])
    for status, count in figures.jobs_finished.items():
        finished.add_metric([status], count)
    yield finished
    yield GaugeMetricFamily("gpuherd_event_stream_clients", "Clients following /events/stream.", value=stream_clients)


def _buckets(h: observe.HistogramView) -> list[tuple[str, float]]:
    return [("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in h.buckets]


class _Scrape:
    """A collector over one reading of the figures."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


@router.get("/metrics", response_class=Response, responses={200: {
    "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    "description": "Prometheus' text format, version 0.0.4."}})
def metrics(tools: ToolsDep, request: Request) -> Response:
    """GPUs by state, per-GPU readings, jobs by status, the queue, waits, pass durations, fallbacks and
    GPUs in use per user, for Prometheus to scrape."""
    hub = getattr(request.app.state, "event_hub", None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(list(families(observe.figures(tools), stream_clients=hub.clients if hub else 0))))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
