"""Who is asking: a second, real Unix user over the server's socket, tokens over TCP, admins, the web
rules, chat bound to its caller, and the personal mode's refusal.

The server under test runs as root in shared mode (as on a lab's head node). The second user is made
for this module (``useradd``) and removed at its end; it talks to the socket with Debian's curl, since
it cannot execute anything under /root (the venv). Its work directory lies under a directory every
user may traverse, as a lab's would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from agent.identity import Identities, Mode
from agent.settings import Settings
from tests.helpers import request_over_socket
from tests.herd_server import HerdServer
from tests.scripted_model import ScriptedModel, call, say
from tools.door.context import PermissionDenied

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("curl"),
                                reason="needs root (to create a second Unix user), useradd and curl")


@pytest.fixture(scope="module")
def other_user():
    name = f"herdt{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture(scope="module")
def server(other_user):
    root = Path(tempfile.mkdtemp(prefix="herd-identity-", dir="/tmp"))
    root.chmod(0o755)  # every user reaches the socket inside, as in a lab's /srv/gpuherd
    srv = HerdServer(root / "herd", "--gpus", "2", single_user=False).start()
    try:
        yield srv
    finally:
        srv.close(signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


def over_socket(server: HerdServer, method: str, path: str, body: dict | None = None, *, as_user: str | None = None):
    """(status, JSON) of a request over the server's Unix socket, made by ``as_user`` (root if None)."""
    return request_over_socket(server.workdir / "herd.sock", method, path, body, as_user=as_user)


def test_the_socket_says_who_is_asking_and_owners_own_their_jobs(server, other_user):
    status, mine = over_socket(server, "POST", "/queue/submit", {"command": "sleep 60", "gpu_count": 1, "begin_at": "+1h"},
                               as_user=other_user)
    assert status == 201, mine
    assert server.job(mine["job_id"])["user"] == other_user  # the kernel's word, not a body's

    status, roots = over_socket(server, "POST", "/queue/submit", {"command": "sleep 60", "gpu_count": 1})
    assert status == 201 and server.job(roots["job_id"])["user"] == "root"

    status, refused = over_socket(server, "DELETE", f"/queue/{roots['job_id']}", as_user=other_user)
    assert status == 403 and refused["detail"] == (
        f"job {roots['job_id']} belongs to root; {other_user} may act only on their own jobs")
    status, _ = over_socket(server, "PATCH", f"/queue/{mine['job_id']}/priority", {"priority": 8}, as_user=other_user)
    assert status == 200

    status, named = over_socket(server, "POST", "/queue/submit", {"command": "true", "gpu_count": 1, "user": "root"},
                                as_user=other_user)
    assert status == 403 and named["detail"] == f"{other_user} may not act as root; only an administrator may"

    # Another user's command, environment and log are theirs and the admins'.
    status, seen = over_socket(server, "GET", f"/jobs/{roots['job_id']}", as_user=other_user)
    assert status == 200 and seen["command"] == "" and seen["env"] == {}
    status, log = over_socket(server, "GET", f"/jobs/{roots['job_id']}/logs", as_user=other_user)
    assert status == 403
    status, seen = over_socket(server, "GET", f"/jobs/{mine['job_id']}")
    assert seen["command"] == "sleep 60"  # root is an admin

    for job_id in (mine["job_id"], roots["job_id"]):
        assert over_socket(server, "DELETE", f"/queue/{job_id}")[0] == 200  # an admin may cancel anyone's


def test_admin_operations_are_refused_to_users(server, other_user):
    for method, path, body in [
        ("POST", "/orchestrator/stop", None),
        ("PUT", "/orchestrator/policy", {"policy": "fcfs"}),
        ("POST", "/gpu/initialize", {"nodes": [{"name": "local", "gpus": 64}]}),
        ("POST", "/reservations", {"user": other_user, "gpu_count": 2, "end": "+3650d"}),
    ]:
        status, refused = over_socket(server, method, path, body, as_user=other_user)
        assert status == 403 and "is for administrators" in refused["detail"], (path, refused)
    assert server.http.get("/orchestrator/status").json()["state"] == "running"
    assert server.http.get("/gpu/status").json()["total_gpus"] == 2


def test_a_job_owner_must_be_a_user_of_the_node(server):
    status, refused = over_socket(server, "POST", "/queue/submit",
                                  {"command": "true", "gpu_count": 1, "user": "nobody-such-user"})
    assert status == 422 and refused["detail"] == (
        "user nobody-such-user does not exist on this server, and jobs run as their owner's Unix user")


