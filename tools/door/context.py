"""What every typed tool receives: the core, who is acting, and the refusals a tool may raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, ConfigDict

from policies.multifactor import MultifactorPolicy
from policies.ordering import Policy
from tools.clock import Clock
from tools.executor import Executor
from tools.inventory import ResourceManager
from tools.models import Job
from tools.orchestrator import Orchestrator
from tools.queue import JobQueue
from tools.store import Store

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
    changed: Callable[[], None] = lambda: None  # asks for a scheduler pass (the service's wake)


@dataclass(frozen=True)
class Actor:
    """Who is acting, as the front door established it. ``user`` None: an operator acting for anyone."""

    user: str | None
    admin: bool = False


OPERATOR = Actor(user=None, admin=True)


@dataclass(frozen=True)
class ToolContext:
    core: Core
    actor: Actor = OPERATOR

    @property
    def orchestrator(self) -> Orchestrator:
        return self.core.orchestrator

    def check_owner(self, job: Job) -> None:
        if not self.actor.admin and job.user != self.actor.user:
            raise PermissionDenied(f"job {job.id} belongs to {job.user}; {self.actor.user} may change only their own jobs")

    def check_admin(self, what: str) -> None:
        if not self.actor.admin:
            raise PermissionDenied(f"{what} is for administrators; {self.actor.user} is not one")

    def owner(self, named: str | None) -> str:
        """The owner of something the actor creates: the actor, or the user an administrator names."""
        if named is not None and named != self.actor.user:
            if not self.actor.admin:
                raise PermissionDenied(f"{self.actor.user} may not act as {named}")
            return named
        if self.actor.user is None:
            raise PermissionDenied("say which user this is for")
        return self.actor.user


class Args(BaseModel):
    """A typed tool's arguments: nothing unknown is accepted."""

    model_config = ConfigDict(extra="forbid")
