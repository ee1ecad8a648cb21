"""What every typed tool receives: the core, who is acting, and the refusals a tool may raise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

from pydantic import BaseModel, ConfigDict

from policies.multifactor import MultifactorPolicy
from policies.ordering import Policy
from tools.clock import Clock
from tools.door.samples import Observer
from tools.executor import Executor
from tools.inventory import ResourceManager
from tools.models import Event, Job
from tools.orchestrator import Orchestrator
from tools.queue import JobQueue
from tools.store import Store
from tools.tokens import TokenStore

J = TypeVar("J", bound=Job)

# Keys in the store's settings table: the scheduler's choices survive a restart.
POLICY_KEY = "policy"
ENABLED_KEY = "orchestration_enabled"


class PermissionDenied(PermissionError):
    """The acting user may not do this (another user's job, or an administrator's operation)."""


class ToolRefused(Exception):
    """A tool declined the request (e.g. the validator refused a proposal); the message says why."""


@dataclass
class Core:
    """One cluster's core as ``agent.build.build_core`` wires it: what every typed tool works on."""

    clock: Clock
    store: Store
    queue: JobQueue
    resources: ResourceManager
    executor: Executor
    orchestrator: Orchestrator
    multifactor: MultifactorPolicy  # as configured: explains any job's priority, whatever the policy
    make_policy: Callable[[str], Policy]  # a policy by name; ValueError naming the choices
    policy_names: tuple[str, ...]
    inventory_notice: str = ""  # where the inventory came from, as people should read it
    tokens: TokenStore | None = None  # bearer tokens for TCP; None where nobody connects (replays)
    owners_must_exist: bool = False  # jobs run as their owners, so an owner must be a user of this node
    changed: Callable[[], None] = lambda: None  # asks for a scheduler pass (the service's wake)
    observer: Observer = field(default_factory=Observer)  # the dashboard's series and /metrics' counters


@dataclass(frozen=True)
class Actor:
    """Who is acting, as the front door established it (never from a request body or a model).

    ``user`` None is nobody: an anonymous reader, or, with ``admin``, an operator acting for anyone (a
    replay, a test). ``via`` says how the door knew: ``socket`` (the kernel's peer credentials),
    ``token``, ``loopback`` (single-user mode), ``chat`` or ``operator``. ``refused`` holds why this
    actor may change nothing at all (another user on a personal server), else None.
    """

    user: str | None
    admin: bool = False
    via: str = "operator"
    refused: str | None = None

    def __str__(self) -> str:
        return self.user or ("operator" if self.admin else "anonymous")


OPERATOR = Actor(user=None, admin=True)
ANONYMOUS = Actor(user=None, via="anonymous")


class NotAuthenticated(PermissionError):
    """A change asked for by nobody: the front door found no identity (no token over TCP)."""


@dataclass(frozen=True)
class ToolContext:
    core: Core
    actor: Actor = OPERATOR

    @property
    def orchestrator(self) -> Orchestrator:
        return self.core.orchestrator

    def _may_act(self) -> None:
        if self.actor.user is None and not self.actor.admin:
            raise NotAuthenticated(
                "this needs to know who you are: over TCP send Authorization: Bearer <token> (run `herd token` "
                "on the server once, then set HERD_TOKEN or ~/.config/gpuherd/token), or use the server's socket")
        if self.actor.refused:
            raise PermissionDenied(self.actor.refused)

    def check_owner(self, job: Job) -> None:
        """The actor may act on ``job`` (and read its log, command and environment)."""
        self._may_act()
        if not self.actor.admin and job.user != self.actor.user:
            raise PermissionDenied(f"job {job.id} belongs to {job.user}; {self.actor.user} may act only on their own jobs")

    def check_admin(self, what: str) -> None:
        self._may_act()
        if not self.actor.admin:
            raise PermissionDenied(f"{what} is for administrators; {self.actor.user} is not one")

    def owner(self, named: str | None) -> str:
        """The owner of something the actor creates: the actor, or the user an administrator names."""
        self._may_act()
        if named is not None and named != self.actor.user:
            if not self.actor.admin:
                raise PermissionDenied(f"{self.actor.user} may not act as {named}; only an administrator may")
            return named
        if self.actor.user is None:
            raise PermissionDenied("say which user this is for")
        return self.actor.user

    def sees_all_of(self, job: Job) -> bool:
        """Whether the actor may see ``job``'s command, environment and log: its owner's and the admins'."""
        return self.actor.admin or job.user == self.actor.user

    def check_reader(self, job: Job) -> None:
        """The actor may read ``job``'s log."""
        if self.sees_all_of(job):
            return
        if self.actor.user is None:
            self._may_act()  # says how to be someone
        raise PermissionDenied(f"job {job.id}'s log, command and environment are {job.user}'s and the administrators'")

    def record(self, what: str, job_id: int | None = None) -> None:
        """Note in the event log who asked for a change: every change a person asks for carries the identity
        that made it. In-process operators (replays, tests) are not people and leave no note."""
        if self.actor.via == "operator":
            return
        core = self.core
        core.store.add_event(Event(time=core.clock.now(), kind="request", job_id=job_id, message=f"{self.actor}: {what}",
                                   data={"actor": self.actor.user, "admin": self.actor.admin, "via": self.actor.via}))

    def shown(self, job: J) -> J:
        """``job`` as the actor may see it: another user's command, working directory, environment and
        webhook (a URL that holds its secret) left out."""
        if self.sees_all_of(job):
            return job
        return job.model_copy(update={"command": "", "cwd": None, "env": {}, "notify": None})


class Args(BaseModel):
    """A typed tool's arguments: nothing unknown is accepted."""

    model_config = ConfigDict(extra="forbid")
