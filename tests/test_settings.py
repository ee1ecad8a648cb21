"""Settings: flags > ``HERD_*`` variables > the YAML config file > defaults; errors name the key; the
service builds its rules, weights and policies from them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.api.errors import describe_errors
from agent.service import Service
from tools.nvml import UnavailableProbe
from agent.settings import ConfigError, Settings
from policies.rules import DEFAULT_RULES
from policies.multifactor import MultifactorPolicy
from policies.rules import Rules, Weights
from tools.clock import SimClock
from tools.sim_executor import SimExecutor


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("HERD_CONFIG", "HERD_POLICY", "HERD_MAX_QUEUE_SIZE", "HERD_USER_QUOTAS", "HERD_GROUP_QUOTAS",
                 "HERD_GROUPS", "HERD_DEFAULT_USER_QUOTA", "HERD_PREEMPT_PRIORITY_GAP", "HERD_PREEMPT_GRACE",
                 "HERD_PREEMPT_GRACE_S", "HERD_WEIGHT_AGE", "RESEARCH_AGENT_SCHEDULING_POLICY",
                 "RESEARCH_AGENT_MAX_QUEUE_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config(tmp_path):
    """Write a config file; returns its path."""

    def write(text: str):
        path = tmp_path / "herd.yaml"
        path.write_text(text)
        return path

    return write


def error_of(**kwargs) -> str:
    with pytest.raises(ValidationError) as info:
        Settings(**kwargs)
    return describe_errors(info.value.errors())


def test_defaults():
    s = Settings()
    assert s.policy == "multifactor"
    assert (s.user_quotas, s.group_quotas, s.groups, s.default_user_quota) == ({}, {}, {}, None)
    assert (s.default_runtime_s, s.backfill_depth, s.preempt_priority_gap, s.preempt_min_runtime_s) == (3600, 500, 2, 600)
    assert (s.preempt_grace_s, s.usage_half_life_s) == (30, 7 * 86400)
    assert (s.weight_priority, s.weight_age, s.weight_fair_share, s.weight_size, s.age_unit_s, s.size_unit_gpu_hours) == (
        1000, 100, 2000, 1000, 86400, 8)


def test_flags_beat_variables_beat_the_file_beat_defaults(config, monkeypatch):
    path = config("policy: fcfs\nmax_queue_size: 7\nweight_age: 50\nuser_quotas: {alice: 4}\n")
    from_file = Settings(config=path)
    assert (from_file.policy, from_file.max_queue_size, from_file.weight_age, from_file.user_quotas) == ("fcfs", 7, 50, {"alice": 4})
    assert from_file.backfill_depth == DEFAULT_RULES.backfill_depth  # not in the file: the default
    monkeypatch.setenv("HERD_MAX_QUEUE_SIZE", "9")
    monkeypatch.setenv("HERD_USER_QUOTAS", '{"bob": 2}')
    from_env = Settings(config=path)
    assert (from_env.policy, from_env.max_queue_size, from_env.user_quotas) == ("fcfs", 9, {"bob": 2})
    from_flags = Settings(config=path, policy="sjf", max_queue_size=3)
    assert (from_flags.policy, from_flags.max_queue_size, from_flags.weight_age) == ("sjf", 3, 50)


def test_the_config_file_can_come_from_herd_config(config, monkeypatch):
    monkeypatch.setenv("HERD_CONFIG", str(config("default_user_quota: 2\n")))
    assert Settings().default_user_quota == 2


def test_a_config_file_holds_quotas_and_groups(config):
    s = Settings(config=config(
        "groups:\n  nlp: [alice, bob]\n  vision: [carol]\n"
        "group_quotas:\n  nlp: 6\n"
        "user_quotas:\n  alice: 4\n"
        "default_user_quota: 2\n"
        "preempt_priority_gap: off\n"
    ))
    assert s.groups == {"nlp": ["alice", "bob"], "vision": ["carol"]}
    assert (s.group_quotas, s.user_quotas, s.default_user_quota, s.preempt_priority_gap) == ({"nlp": 6}, {"alice": 4}, 2, None)


@pytest.mark.parametrize("text, message", [
    ("user_quota: {alice: 4}\n", "unknown key 'user_quota' (did you mean 'user_quotas'?)"),
    ("colour: blue\n", "unknown key 'colour'"),
    ("groups: [nlp\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "expected a mapping of setting: value, got list"),
])
def test_a_bad_config_file_is_refused_with_its_name_and_why(config, text, message):
    path = config(text)
    with pytest.raises(ConfigError) as info:
        Settings(config=path)
    assert str(info.value) == f"config file {path}: {message}"


def test_a_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml: cannot read it \(No such file or directory\)"):
        Settings(config=tmp_path / "nope.yaml")


def test_an_empty_config_file_changes_nothing(config):
    assert Settings(config=config("")).policy == "multifactor"


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": {"nlp": ["alice"], "vision": ["alice"]}}, "groups: user alice is in two groups, nlp and vision; a user has one group"),
    ({"group_quotas": {"nlp": 4}}, "group_quotas: no group nlp in groups (give its members there)"),
    ({"user_quotas": {"alice": -1}}, "user_quotas.alice: Input should be greater than or equal to 0"),
    ({"user_quotas": '{alice: 4}'}, 'user_quotas: not valid JSON (Expecting property name enclosed in double quotes); '
                                    'write an object, e.g. {"alice": 4}'),
    ({"preempt_priority_gap": 0}, "preempt_priority_gap: Input should be greater than or equal to 1"),
    ({"preempt_priority_gap": True}, "preempt_priority_gap: give the priority gap as a number, or off to never preempt"),
    ({"default_runtime_s": 0}, "default_runtime_s: Input should be greater than 0"),
    ({"weight_age": -1}, "weight_age: Input should be greater than or equal to 0"),
    ({"size_unit_gpu_hours": 0}, "size_unit_gpu_hours: Input should be greater than 0"),
    ({"usage_half_life_s": 0}, "usage_half_life_s: Input should be greater than 0"),
])
def test_bad_values_name_the_key_and_why(kwargs, message):
    assert error_of(**kwargs) == message


def test_maps_come_as_json_from_variables(monkeypatch):
    monkeypatch.setenv("HERD_USER_QUOTAS", '{"alice": 4}')
    monkeypatch.setenv("HERD_GROUPS", '{"nlp": ["alice", "bob"]}')
    monkeypatch.setenv("HERD_GROUP_QUOTAS", '{"nlp": 6}')
    s = Settings()
    assert (s.user_quotas, s.groups, s.group_quotas) == ({"alice": 4}, {"nlp": ["alice", "bob"]}, {"nlp": 6})
    monkeypatch.setenv("HERD_GROUPS", '{"nlp": ["alice"], "cv": ["alice"]}')
    with pytest.raises(ValidationError, match="user alice is in two groups"):
        Settings()


@pytest.mark.parametrize("value", ["off", "OFF", "never", "none", ""])
def test_preemption_can_be_turned_off(monkeypatch, value):
    monkeypatch.setenv("HERD_PREEMPT_PRIORITY_GAP", value)
    assert Settings().preempt_priority_gap is None


def test_preempt_grace_has_its_short_variable(monkeypatch):
    monkeypatch.setenv("HERD_PREEMPT_GRACE", "45")
    assert Settings().preempt_grace_s == 45


def test_the_service_builds_rules_weights_and_policies_from_settings(tmp_path):
    settings = Settings(
        workdir=tmp_path / "herd", gpus=4, groups={"nlp": ["alice", "bob"]}, user_quotas={"alice": 3},
        group_quotas={"nlp": 4}, default_user_quota=2, default_runtime_s=1800, backfill_depth=50,
        preempt_priority_gap="off", preempt_min_runtime_s=60, preempt_grace_s=90, usage_half_life_s=3600,
        weight_priority=10, weight_age=20, weight_fair_share=30, weight_size=40, age_unit_s=600, size_unit_gpu_hours=2,
    )
    service = Service(settings, clock=SimClock(0.0), executor=SimExecutor(), probe=UnavailableProbe("no NVML"),
                      run_loop=False)
    try:
        orch = service.orchestrator
        assert orch.rules == Rules(
            groups={"alice": "nlp", "bob": "nlp"}, user_quota={"alice": 3}, group_quota={"nlp": 4},
            default_user_quota=2, default_runtime_s=1800, backfill_depth=50, preempt_priority_gap=None,
            preempt_min_runtime_s=60,
        )
        assert orch.preempt_grace_s == 90 and service.queue.usage_half_life_s == 3600
        want = MultifactorPolicy(weights=Weights(priority=10, age=20, fair_share=30, size=40, age_unit_s=600,
                                                 size_unit_gpu_hours=2), default_runtime_s=1800)
        assert orch.policy == want  # the default policy, as configured
        assert service.core.make_policy("multifactor") == want
        assert service.core.make_policy("sjf").name == "sjf"
    finally:
        service.stop()


@pytest.mark.parametrize("kwargs, message", [
    ({"backfill_plans": 0}, "backfill_plans: Input should be greater than or equal to 1"),
    ({"starve_after_s": 0}, "starve_after_s: Input should be greater than 0"),
    ({"estimate_quantile": 1.5}, "estimate_quantile: Input should be less than or equal to 1"),
    ({"estimate_batch_gap_s": -1}, "estimate_batch_gap_s: Input should be greater than or equal to 0"),
])
def test_bad_planning_and_estimate_settings_name_the_key(kwargs, message):
    assert error_of(**kwargs) == message


def test_planning_and_estimate_settings_reach_the_core():
    from tests.cores import make_core

    core = make_core(backfill_plans=3, starve_after_s=86_400.0, estimate_quantile=0.9, estimate_batch_gap_s=300.0)
    rules = core.orchestrator.rules
    assert (rules.backfill_plans, rules.starve_after_s) == (3, 86_400.0)
    assert core.queue.estimator.quantile == 0.9 and core.queue.history.batch_gap_s == 300.0
    default = make_core()
    assert default.queue.estimator.quantile == 0.7 and default.queue.history.batch_gap_s == 60.0
