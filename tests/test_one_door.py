"""One door: REST, the CLI and chat refuse the same bad submission with the same sentence, because
each builds the same ``JobRequest`` and calls the same typed tool."""

from __future__ import annotations

import pytest

from agent import cli
from agent.cli import client as cli_client
from tests.scripted_model import ScriptedModel, call, say

BAD_SUBMISSIONS = [
    pytest.param({"gpu_count": 5}, ["--gpus", "5"], "asks for 5 GPUs but the largest node has 4", id="too-large"),
    pytest.param({"priority": 11}, ["--priority", "11"], "priority: Input should be less than or equal to 10",
                 id="priority-range"),
    pytest.param({"cwd": "/no/such/dir"}, ["--cwd", "/no/such/dir"],
                 "cwd /no/such/dir is not an existing directory on this server", id="bad-cwd"),
    pytest.param({"after": [99]}, ["--after", "99"], "runs after job 99, which does not exist", id="unknown-after"),
    pytest.param({"begin_at": "soon"}, ["--begin", "soon"],
                 "begin_at: 'soon' is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now", id="bad-begin"),
]


class _Through:
    """The CLI's HTTP client, answered in-process by the app's test client (which must stay open)."""

    def __init__(self, http) -> None:
        self.http = http

    def request(self, method, path, **kwargs):
        return self.http.request(method, path, **kwargs)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("body, flags, sentence", BAD_SUBMISSIONS)
def test_every_door_refuses_a_bad_submission_with_the_same_sentence(make_api, monkeypatch, capsys, body, flags, sentence):
    model = ScriptedModel(call("submit_job", **{"command": "true", "gpu_count": 1, **body}), say("I could not queue it."))
    api = make_api(model=model)

    rest = api.submit(**body)
    assert (rest.status_code, rest.json()["detail"]) == (422, sentence)

    monkeypatch.setattr(cli_client.httpx, "Client", lambda **kwargs: _Through(api.http))
    assert cli.main(["submit", "--user", "alice", *flags, "--", "true"]) == 1
    assert capsys.readouterr().err.strip() in (f"herd: {sentence}", f"herd: {sentence} (HTTP 422)")

    chat = api.http.post("/chat", json={"message": "queue it", "user": "alice"})
    assert chat.status_code == 200, chat.text
    (action,) = chat.json()["actions"]
    assert (action["tool"], action["verdict"], action["detail"]) == ("submit_job", "rejected", sentence)

    assert api.all_jobs() == []  # nothing was queued by any door
