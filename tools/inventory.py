"""The GPU resource manager: which GPUs exist, which may take new jobs, and what they are doing.

The inventory comes from one of two places:
- *detected*: a ``GpuProbe`` (``tools.nvml``) asks the NVIDIA driver about the GPUs of this node, or
- *declared*: a person says "node ``a`` has 8 GPUs" (a laptop, CI, a node we cannot probe).
The core never asks which one it has, except to skip live readings where nothing can be measured.

What is persisted: the inventory with each GPU's ``drained`` and ``healthy`` flags, so a restart keeps a
declared inventory and a person's drains. What is not: live metrics, which are stale the moment they
are written. Nothing here reads the wall clock; every change takes ``now`` and leaves an event row.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from tools.models import Event, Gpu, GpuMetrics, InventorySource, Node
from tools.nvml import GpuProbe, ProbeUnavailable
from tools.store import Store

DEFAULT_NODE = "local"
DEFAULT_GPUS = 8  # what the seed assumed; an honest guess for one 8-GPU server, and said to be a guess
MAX_GPUS_PER_NODE = 64
NO_READING = "gives no NVML reading (lost, or fallen off the bus)"  # why a GPU is unhealthy


class UnknownGpu(KeyError):
    """No GPU with that node and index in the current inventory."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else "unknown GPU"


class InventoryConflict(RuntimeError):
    """A new inventory would drop GPUs that running jobs hold; nothing was changed."""


class UnreachableNode(ValueError):
    """A declared node that the executor cannot reach: without Ray, jobs run on this machine only."""


# -- declared inventories --------------------------------------------------------------------------


class NodeDeclaration(BaseModel):
    """A node and its GPUs, as a person declares them where they cannot be detected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="The node's name."
    )
    gpus: int = Field(ge=1, le=MAX_GPUS_PER_NODE, strict=True, description="How many GPUs it has, indexed from 0.")
    model: str | None = Field(None, max_length=100, description="The GPU model, if known; None: unknown.")


def declared_nodes(declarations: Iterable[NodeDeclaration]) -> list[Node]:
    """Nodes with stable made-up UUIDs, so drains carry over when the same declaration is made again."""
    declarations = list(declarations)
    if not declarations:
        raise ValueError("declare at least one node")
    names = [d.name for d in declarations]
    if len(set(names)) != len(names):
        raise ValueError(f"a node is declared twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return [
        Node(
            name=d.name,
            source=InventorySource.DECLARED,
            gpus=tuple(
                Gpu(node=d.name, index=i, uuid=f"GPU-declared-{d.name}-{i}", model=d.model)
                for i in range(d.gpus)
            ),
        )
        for d in declarations
    ]


def _detected_nodes(gpus: list[Gpu]) -> list[Node]:
    by_node: dict[str, list[Gpu]] = {}
    for gpu in gpus:
        by_node.setdefault(gpu.node, []).append(gpu)
    return [
        Node(name=name, source=InventorySource.NVML, gpus=tuple(sorted(g, key=lambda x: x.index)))
        for name, g in sorted(by_node.items())
    ]


def _map_gpus(nodes: Iterable[Node], update: Callable[[Gpu], dict[str, Any]]) -> tuple[Node, ...]:
    """The nodes with ``update(gpu)``'s fields changed on each GPU (models are immutable)."""
    return tuple(
        n.model_copy(update={"gpus": tuple(g.model_copy(update=update(g)) for g in n.gpus)}) for n in nodes
    )


def _describe(nodes: Iterable[Node]) -> str:
    nodes = list(nodes)
    total = sum(len(n.gpus) for n in nodes)
    parts = ", ".join(f"{n.name}: {len(n.gpus)}" for n in nodes)
    return f"{total} GPU(s) on {len(nodes)} node(s) ({parts})"


# -- the manager -----------------------------------------------------------------------------------