def test_tokens_over_tcp(server, other_user):
    body = {"command": "true", "gpu_count": 1}
    anonymous = server.http.post("/queue/submit", json=body)
    assert anonymous.status_code == 401 and "herd token" in anonymous.json()["detail"]
    assert server.http.get("/queue").status_code == 200  # the open views stay open, like squeue

    status, minted = over_socket(server, "POST", "/tokens", {"note": "laptop"}, as_user=other_user)
    assert status == 201 and minted["info"]["user"] == other_user
    token = {"authorization": f"Bearer {minted['token']}"}
    submitted = server.http.post("/queue/submit", json=body, headers=token)
    assert submitted.status_code == 201 and server.job(submitted.json()["job_id"])["user"] == other_user
    # A token cannot mint another (only the socket knows who you are), nor do an admin's work.
    assert server.http.post("/tokens", json={}, headers=token).status_code == 403
    assert server.http.post("/orchestrator/stop", headers=token).status_code == 403

    status, listed = over_socket(server, "GET", "/tokens", as_user=other_user)
    assert [t["id"] for t in listed] == [minted["info"]["id"]] and "token" not in listed[0]
    status, _ = over_socket(server, "DELETE", f"/tokens/{minted['info']['id']}", as_user=other_user)
    assert status == 200
    revoked = server.http.post("/queue/submit", json=body, headers=token)
    assert revoked.status_code == 401 and "unknown or revoked" in revoked.json()["detail"]
    assert server.http.post("/queue/submit", json=body, headers={"authorization": "Bearer herd_made-up"}).status_code == 401


def test_web_pages_cannot_act_even_on_loopback(server):
    status, job = over_socket(server, "POST", "/queue/submit", {"command": "sleep 60", "gpu_count": 1})
    job_id = job["job_id"]
    form = server.http.post(f"/jobs/{job_id}/complete", content="",
                            headers={"origin": "http://evil.example", "content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 403 and "http://evil.example" in form.json()["detail"]
    plain = server.http.post("/orchestrator/stop", content="{}", headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    rebound = server.http.get("/queue", headers={"host": "attacker.example"})
    assert rebound.status_code == 400 and "attacker.example" in rebound.json()["detail"]
    assert server.job(job_id)["status"] in ("queued", "scheduled", "running")  # nothing happened to it
    assert server.http.get("/orchestrator/status").json()["state"] == "running"
    over_socket(server, "DELETE", f"/queue/{job_id}")


def test_chat_acts_only_for_its_caller(make_api):
    model = ScriptedModel(call("cancel_job", job_id=1), say("I cannot cancel that one."))
    api = make_api(model=model, single_user=False)
    tokens = api.service.core.tokens
    _, alice = tokens.mint("daemon", now=0.0)
    _, bob = tokens.mint("nobody", now=0.0)
    submitted = api.http.post("/queue/submit", json={"command": "true", "gpu_count": 1},
                              headers={"authorization": f"Bearer {alice}"})
    assert submitted.status_code == 201, submitted.text

    as_alice = api.http.post("/chat", json={"message": "cancel job 1", "user": "daemon"},
                             headers={"authorization": f"Bearer {bob}"})
    assert as_alice.status_code == 403 and as_alice.json()["detail"] == "nobody may not act as daemon; only an administrator may"
    reply = api.http.post("/chat", json={"message": "cancel job 1"}, headers={"authorization": f"Bearer {bob}"})
    assert reply.status_code == 200, reply.text
    (action,) = reply.json()["actions"]
    assert action["verdict"] == "rejected" and "belongs to daemon" in action["detail"]
    assert api.job(1)["status"] == "queued"
    assert api.http.post("/chat", json={"message": "hi"}).status_code == 401  # nobody


def test_a_personal_server_lets_only_its_own_user_act(tmp_path):
    identities = Identities.for_server(Settings.plain(workdir=tmp_path), tokens=None, euid=os.getuid() or 12345)
    assert identities.mode == Mode.PERSONAL
    other = identities.actor(peer_uid=65534, authorization=None, loopback=False)  # nobody
    assert other.refused is not None and "personal mode" in other.refused
    own = identities.actor(peer_uid=os.getuid() or 12345, authorization=None, loopback=False)
    assert own.admin and own.refused is None
    from tools.door.context import ToolContext

    with pytest.raises(PermissionDenied, match="personal mode"):
        ToolContext(core=None, actor=other).owner(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("user, says", [("ana", "only ana (and root) may act; jobs run as ana"),
                                         ("root", "only root may act; jobs run as root")])
def test_the_mode_is_said_in_one_plain_line(user, says):
    identities = Identities(mode=Mode.SINGLE_USER, server_user=user, admins=frozenset({"root"}), tokens=None)
    assert identities.describe() == f"single-user: {says}; loopback requests without a token act as {user}"


def test_a_users_job_runs_as_that_user_and_its_log_is_served_only_as_written(server, other_user):
    status, job = over_socket(server, "POST", "/queue/submit", {"command": "id -u; id -un; echo HOME=$HOME", "gpu_count": 1},
                              as_user=other_user)
    assert status == 201, job
    server.wait_for(job["job_id"], "completed")
    status, log = over_socket(server, "GET", f"/jobs/{job['job_id']}/logs", as_user=other_user)
    uid = subprocess.run(["id", "-u", other_user], capture_output=True, text=True, check=True).stdout.strip()
    assert status == 200 and log["text"].split()[:2] == [uid, other_user], log

    # A log replaced by a link to a root-only file is refused, never followed.
    path = Path(log["path"])
    path.unlink()
    path.symlink_to("/etc/shadow")
    status, refused = over_socket(server, "GET", f"/jobs/{job['job_id']}/logs", as_user=other_user)
    assert status == 409 and "root:" not in json.dumps(refused)


def test_the_database_is_the_servers_alone(server):
    # It holds jobs' environments and the tokens' hashes.
    assert (server.workdir / "herd.db").stat().st_mode & 0o777 == 0o600
