"""GPU quotas as people read them: per user and per group, the quota, the GPUs held and the GPUs asked for."""

from __future__ import annotations

from pydantic import BaseModel

from policies.snapshot import Snapshot


class UserQuota(BaseModel):
    user: str
    group: str | None
    quota: int | None  # None: no limit
    in_use: int
    waiting_gpus: int


class GroupQuota(BaseModel):
    group: str
    members: list[str]
    quota: int | None  # None: no limit
    in_use: int
    waiting_gpus: int


class Quotas(BaseModel):
    default_user_quota: int | None  # the quota of a user without one of their own; None: no limit
    users: list[UserQuota]  # every user with a quota of their own, GPUs in use or waiting jobs
    groups: list[GroupQuota]


def quotas_of(snapshot: Snapshot) -> Quotas:
    rules = snapshot.rules
    users_in_use, groups_in_use = snapshot.in_use
    waiting: dict[str, int] = {}
    for job in snapshot.queued:
        waiting[job.user] = waiting.get(job.user, 0) + job.gpu_count
    group_waiting: dict[str, int] = {}
    for user, gpus in waiting.items():
        group = rules.group_of(user)
        if group is not None:
            group_waiting[group] = group_waiting.get(group, 0) + gpus
    members: dict[str, list[str]] = {}
    for user, group in rules.groups.items():
        members.setdefault(group, []).append(user)
    users = sorted(set(rules.user_quota) | set(users_in_use) | set(waiting))
    groups = sorted(set(members) | set(rules.group_quota) | set(groups_in_use))
    return Quotas(
        default_user_quota=rules.default_user_quota,
        users=[UserQuota(user=u, group=rules.group_of(u), quota=rules.quota_of_user(u), in_use=users_in_use.get(u, 0),
                         waiting_gpus=waiting.get(u, 0)) for u in users],
        groups=[GroupQuota(group=g, members=sorted(members.get(g, [])), quota=rules.group_quota.get(g),
                           in_use=groups_in_use.get(g, 0), waiting_gpus=group_waiting.get(g, 0)) for g in groups],
    )