class ResourceManager:
    """The current inventory, its drains and health, and the latest readings.

    The inventory is all detected (one node, this one) or all declared: a probe reads only its own
    node, so mixing would leave the declared part looking measured. Methods that change it take a
    lock because the service's REST threads and its tick loop share one manager.
    """

    def __init__(self, store: Store, probe: GpuProbe | None, *, local_only: bool = False) -> None:
        self._store = store
        self._probe = probe
        self._lock = threading.RLock()
        self._nodes: tuple[Node, ...] = ()
        self._metrics_error: str | None = None
        # The executor runs jobs on this machine only (tmux without Ray): one node, whatever its name;
        # declaring more is refused, since a job placed on another node would run here.
        self.local_only = local_only
        # The nodes are those an executor reports (Ray's node agents, ``follow``): nobody declares them.
        self.followed: str | None = None  # None, or why a person may not declare or re-detect them
        self._last_reported: tuple[Node, ...] | None = None
        self._drained_gone: set[str] = set()  # UUIDs of drained GPUs whose node left: drained when it returns

    # -- reading ---------------------------------------------------------------------------------
    def nodes(self) -> tuple[Node, ...]:
        return self._nodes

    @property
    def source(self) -> InventorySource | None:
        """Detected (NVML) or declared; None before ``initialize``."""
        return self._nodes[0].source if self._nodes else None

    @property
    def metrics_error(self) -> str | None:
        """Why the last metrics refresh read nothing, for status pages; None when it worked."""
        return self._metrics_error

    def gpu(self, node: str, index: int) -> Gpu:
        for n in self._nodes:
            if n.name == node:
                for g in n.gpus:
                    if g.index == index:
                        return g
                raise UnknownGpu(f"node {node} has no GPU {index} (it has {len(n.gpus)}, from 0)")
        known = ", ".join(n.name for n in self._nodes) or "none"
        raise UnknownGpu(f"no node named {node!r} (known: {known})")

    def largest_node_gpus(self) -> int:
        """Usable GPUs on the best node: a job asking for more can never start."""
        return max((sum(g.healthy and not g.drained for g in n.gpus) for n in self._nodes), default=0)

    # -- deciding the inventory ------------------------------------------------------------------
    def close(self) -> None:
        close = getattr(self._probe, "close", None)
        if close is not None:
            close()

    def initialize(self, now: float, declared: list[NodeDeclaration] | None = None) -> str:
        """Choose the start-up inventory: detected > declared now > saved before > 8 assumed GPUs.

        Returns a one-line notice for people, saying where the GPUs came from and, when they were
        not detected, why not.
        """
        with self._lock:
            stored = self._store.load_inventory()
            why_not, nodes = self._try_detect()
            if nodes:
                notice = f"Detected {_describe(nodes)} through NVML."
            elif declared:
                nodes = declared_nodes(declared)
                notice = f"Using the declared inventory: {_describe(nodes)}; not detected ({why_not})."
            elif stored:
                nodes = stored
                notice = (
                    f"Using the inventory saved before ({nodes[0].source.value}): {_describe(nodes)}; "
                    f"not re-detected ({why_not})."
                )
            else:
                nodes = declared_nodes([NodeDeclaration(name=DEFAULT_NODE, gpus=DEFAULT_GPUS)])
                notice = (
                    f"No GPUs detected ({why_not}) and none declared: assuming {DEFAULT_GPUS} GPUs on node "
                    f"{DEFAULT_NODE!r}. They are declared, not detected; declare the real inventory."
                )
            if self.local_only and len(nodes) > 1:
                # Saved by a server that took another node's GPUs for its own: keep this machine's.
                gone = ", ".join(n.name for n in nodes[1:])
                nodes = nodes[:1]
                notice += (f" Node(s) {gone} left out: without Ray (herd serve --ray) jobs run on this machine "
                           f"only, as node {nodes[0].name!r}.")
            self._replace(nodes, stored, now=now, message=notice)
            return notice

    def _try_detect(self) -> tuple[str, list[Node]]:
        """(why detection failed, detected nodes); nodes empty when it failed."""
        if self._probe is None:
            return "no GPU probe configured", []
        try:
            gpus = self._probe.discover()
        except ProbeUnavailable as exc:
            return str(exc), []
        if not gpus:
            return "NVML works but reports no GPUs", []
        return "", _detected_nodes(gpus)

    def declare(self, declarations: list[NodeDeclaration], *, now: float, held: set[tuple[str, int]]) -> None:
        """Replace the inventory with a declared one. ``held``: (node, index) of GPUs running jobs hold."""
        if self.followed:
            raise InventoryConflict(self.followed)
        if self.local_only and len(declarations) > 1:
            names = ", ".join(d.name for d in declarations)
            raise UnreachableNode(
                f"nodes {names}: without Ray this server runs jobs on this machine only, so it can declare one "
                "node (this one); join the servers to a Ray cluster and run herd serve --ray (README: Many nodes)")
        nodes = declared_nodes(declarations)
        with self._lock:
            self._check_held(nodes, held)
            self._replace(nodes, self._nodes, now=now, message=f"Inventory declared: {_describe(nodes)}.")

    def detect(self, *, now: float, held: set[tuple[str, int]]) -> None:
        """Re-detect through the probe; ``ProbeUnavailable`` says why it cannot."""
        if self.followed:
            raise InventoryConflict(self.followed)
        if self._probe is None:
            raise ProbeUnavailable("no GPU probe is configured on this server")
        gpus = self._probe.discover()
        if not gpus:
            raise ProbeUnavailable("NVML works but reports no GPUs")
        nodes = _detected_nodes(gpus)
        with self._lock:
            self._check_held(nodes, held)
            self._replace(nodes, self._nodes, now=now, message=f"Detected {_describe(nodes)} through NVML.")

    @staticmethod
    def _check_held(nodes: Iterable[Node], held: set[tuple[str, int]]) -> None:
        kept = {(n.name, g.index) for n in nodes for g in n.gpus}
        lost = sorted(held - kept)
        if lost:
            names = ", ".join(f"{node}:{index}" for node, index in lost)
            raise InventoryConflict(
                f"the new inventory drops GPU(s) {names}, which running jobs hold; "
                "stop those jobs first (nothing was changed)"
            )

    def _replace(self, nodes: Iterable[Node], before: Iterable[Node], *, now: float, message: str) -> None:
        """Install ``nodes``, keeping drains of GPUs that were drained before.

        A GPU is "the same" when its UUID is: a card moved to another slot stays drained, a new card in
        a drained card's slot does not. Declared UUIDs are made from node and index, so re-declaring
        the same shape keeps drains too.
        """
        drained = {g.uuid for n in before for g in n.gpus if g.drained}
        nodes = _map_gpus(nodes, lambda g: {"drained": g.uuid in drained})
        self._store.save_inventory(nodes)
        self._nodes = nodes
        self._store.add_event(
            Event(
                time=now,
                kind="inventory",
                message=message,
                data={"source": nodes[0].source.value, "gpus": {n.name: len(n.gpus) for n in nodes}},
            )
        )

    def follow(self, reported: tuple[Node, ...], *, now: float) -> str | None:
        """Make the nodes an executor reports (Ray's node agents: their GPUs, health and readings) the
        inventory. Cheap when nothing changed (the same tuple, or the same GPUs with new readings);
        a node that joined or left is persisted with an event, and drains carry over by UUID, also
        across a node's absence. Returns the event's message, or None when no node came or went."""
        with self._lock:
            if reported is self._last_reported:
                return None
            drained = {g.uuid for n in self._nodes for g in n.gpus if g.drained} | self._drained_gone
            if self._last_reported is None:  # the first report: drains saved before a restart hold
                drained |= {g.uuid for n in self._store.load_inventory() for g in n.gpus if g.drained}
            self._last_reported = reported

            def shape(nodes: Iterable[Node]) -> list:
                return [(n.name, n.source, [(g.index, g.uuid, g.model, g.memory_total_mib, g.healthy) for g in n.gpus])
                        for n in nodes]

            reasons = {g.uuid: g.reason for n in self._nodes for g in n.gpus if g.drained and g.reason}
            nodes = _map_gpus(reported, lambda g: {"drained": g.uuid in drained,
                                                   "reason": reasons.get(g.uuid, g.reason)})
            if shape(nodes) == shape(self._nodes):
                self._nodes = nodes  # new readings only: not stored, no event
                return None
            before = {n.name: n for n in self._nodes}
            after = {n.name: n for n in nodes}
            joined = [n for name, n in after.items() if name not in before]
            left = [n for name, n in before.items() if name not in after]
            self._drained_gone = {g.uuid for n in left for g in n.gpus if g.drained} | (
                self._drained_gone - {g.uuid for n in nodes for g in n.gpus})
            parts = [f"node {n.name} joined with {len(n.gpus)} GPU(s)" for n in joined]
            parts += [f"node {n.name} left; its {len(n.gpus)} GPU(s) leave the inventory" for n in left]
            parts += [f"node {name} changed" for name in after.keys() & before.keys()
                      if shape([after[name]]) != shape([before[name]])]
            message = "; ".join(parts) + (f". Now {_describe(nodes)}." if nodes else ". No node is left.")
            self._store.save_inventory(nodes)
            self._nodes = nodes
            self._store.add_event(Event(
                time=now, kind="inventory", message=message,
                data={"gpus": {n.name: len(n.gpus) for n in nodes}, "joined": [n.name for n in joined],
                      "left": [n.name for n in left]}))
            return message

    # -- drains and health -----------------------------------------------------------------------
    def drain(self, node: str, index: int, *, now: float, reason: str = "") -> None:
        """Start no new job on this GPU; a job already on it keeps running. Idempotent."""
        self._set_drained(node, index, True, now=now, reason=reason)

    def undrain(self, node: str, index: int, *, now: float, reason: str = "") -> None:
        """Let new jobs on this GPU again. Idempotent."""
        self._set_drained(node, index, False, now=now, reason=reason)

    def _set_drained(self, node: str, index: int, drained: bool, *, now: float, reason: str) -> None:
        # No event when nothing changes: a repeated click is not news for the audit log.
        with self._lock:
            if self.gpu(node, index).drained == drained:
                return
            self._update({(node, index): {"drained": drained, "reason": (reason or None) if drained else None}})
            kind = "gpu_drained" if drained else "gpu_undrained"
            message = f"GPU {node}:{index} {kind.removeprefix('gpu_')}" + (f": {reason}" if reason else "")
            data = {"node": node, "gpu": index, "reason": reason}
            self._store.add_event(Event(time=now, kind=kind, message=message, data=data))

    def _update(self, changes: dict[tuple[str, int], dict[str, Any]], *, persist: bool = True) -> None:
        self._nodes = _map_gpus(self._nodes, lambda g: changes.get((g.node, g.index), {}))
        if persist:
            self._store.save_inventory(self._nodes)

    # -- live readings ---------------------------------------------------------------------------
    def refresh_metrics(self, now: float) -> None:
        """Read the probe and keep the readings in memory (never in the store: they are stale at once).

        Health follows the readings: a GPU the probe could not read at all (lost, fallen off the bus)
        is unhealthy until it answers again, and each change of health is persisted with an event. A
        probe that reads nothing (``ProbeUnavailable``) clears the readings but changes no health: one
        failed read says nothing about the GPUs, and marking a whole node unhealthy on it would stall
        the queue. Declared inventories have nothing to read.
        """
        if self._probe is None or self.source != InventorySource.NVML:
            return
        try:
            readings: dict[int, GpuMetrics] | None = self._probe.metrics()
            error = None
        except ProbeUnavailable as exc:
            readings, error = None, str(exc)
        with self._lock:
            self._metrics_error = error
            if readings is None:
                self._nodes = _map_gpus(self._nodes, lambda g: {"metrics": None})
                return
            changes, events = {}, []
            for n in self._nodes:
                for g in n.gpus:
                    reading = readings.get(g.index)
                    changes[(n.name, g.index)] = {"metrics": reading, "healthy": reading is not None}
                    if g.healthy != (reading is not None):
                        changes[(n.name, g.index)]["reason"] = (
                            NO_READING if reading is None else None if g.reason == NO_READING else g.reason)
                        kind = "gpu_healthy" if reading is not None else "gpu_unhealthy"
                        why = "answers NVML again" if reading is not None else "gave no NVML reading"
                        events.append(
                            Event(
                                time=now,
                                kind=kind,
                                message=f"GPU {n.name}:{g.index} {why}",
                                data={"node": n.name, "gpu": g.index},
                            )
                        )
            self._update(changes, persist=bool(events))
            for event in events:
                self._store.add_event(event)
