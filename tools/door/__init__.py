"""The one door: every operation a front door may perform, as a typed tool function.

REST, the CLI (through REST), chat's LLM agent and the eval harness call these functions with a
``ToolContext``: the core and the acting ``Actor``. The front door that received the request binds the
actor (never a request body or a model), so ownership and admin checks happen here, once, for all of
them. Each function takes one pydantic argument model; the LLM's JSON schemas are generated from the
same models (``agent/model_tools.py``).

- ``context``: the ``Core`` every tool works on, the ``Actor``, the ``ToolContext`` and the refusals.
- ``jobs``: submit, read, list, cancel, reprioritise, complete, explain; the queue in order.
- ``cluster``: GPUs and the inventory; the scheduler's state, start/stop and policy.
- ``rules``: quotas and reservations.
- ``proposals``: the scheduling agent's ``propose_allocation`` on one snapshot.
"""
