"""The teacher client against a real HTTP server speaking the OpenAI wire format, driven by the real client."""

import asyncio
import json
import socket
import threading
import time

import pytest
from PIL import Image

from drim_data.db import connect
from drim_data.errors import RunFault
from drim_data.recipe import EndpointConfig
from drim_data.teacher import store
from drim_data.teacher.client import Deferred, Teacher, TeacherFailed
from drim_data.teacher.together import together
from tests.openai_server import FakeOpenAI, Reply, completion

KEY_ENV = "DRIM_TEST_TEACHER_KEY"
SECRET = "sk-test-never-stored-0123456789"


@pytest.fixture
def con(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    con = connect(tmp_path / "t.duckdb")
    yield con
    con.close()


def endpoint(server, **kw) -> EndpointConfig:
    defaults = dict(
        base_url=server.base_url,
        model="teacher-model",
        api_key_env=KEY_ENV,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        timeout_s=0.5,
        max_attempts=4,
    )
    return EndpointConfig(**{**defaults, **kw})


def messages(text: str) -> list[dict]:
    image = Image.new("RGB", (64, 48), "red")
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image", "image": image}]}]


def asking(teacher, text="hello", **kw):
    return teacher.ask(messages(text), purpose="test", stage="generate", prompt_version="v1", **kw)


def ask(teacher, text="hello", **kw):
    """One request as a stage of its own: its event loop ends with the teacher closed."""

    async def one():
        try:
            return await asking(teacher, text, **kw)
        finally:
            await teacher.close()

    return asyncio.run(one())


def stage(teacher, *requests):
    """Run requests as one stage does: on their own event loop, closing the teacher at the end."""

    async def run_all():
        try:
            return await together(*requests)
        finally:
            await teacher.close()

    return asyncio.run(run_all())


def scripted(*replies):
    """A responder that plays the given replies in order, then keeps answering 'ok'."""
    queue = list(replies)
    return lambda body: queue.pop(0) if queue else "ok"


def test_answers_are_cached_by_content_and_never_resent(con):
    with FakeOpenAI(lambda body: "the answer") as server:
        teacher = Teacher(endpoint(server), con)
        first = ask(teacher)
        second = ask(Teacher(endpoint(server), con))  # a new process would see the same DuckDB
        other = ask(teacher, text="another question")
    assert first.content == second.content == "the answer"
    assert not first.cached and second.cached and not other.cached
    assert len(server.successful()) == 2
    sent = server.successful()[0].body
    image_part = sent["messages"][0]["content"][1]
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    row = con.execute("SELECT request, response, prompt_tokens, status FROM teacher_calls").fetchall()
    assert len(row) == 2 and row[0][2] == 100 and row[0][3] == "ok"
    stored = json.dumps(con.execute("SELECT * FROM teacher_calls").fetchall(), default=str)
    assert SECRET not in stored and "base64" not in stored  # keys and image bytes never reach the database


def test_images_are_downscaled_to_the_budget(con):
    with FakeOpenAI(lambda body: "ok") as server:
        ask(Teacher(endpoint(server, image_max_pixels=32 * 24), con))
    import base64
    import io

    url = server.successful()[0].body["messages"][0]["content"][1]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.width * image.height <= 32 * 24 and image.size == (32, 24)


def test_429_honours_retry_after(con):
    with FakeOpenAI(scripted(Reply(429, headers={"Retry-After": "0.3"}), "fine")) as server:
        teacher = Teacher(endpoint(server), con)
        assert ask(teacher).content == "fine"
    assert teacher.waits == [0.3]
    assert [r.status for r in server.log] == [429, 200]


@pytest.mark.parametrize(
    "fault",
    [
        Reply(500),
        Reply(503),
        Reply(delay=1.0),
        Reply(drop=True),
        Reply(body='{"choices": [{"mess'),
        Reply(body={"id": "x", "choices": []}),
    ],
    ids=["500", "503", "timeout", "dropped", "truncated-json", "no-choices"],
)
def test_transient_faults_are_retried_with_backoff(con, fault):
    with FakeOpenAI(scripted(fault, fault, "recovered")) as server:
        teacher = Teacher(endpoint(server), con)
        assert ask(teacher).content == "recovered"
    assert len(teacher.waits) == 2 and all(0 <= w <= 0.05 for w in teacher.waits)


def test_client_errors_fail_at_once_and_are_recorded(con):
    with FakeOpenAI(lambda body: Reply(400)) as server:
        teacher = Teacher(endpoint(server), con)
        with pytest.raises(TeacherFailed) as err:
            ask(teacher)
    assert err.value.reason == "http_400" and len(server.log) == 1
    assert con.execute("SELECT status, attempts FROM teacher_calls").fetchall() == [("failed", 1)]


def test_attempts_are_capped_and_a_later_run_can_succeed(con):
    with FakeOpenAI(lambda body: Reply(500)) as server:
        with pytest.raises(TeacherFailed, match="http_500"):
            ask(Teacher(endpoint(server, max_attempts=3), con))
    assert len(server.log) == 3
    with FakeOpenAI(lambda body: "later") as server:
        assert ask(Teacher(endpoint(server), con)).content == "later"  # failures are not cached
    assert con.execute("SELECT status FROM teacher_calls").fetchall() == [("ok",)]


def test_refusals_and_json_schema_requests(con):
    refusal = completion(None, refusal="I can't help with that.")
    with FakeOpenAI(lambda body: refusal) as server:
        answer = ask(Teacher(endpoint(server), con), schema={"name": "x", "schema": {"type": "object"}})
    assert answer.refusal == "I can't help with that." and answer.content is None
    assert server.successful()[0].body["response_format"]["type"] == "json_schema"
    with FakeOpenAI(lambda body: "{}") as server:
        ask(Teacher(endpoint(server, json_schema=False), con), schema={"name": "x", "schema": {}}, variant=1)
    assert "response_format" not in server.successful()[0].body


def test_independent_samples_are_distinct_requests(con):
    with FakeOpenAI(lambda body: f"sample {body.get('seed')}") as server:
        teacher = Teacher(endpoint(server), con)
        answers = [ask(teacher, variant=v).content for v in (1, 2, 3)]
    assert answers == ["sample 1", "sample 2", "sample 3"]


def test_missing_key_names_the_variable(con, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with FakeOpenAI(lambda body: "x") as server, pytest.raises(RunFault, match=KEY_ENV):
        Teacher(endpoint(server), con)
    assert not server.log


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://example.com/v1", "http:///v1", "api.openai.com"])
def test_malformed_base_url_is_a_run_fault(con, url):
    with pytest.raises(RunFault, match="base_url"):
        Teacher(EndpointConfig(base_url=url, model="m", api_key_env=KEY_ENV), con)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_stop_the_run_naming_endpoint_model_and_variable(con, status):
    with FakeOpenAI(lambda body: Reply(status)) as server:
        with pytest.raises(RunFault) as err:
            ask(Teacher(endpoint(server), con))
    assert server.base_url in str(err.value) and "teacher-model" in str(err.value) and KEY_ENV in str(err.value)
    assert len(server.log) == 1  # no retry can fix a refused key
    assert con.execute("SELECT count(*) FROM teacher_calls").fetchone() == (0,)


def test_unknown_model_or_path_stops_the_run(con):
    with FakeOpenAI(lambda body: Reply(404)) as server:
        with pytest.raises(RunFault, match="404.*model name"):
            ask(Teacher(endpoint(server), con))
    assert len(server.log) == 1


def test_unreachable_endpoint_stops_the_run_after_the_retries(con):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    teacher = Teacher(EndpointConfig(base_url=url, model="m", api_key_env=KEY_ENV, backoff_base_s=0.01), con)
    with pytest.raises(RunFault, match=f"{url}.*cannot be reached"):
        ask(teacher)
    assert teacher.sent == teacher.cfg.max_attempts and len(teacher.waits) == teacher.cfg.max_attempts - 1


def test_truncated_replies_fail_and_are_never_served_from_the_cache(con):
    cut = completion('{"questions": [{"type": "attri')
    cut["choices"][0]["finish_reason"] = "length"
    with FakeOpenAI(scripted(cut)) as server:
        with pytest.raises(TeacherFailed) as err:
            ask(Teacher(endpoint(server), con))
        assert err.value.reason == "truncated" and len(server.log) == 1  # the same request would be cut again
        assert con.execute("SELECT status, error LIKE 'truncated:%' FROM teacher_calls").fetchall() == [
            ("failed", True)
        ]
        again = ask(Teacher(endpoint(server), con))  # the next run asks again
    assert again.content == "ok" and not again.cached and len(server.log) == 2


def test_a_key_echoed_by_the_server_is_never_stored(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    path = tmp_path / "echo.duckdb"
    con = connect(path)
    with FakeOpenAI(lambda body: Reply(500, echo_headers=True)) as server:
        with pytest.raises(TeacherFailed) as err:
            ask(Teacher(endpoint(server, max_attempts=2), con))
    con.close()
    assert "Authorization: [redacted]" in err.value.detail and SECRET not in str(err.value)
    assert SECRET.encode() not in path.read_bytes()
    con = connect(path)
    assert con.execute("SELECT status, error LIKE '%[redacted]%' FROM teacher_calls").fetchall() == [("failed", True)]
    con.close()


def test_identical_requests_in_flight_are_sent_once(con):
    with FakeOpenAI(lambda body: Reply(body=completion("shared"), delay=0.3)) as server:
        teacher = Teacher(endpoint(server, timeout_s=5), con)
        answers = stage(teacher, asking(teacher), asking(teacher), asking(teacher))
    assert [a.content for a in answers] == ["shared"] * 3
    assert len(server.log) == 1 and teacher.sent == 1


def test_a_failed_request_cancels_its_siblings_and_their_received_replies_are_stored(con, monkeypatch):
    """A stage that ends right after an item failed leaves no reply unstored and nothing queued for the next."""
    monkeypatch.setattr(store, "FLUSH_DELAY_S", 60.0)  # only the stage's end can write in time
    answered = threading.Event()

    def replies(body):
        text = body["messages"][0]["content"][0]["text"]
        if text == "bad":
            answered.wait(5)  # the siblings' replies are out first
            return Reply(400, delay=0.2)
        if text == "b":
            answered.set()
        return f"reply to {text}"

    with FakeOpenAI(replies) as server:
        teacher = Teacher(endpoint(server), con)
        with pytest.raises(TeacherFailed, match="http_400"):
            stage(teacher, asking(teacher, "a"), asking(teacher, "b"), asking(teacher, "bad"))
        stored = con.execute("SELECT purpose, status FROM teacher_calls ORDER BY status").fetchall()
        assert stored == [("test", "failed"), ("test", "ok"), ("test", "ok")]
        monkeypatch.setattr(store, "FLUSH_DELAY_S", 0.01)
        later = stage(teacher, asking(teacher, "a"), asking(teacher, "c"))  # the next stage is not held up
    assert [a.content for a in later] == ["reply to a", "reply to c"] and later[0].cached
    assert len(server.successful()) == 3


def test_a_cancelled_stage_still_stores_what_it_received(con, monkeypatch):
    monkeypatch.setattr(store, "FLUSH_DELAY_S", 60.0)
    with FakeOpenAI(lambda body: "paid for") as server:
        teacher = Teacher(endpoint(server), con)

        async def interrupted():
            item = asyncio.create_task(asking(teacher))
            key = teacher.build(messages("hello"), prompt_version="v1")[0]
            while teacher.store.response(key) is None:
                await asyncio.sleep(0.01)  # received, and waiting for its group write
            item.cancel()
            await asyncio.gather(item, return_exceptions=True)
            await teacher.close()

        asyncio.run(interrupted())
        assert con.execute("SELECT status FROM teacher_calls").fetchall() == [("ok",)]
        assert ask(Teacher(endpoint(server), con)).cached and len(server.log) == 1


def test_many_requests_run_concurrently_within_the_limit(con):
    lock, now, peak = threading.Lock(), [0], [0]

    def slow(body):  # the server answers each request in its own thread: count how many are in progress
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.2)
        with lock:
            now[0] -= 1
        return "ok"

    with FakeOpenAI(slow) as server:
        teacher = Teacher(endpoint(server, max_in_flight=8), con)

        async def run_all():
            messages = [[{"role": "user", "content": f"q{i}"}] for i in range(16)]
            return await asyncio.gather(
                *(teacher.ask(m, purpose="t", stage="s", prompt_version="v") for m in messages)
            )

        answers = asyncio.run(run_all())
    assert len(answers) == 16 and len(server.successful()) == 16
    assert peak[0] == 8  # all 8 slots used at once, and never more


def test_batch_mode_submits_polls_collects_and_resumes(con):
    with FakeOpenAI(lambda body: "from batch") as server:
        server.batch_polls_until_done = 2
        teacher = Teacher(endpoint(server, batch=True, batch_poll_s=0.01), con)
        with pytest.raises(Deferred):
            ask(teacher, text="one")
        with pytest.raises(Deferred):
            ask(teacher, text="two")
        assert asyncio.run(teacher.flush_batch("generate")) == 2
        assert ask(teacher, text="one").content == "from batch"  # now answered from the cache
    assert [r.path for r in server.log if r.path.startswith("/v1/b") or r.path == "/v1/files"] == [
        "/v1/files",
        "/v1/batches",
        "/v1/batches/batch-2",
        "/v1/batches/batch-2",
    ]
    assert not server.successful()  # nothing went through chat completions
    assert con.execute("SELECT count(*) FROM teacher_calls WHERE via_batch").fetchone() == (2,)
    assert con.execute("SELECT status FROM teacher_batches").fetchall() == [("completed",)]


def closed_port_url() -> str:
    with socket.socket() as probe:  # bound and released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


def test_replicas_share_the_load_carry_on_when_one_dies_and_share_one_cache(con):
    answered = threading.Event()

    def slow(body):
        time.sleep(0.05)
        return "ok"

    with FakeOpenAI(slow) as first, FakeOpenAI(slow) as second:
        teacher = Teacher(endpoint(first, base_url=[first.base_url, second.base_url], max_in_flight=8), con)

        async def kill_second_after_some_answers():
            while len(second.successful()) < 5:
                await asyncio.sleep(0.01)
            second.kill()  # mid-run: its connections are reset, its port refuses new ones
            answered.set()

        async def run_all():
            killer = asyncio.create_task(kill_second_after_some_answers())
            replies = await asyncio.gather(*(asking(teacher, f"q{i}") for i in range(60)))
            await killer
            return replies

        replies = stage(teacher, run_all())[0]
        on_second = len(second.successful())
        assert answered.is_set() and all(r.content == "ok" for r in replies)  # no request failed
        assert len(first.successful()) + on_second == 60 and 5 <= on_second < 30
        assert teacher.replicas[1].down_until > time.monotonic()  # set aside for its cool-down
        assert len(teacher.waits) >= 1  # the requests it dropped were retried on the first
        # the answers are keyed by content, not by replica: a lone first server replays them all from the cache
        again = Teacher(endpoint(first), con)
        assert all(r.cached for r in stage(again, *(asking(again, f"q{i}") for i in range(60))))
        assert again.sent == 0
    assert con.execute("SELECT count(*), count(DISTINCT call_key) FROM teacher_calls").fetchone() == (60, 60)


def test_the_least_loaded_replica_gets_each_request(con):
    lock, now, peak = threading.Lock(), {}, {}

    def counting(name):
        def slow(body):  # how many requests each server is answering at once
            with lock:
                now[name] = now.get(name, 0) + 1
                peak[name] = max(peak.get(name, 0), now[name])
            time.sleep(0.1)
            with lock:
                now[name] -= 1
            return "ok"

        return slow

    with FakeOpenAI(counting("first")) as first, FakeOpenAI(counting("second")) as second:
        teacher = Teacher(endpoint(first, base_url=[first.base_url, second.base_url], max_in_flight=8), con)
        stage(teacher, *(asking(teacher, f"q{i}") for i in range(24)))
    assert peak == {"first": 4, "second": 4}  # the 8 in flight, always split evenly
    assert len(first.successful()) + len(second.successful()) == 24 and min(r.sent for r in teacher.replicas) >= 6


def test_when_every_replica_is_down_the_run_stops_naming_them(con):
    urls = [closed_port_url(), closed_port_url()]
    teacher = Teacher(EndpointConfig(base_url=urls, model="m", api_key_env=KEY_ENV, backoff_base_s=0.01), con)
    with pytest.raises(RunFault, match="none of the 2 replicas") as err:
        ask(teacher)
    assert all(url in str(err.value) for url in urls)
    assert teacher.sent == teacher.cfg.max_attempts  # the other replica, once the first was set aside


@pytest.mark.parametrize("urls", [[], ["http://a.example/v1", "a.example/v1"]])
def test_a_malformed_replica_list_is_a_run_fault(con, urls):
    with pytest.raises(RunFault, match="base_url"):
        Teacher(EndpointConfig(base_url=urls, model="m", api_key_env=KEY_ENV), con)


def test_the_rate_limit_holds_in_every_window_not_only_on_average():
    """A minute's budget may go at once, then nothing more until the window has moved on: never 2x in a window,
    as a bucket refilled while it spends would allow."""
    from drim_data.teacher.limits import RateLimiter

    limiter, times = RateLimiter(5, window_s=0.5), []

    async def take() -> None:
        await limiter.acquire(1)
        times.append(time.monotonic())

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(take() for _ in range(12))), 5)

    asyncio.run(main())
    assert len(times) == 12
    for t in times:  # every window of 0.5 s holds at most the budget
        assert sum(t <= u < t + 0.5 for u in times) <= 5
    assert times[-1] - times[0] >= 1.0  # 12 requests at 5 per 0.5 s need three windows
