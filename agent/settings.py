"""The service's settings: flags, then ``HERD_*`` environment variables, then the seed's
``RESEARCH_AGENT_*`` variables, then the defaults below.

Flags reach here as keyword arguments (``Settings(port=8080)``), which pydantic-settings ranks above
the environment. Where two variables name one setting, the ``HERD_*`` one wins.

The policy and the started/stopped state are also kept in the database, so that ``herd policy`` and
``herd stop`` survive a restart. A value given explicitly at start-up (flag or variable) wins over the
saved one and is saved in turn; ``Settings.explicit`` says which were given.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from policies.ordering import POLICIES

AGENT_POLICY = "agent"  # the LLM proposes, the validator decides; needs a model endpoint
POLICY_NAMES = (*POLICIES, AGENT_POLICY)


def _env(field: str, *names: str) -> AliasChoices:
    """Accept the field's own name (flags), then the listed variables in order of precedence."""
    return AliasChoices(field, *names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HERD_", populate_by_name=True, extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(10000, ge=1, le=65535, description="Port to listen on (the seed's 10000).")
    workdir: Path = Field(Path(".herd"), description="Holds the database, job logs and exit-code files.")
    gpus: int | None = Field(
        None, ge=1, le=64, description="Declare this many GPUs on node 'local' when NVML finds none."
    )
    node_name: str = Field("local", description="This node's name in the inventory.")
    policy: str = Field(
        "priority",
        validation_alias=_env("policy", "HERD_POLICY", "RESEARCH_AGENT_SCHEDULING_POLICY"),
        description="Scheduling policy: " + " | ".join(POLICY_NAMES),
    )
    max_queue_size: int = Field(
        100,
        ge=1,
        validation_alias=_env("max_queue_size", "HERD_MAX_QUEUE_SIZE", "RESEARCH_AGENT_MAX_QUEUE_SIZE"),
        description="Most jobs that may wait at once; a submission beyond it gets 429.",
    )
    orchestration_enabled: bool = Field(
        True,
        validation_alias=_env(
            "orchestration_enabled", "HERD_ORCHESTRATION_ENABLED", "RESEARCH_AGENT_GPU_ORCHESTRATION_ENABLED"
        ),
        description="False: the API serves, but no job starts until POST /orchestrator/start.",
    )
    grace_s: float = Field(10.0, ge=0, description="SIGTERM to SIGKILL, when a job is stopped.")
    tmux_socket: str = Field("gpuherd", pattern=r"^[A-Za-z0-9_-]+$", description="tmux -L name of the job server.")
    tick_interval_s: float = Field(0.5, gt=0, description="Longest time between two scheduler passes.")
    metrics_interval_s: float = Field(5.0, gt=0, description="How often live GPU readings are refreshed.")
    log_level: str = Field("info", description="Log level of the server.")

    # The model: any OpenAI-compatible endpoint. Without a base URL or a key there is no model: chat
    # answers 503 and scheduling stays deterministic.
    openai_base_url: str | None = Field(None, validation_alias=_env("openai_base_url", "OPENAI_BASE_URL"))
    openai_api_key: str | None = Field(None, validation_alias=_env("openai_api_key", "OPENAI_API_KEY"), repr=False)
    model: str = Field("gpt-4o-mini", description="The model's name at the endpoint (HERD_MODEL).")
    model_timeout_s: float = Field(20.0, gt=0, description="Longest wait for one model reply.")
    agent_budget_s: float = Field(10.0, gt=0, description="Wall-clock budget of one agent scheduling decision.")

    @property
    def model_configured(self) -> bool:
        return bool(self.openai_base_url or self.openai_api_key)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v not in POLICY_NAMES:
            raise ValueError(f"unknown policy {v!r}; choose one of: {', '.join(POLICY_NAMES)}")
        return v

    @property
    def explicit(self) -> set[str]:
        """Settings given by a flag or an environment variable rather than left at their default."""
        return set(self.model_fields_set)
