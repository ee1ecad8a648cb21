"""Job logs a page at a time: the last MiB begins on a whole line and says it is a part; pages end on whole
UTF-8 characters, so a log read page by page is the log; a follower's request waits on the server."""

from __future__ import annotations

import time

from tools.logs import MAX_LOG_CHUNK, read_log


def test_the_last_mib_of_a_longer_log_begins_on_a_whole_line(tmp_path):
    log = tmp_path / "job.log"
    lines = [f"line {i:06d} " + "x" * 40 + "\n" for i in range(60_000)]  # about 3 MiB
    log.write_text("".join(lines))
    size = log.stat().st_size
    chunk = read_log(log)
    assert chunk.size == size and chunk.next_offset == size and 0 < chunk.offset <= size - MAX_LOG_CHUNK + 60
    assert chunk.text.startswith("line ") and chunk.text.endswith("x\n")
    assert chunk.text == "".join(lines)[chunk.offset:]
    tail = read_log(log, tail=3)
    assert tail.text == "".join(lines[-3:]) and tail.offset == size - len(tail.text)


def test_a_log_read_page_by_page_is_the_log_even_where_characters_span_pages(tmp_path):
    log = tmp_path / "job.log"
    text = "".join(f"{i} héllo wörld ✓ 🎉\n" for i in range(5000))
    log.write_text(text)
    pages, offset = [], 0
    while True:
        chunk = read_log(log, offset=offset, length=1000)
        if not chunk.text:
            break
        assert "\ufffd" not in chunk.text  # no character cut in two
        pages.append(chunk.text)
        offset = chunk.next_offset
    assert "".join(pages) == text and offset == len(text.encode())


def test_a_short_log_is_whole(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("one\ntwo\n")
    chunk = read_log(log)
    assert (chunk.text, chunk.offset, chunk.next_offset, chunk.size) == ("one\ntwo\n", 0, 8, 8)


def test_a_follower_waits_on_the_server_for_a_running_job_only(make_api):
    api = make_api(durations={2: 5})
    waiting = api.submit_ok(gpu_count=4, priority=1)
    t0 = time.monotonic()
    log = api.http.get(f"/jobs/{waiting}/logs", params={"offset": 0, "wait": 30}).json()
    assert log["text"] == "" and log["status"] == "queued" and time.monotonic() - t0 < 5  # not running: at once
    done = api.submit_ok(priority=10)
    api.tick()
    t0 = time.monotonic()
    log = api.http.get(f"/jobs/{done}/logs", params={"offset": 0, "wait": 0.6}).json()
    assert log["status"] == "running" and time.monotonic() - t0 >= 0.5  # running: it waited for output
    api.clock.advance(6)
    api.tick()
    assert api.job(done)["status"] == "completed"
    t0 = time.monotonic()
    assert api.http.get(f"/jobs/{done}/logs", params={"offset": 0, "wait": 30}).json()["status"] == "completed"
    assert time.monotonic() - t0 < 5
    assert api.http.get(f"/jobs/{done}/logs", params={"wait": 61}).status_code == 422
