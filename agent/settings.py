"""The service's settings: flags, then ``HERD_*`` environment variables, then the seed's
``RESEARCH_AGENT_*`` variables, then a YAML config file (``--config`` / ``HERD_CONFIG``), then the
defaults below.

Flags reach here as keyword arguments (``Settings(port=8080)``), which pydantic-settings ranks above
the environment. Where two variables name one setting, the ``HERD_*`` one wins. Maps are JSON in a
variable (``HERD_USER_QUOTAS='{"alice": 4}'``); the config file holds the same keys as YAML, which
suits quotas and groups better.

The policy and the started/stopped state are also kept in the database, so that ``herd policy`` and
``herd stop`` survive a restart. A value given explicitly at start-up (flag, variable or config file)
wins over the saved one and is saved in turn; ``Settings.explicit`` says which were given.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from policies.estimates import DEFAULT_PREDICTOR
from policies.ordering import POLICIES
from policies.rules import DEFAULT_RULES, Weights
from tools.timespec import parse_duration
from tools.notify import NotifyConfig

AGENT_POLICY = "agent"  # the LLM proposes, the validator decides; needs a model endpoint
POLICY_NAMES = (*POLICIES, AGENT_POLICY)

GpuQuota = Annotated[int, Field(ge=0)]
# Maps come as JSON from a variable; decoded by the field's own validator, whose error names the field.
QuotaMap = Annotated[dict[str, GpuQuota], NoDecode]
GroupMap = Annotated[dict[str, list[str]], NoDecode]
DEFAULT_WEIGHTS = Weights()  # the defaults live with the policy; settings only override them
OFF = ("off", "never", "none", "null", "")  # how a person turns preemption off


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a name) is this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class ConfigError(ValueError):
    """The config file cannot be read, or names a key that is not a setting."""


def _env(field: str, *names: str) -> AliasChoices:
    """Accept the field's own name (flags), then the listed variables in order of precedence."""
    return AliasChoices(field, *names)


class ConfigFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, refusing what it would pass over: a file that cannot be read or
    parsed, and a key that is not a setting (a typo must not silently leave a quota unset)."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | os.PathLike | None) -> None:
        self.settings_cls = settings_cls
        self.path = Path(path) if path else None
        if self.path is not None and not self.path.exists():  # the library would pass over it
            raise ConfigError(f"config file {self.path}: cannot read it ({os.strerror(errno.ENOENT)})")
        super().__init__(settings_cls, yaml_file=self.path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(file_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {file_path}: cannot read it ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"config file {file_path}: not valid YAML{line}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path}: expected a mapping of setting: value, got {type(data).__name__}")
        known = set(self.settings_cls.model_fields) - {"config"}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"config file {file_path}: unknown key {key!r}{hint}")
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HERD_", populate_by_name=True, extra="ignore")

    config: Path | None = Field(None, description="A YAML file with any of these settings (HERD_CONFIG).")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(10000, ge=1, le=65535, description="Port to listen on (the seed's 10000).")
    workdir: Path = Field(Path(".herd"), description="Holds the database, job logs and exit-code files.")
    gpus: int | None = Field(
        None, ge=1, le=64, description="Declare this many GPUs on node 'local' when NVML finds none."
    )
    node_name: str = Field("local", description="This node's name in the inventory.")
    policy: str = Field(
        "multifactor",
        validation_alias=_env("policy", "HERD_POLICY", "RESEARCH_AGENT_SCHEDULING_POLICY"),
        description="Scheduling policy: " + " | ".join(POLICY_NAMES),
    )
    max_queue_size: int = Field(
        100,
        ge=1,
        validation_alias=_env("max_queue_size", "HERD_MAX_QUEUE_SIZE", "RESEARCH_AGENT_MAX_QUEUE_SIZE"),
        description="Most submissions that may wait at once (an array counts once); one more gets 429.",
    )
    max_queued_per_user: int | None = Field(
        None, ge=1, description="Most jobs one user may have waiting, each task of an array counted; none: no limit "
        "but max_queue_size. One more gets 429.",
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
    # Many nodes (tools/ray_executor.py): a Ray cluster's nodes, each with a node agent; needs gpuherd[ray].
    ray: str | None = Field(None, description="Join this Ray cluster as a driver and run jobs on all its nodes "
                            "(auto: the cluster of this machine; else host:port of its head).")
    ray_local_nodes: int | None = Field(None, ge=1, le=16, description="Start a Ray cluster of this many nodes on "
                                        "this machine (each with `gpus` declared GPUs) and run jobs on them.")
    ray_namespace: str = Field("gpuherd", pattern=r"^[A-Za-z0-9_-]+$", description="Ray namespace of the node agents.")
    tick_interval_s: float = Field(0.5, gt=0, description="Longest time between two scheduler passes.")
    sample_interval_s: float = Field(
        10.0, gt=0, validation_alias=_env("sample_interval_s", "metrics_interval_s", "HERD_SAMPLE_INTERVAL_S",
                                          "HERD_METRICS_INTERVAL_S"),
        description="How often each GPU is sampled (utilization, memory, temperature, power, ECC and XID errors, "
        "processes); metrics_interval_s is its older name.")
    log_level: str = Field("info", description="Log level of the server.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; a larger one gets 413.")
    busy_timeout_s: float = Field(5.0, ge=0, le=600, description="Longest wait for the database's write lock "
                                  "(held by another process); past it, 503.")

    # Who may act (agent/identity.py): the mode, the administrators, and what the web may reach.
    single_user: bool = Field(False, description="Loopback requests without a token act as the server's user "
                              "(make run); refused with a non-loopback host.")
    admins: list[str] = Field(default_factory=list, description="Unix users who administer the server, besides root.")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names the server answers to, besides "
                                     "localhost names and the bind address (a name in a URL people use).")
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM) for the TCP port, with ssl_keyfile.")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM) for the TCP port.")

    # The model: any OpenAI-compatible endpoint. Without a base URL or a key there is no model: chat
    # answers 503 and scheduling stays deterministic.
    openai_base_url: str | None = Field(None, validation_alias=_env("openai_base_url", "OPENAI_BASE_URL"))
    openai_api_key: str | None = Field(None, validation_alias=_env("openai_api_key", "OPENAI_API_KEY"), repr=False)
    model: str = Field("gpt-4o-mini", description="The model's name at the endpoint (HERD_MODEL).")
    model_timeout_s: float = Field(20.0, gt=0, description="Longest wait for one model reply.")
    agent_budget_s: float = Field(10.0, gt=0, description="Wall-clock budget of one agent scheduling decision.")
    agent_wait_s: float | None = Field(0.2, ge=0, description="The longest a scheduling pass waits for the model, "
                                       "which works in a thread of its own; the fallback schedules meanwhile. null: "
                                       "the pass waits for its answer (replays).")
    agent_breaker_base_s: float = Field(5.0, gt=0, description="After a failed consultation the model is not asked "
                                        "for this long, twice as long after each further failure in a row.")
    agent_breaker_max_s: float = Field(300.0, gt=0, description="The longest the model's breaker stays open.")
    agent_max_tool_calls: int = Field(16, ge=1, description="Tool calls run from one model reply (chat and "
                                      "scheduling); the rest are refused unrun.")
    chat_max_submissions: int = Field(5, ge=0, description="Jobs one chat message may queue, each task of an array "
                                      "counted; they count against max_queued_per_user too.")

    # The scheduling rules (policies/rules.py): quotas count GPUs held at once.
    user_quotas: QuotaMap = Field(default_factory=dict, description="GPU quota per user.")
    group_quotas: QuotaMap = Field(default_factory=dict, description="GPU quota per group.")
    default_user_quota: GpuQuota | None = Field(None, description="Quota of users without one; none: no limit.")
    groups: GroupMap = Field(default_factory=dict, description="Group -> its members; one group per user.")
    default_runtime_s: float = Field(DEFAULT_RULES.default_runtime_s, gt=0, description="Expected run time of a job without limit or estimate.")
    backfill_depth: int = Field(DEFAULT_RULES.backfill_depth, ge=0, description="Jobs examined for backfill after the first that must wait.")
    backfill_plans: int = Field(DEFAULT_RULES.backfill_plans, ge=1, description="Waiting jobs the backfill plan holds "
                                "GPUs for, in the policy's order; a later job may not delay any of them (1: EASY).")
    starve_after_s: float | None = Field(DEFAULT_RULES.starve_after_s, gt=0, description="A job waiting this long goes "
                                         "first (multifactor) and no job may start on the GPUs planned for it; off: never.")
    estimate_quantile: float = Field(DEFAULT_PREDICTOR.quantile, ge=0, le=1, description="A job queued without an "
                                     "estimate is estimated at this quantile of the run times of finished jobs like it.")
    estimate_batch_gap_s: float = Field(60.0, ge=0, description="Jobs of one task queued less than this apart are one "
                                        "batch, estimated from its own finished members.")
    preempt_priority_gap: int | None = Field(
        DEFAULT_RULES.preempt_priority_gap, ge=1, description="A job preempts preemptible jobs this much lower in priority; off: never."
    )
    preempt_min_runtime_s: float = Field(DEFAULT_RULES.preempt_min_runtime_s, ge=0, description="A job running less than this is not preempted.")
    preempt_grace_s: float = Field(
        30.0, ge=0, validation_alias=_env("preempt_grace_s", "HERD_PREEMPT_GRACE", "HERD_PREEMPT_GRACE_S"),
        description="SIGTERM to SIGKILL for a preempted job: its time to checkpoint.",
    )
    usage_half_life_s: float = Field(7 * 86_400.0, gt=0, description="Fair share: past GPU-time halves this often.")
    # The multifactor priority (policies/rules.py Weights).
    weight_priority: float = Field(DEFAULT_WEIGHTS.priority, ge=0)
    weight_age: float = Field(DEFAULT_WEIGHTS.age, ge=0)
    weight_fair_share: float = Field(DEFAULT_WEIGHTS.fair_share, ge=0)
    weight_size: float = Field(DEFAULT_WEIGHTS.size, ge=0)
    age_unit_s: float = Field(DEFAULT_WEIGHTS.age_unit_s, gt=0, description="Waiting this long adds one whole age factor.")
    size_unit_gpu_hours: float = Field(DEFAULT_WEIGHTS.size_unit_gpu_hours, gt=0, description="A job of this many GPU-hours has size factor 1/2.")

    # Watching the GPUs (tools/door/watch.py): each GPU's samples, idle jobs, use outside gpuherd, failing GPUs.
    sample_full_s: float = Field(3600.0, gt=0, description="Each GPU's samples are kept as taken for this long, ...")
    sample_coarse_s: float = Field(300.0, gt=0, description="... then as means over spans of this many seconds, ...")
    sample_keep_s: float = Field(86_400.0, gt=0, description="... for this long in all.")
    idle_threshold: float = Field(5.0, ge=0, le=100, description="A job's GPUs under this mean utilization (percent) "
                                  "are idle.")
    idle_after: float = Field(1800.0, gt=0, description="Idle this long (seconds, or 30m, 2h): an idle event, then "
                              "idle_action; a job submitted with --allow-idle is left alone.")
    idle_action: Literal["notify", "requeue", "stop"] = Field(
        "notify", description="After the idle event: notify (nothing more), requeue (stopped and queued again, no "
        "retry used) or stop (cancelled).")

    @field_validator("idle_after", mode="before")
    @classmethod
    def _idle_after_duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    # Notifications (tools/notify.py, agent/notifier.py): {default: URL, users: {alice: URL}, events: [...]}.
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="Webhooks told of jobs' starts, ends, "
                                 "failures, time limits, idle GPUs, preemptions and reservations' starts (HERD_NOTIFY "
                                 "as JSON); a URL written slack:https://... gets a Slack-style body.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = getattr(init_settings, "init_kwargs", {}).get("config") or os.environ.get("HERD_CONFIG")
        return init_settings, env_settings, ConfigFile(settings_cls, path)

    @classmethod
    def plain(cls, **values: Any) -> Settings:
        """Settings from ``values`` and the defaults alone, reading no variable and no config file: a
        replay or a test must not change with the shell it runs in."""
        return _PlainSettings(**values)

    @property
    def model_configured(self) -> bool:
        return bool(self.openai_base_url or self.openai_api_key)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v not in POLICY_NAMES:
            raise ValueError(f"unknown policy {v!r}; choose one of: {', '.join(POLICY_NAMES)}")
        return v

    @field_validator("user_quotas", "group_quotas", "groups", mode="before")
    @classmethod
    def _json_map(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        try:
            return json.loads(v)
        except json.JSONDecodeError as exc:
            raise ValueError(f'not valid JSON ({exc.msg}); write an object, e.g. {{"alice": 4}}') from None

    @field_validator("preempt_priority_gap", mode="before")
    @classmethod
    def _preemption_off(cls, v: Any) -> Any:
        if v is None or v is False or (isinstance(v, str) and v.strip().lower() in OFF):
            return None
        if v is True:
            raise ValueError("give the priority gap as a number, or off to never preempt")
        return v

    @field_validator("groups")
    @classmethod
    def _one_group_per_user(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for group, members in v.items():
            for user in members:
                if user in seen and seen[user] != group:
                    raise ValueError(f"user {user} is in two groups, {seen[user]} and {group}; a user has one group")
                seen[user] = group
        return v

    @model_validator(mode="after")
    def _quotas_of_known_groups(self) -> Settings:
        unknown = sorted(set(self.group_quotas) - set(self.groups))
        if unknown:
            raise ValueError(f"group_quotas: no group {', '.join(unknown)} in groups (give its members there)")
        return self

    @model_validator(mode="after")
    def _one_ray(self) -> Settings:
        if self.ray is not None and self.ray_local_nodes is not None:
            raise ValueError("ray and ray_local_nodes: join a cluster or start a local one, not both")
        return self

    @model_validator(mode="after")
    def _single_user_on_loopback(self) -> Settings:
        if self.single_user and not is_loopback(self.host):
            raise ValueError(f"single_user: a server on {self.host} is reachable from other machines, where a request "
                             "without a token must not act as the server's user; use a loopback host, or tokens")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    @property
    def explicit(self) -> set[str]:
        """Settings given by a flag or an environment variable rather than left at their default."""
        return set(self.model_fields_set)


class _PlainSettings(Settings):
    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **others: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)
