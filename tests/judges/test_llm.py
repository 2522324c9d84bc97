"""The LLM judge client against a real local HTTP server (127.0.0.1, port 0, a thread)."""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cord import CordError
from cord.judges import LLMJudge, judge, judge_batch, parse_verdict


class FakeChatServer:
    """An OpenAI-compatible /v1/chat/completions stub on 127.0.0.1, port 0 (the OS picks a
    free port and the URL is read back from the bound socket: no free-port race). Replies
    YES when the two answers in the prompt are the same string.

    ``status``: HTTP codes to return, in order, before answering normally. ``hang``: how
    many of the first requests never get an answer (they wait until the server shuts down),
    so a client timeout fires however loaded the machine is. ``gate``: the first ``gate``
    requests each wait until ``gate`` of them are in flight at once (a barrier), which
    proves the client sends them concurrently without timing anything."""

    def __init__(self, status=(), hang=0, gate=0, reply=None, gate_timeout=20.0):
        self.count = 0
        self.bodies = []
        self.headers = []
        self.paths = []
        self.status = list(status)
        self.hang = hang
        self.reply = reply
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.released = threading.Event()
        self.gate = threading.Barrier(gate) if gate else None
        self.gate_n = gate
        self.gate_timeout = gate_timeout
        self.gate_broken = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server.cond:
                    server.count += 1
                    n = server.count
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server.paths.append(self.path)
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                    code = server.status.pop(0) if server.status else 200
                    server.cond.notify_all()
                finished = []

                def finish():  # before a response leaves: a client may send its next request at once
                    if not finished:
                        finished.append(True)
                        with server.lock:
                            server.active -= 1

                try:
                    if n <= server.hang:
                        server.released.wait()  # never answered: the client times out
                        return
                    if server.gate is not None and n <= server.gate_n:
                        try:
                            server.gate.wait(timeout=server.gate_timeout)
                        except threading.BrokenBarrierError:
                            server.gate_broken = True
                    if code != 200:
                        finish()
                        self.send_response(code)
                        self.end_headers()
                        self.wfile.write(b'{"error": "nope"}')
                        return
                    prompt = body["messages"][-1]["content"]
                    m = re.search(r"Answer 1:\n(.*?)\n\nAnswer 2:\n(.*?)\n\n", prompt, re.S)
                    content = server.reply or ("YES" if m and m.group(1) == m.group(2) else "NO")
                    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                    finish()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered
                finally:
                    finish()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for_requests(self, n, limit_s=60):
        """Block until the server has received ``n`` requests (they are handled on their own
        threads, so they may lag the client's view); False if that never happens."""
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, timeout=limit_s)


def _client(url, **kw):
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff", 0.01)
    return LLMJudge(url, "judge-model", **kw)


def test_success_sends_openai_request_with_key_from_named_env_var(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    with FakeChatServer() as srv:
        j = _client(srv.url, api_key_env="MY_JUDGE_KEY")
        assert j.agree("What is 6*7?", "42", "42").agree is True
        assert j.agree("What is 6*7?", "42", "41").agree is False
    assert srv.paths == ["/v1/chat/completions"] * 2
    assert srv.bodies[0]["model"] == "judge-model"
    assert srv.bodies[0]["temperature"] == 0
    assert "What is 6*7?" in srv.bodies[0]["messages"][0]["content"]
    assert srv.headers[0]["Authorization"] == "Bearer sk-test-123"


def test_base_url_forms_all_reach_the_same_endpoint():
    with FakeChatServer() as srv:
        for base in (srv.url, srv.url + "/", srv.url + "/v1", srv.url + "/v1/chat/completions"):
            assert _client(base).agree("", "a", "a").agree is True
    assert srv.paths == ["/v1/chat/completions"] * 4


@pytest.mark.timeout(60)  # a client that ignored its timeout would hang here
def test_a_server_that_never_answers_times_out_on_every_attempt():
    """The real socket timeout: the server accepts the requests and never answers, so each
    attempt times out (whatever the load) and the error says so; counts, not durations."""
    with FakeChatServer(hang=10) as srv:
        j = _client(srv.url, timeout=0.2, max_retries=2)
        with pytest.raises(CordError) as ei:
            j.agree("q", "7", "7")
        assert srv.wait_for_requests(3)
        assert srv.count == 3
    msg = str(ei.value)
    assert "unreachable after 3 attempts" in msg and "timed out after 0.2 s" in msg and "\n" not in msg
    assert (j.stats["requests"], j.stats["retries"]) == (3, 2)


@pytest.mark.timeout(60)
def test_first_request_times_out_then_retry_succeeds():
    """The first request hangs until the client's timeout fires; the retry is answered.
    The timeout is ~1000x what a local answer takes, and nothing is timed."""
    with FakeChatServer(hang=1) as srv:
        j = _client(srv.url, timeout=2.0, max_retries=2)
        v = j.agree("q", "7", "7")
    assert v.agree is True and v.cached is False
    assert srv.count == 2  # the timed-out request and the retry
    assert (j.stats["requests"], j.stats["retries"]) == (2, 1)


def test_http_500_is_retried_but_401_fails_at_once(monkeypatch):
    with FakeChatServer(status=[500, 503]) as srv:
        assert _client(srv.url, max_retries=3).agree("", "1", "1").agree is True
        assert srv.count == 3
    monkeypatch.setenv("K", "bad")
    with FakeChatServer(status=[401]) as srv:
        with pytest.raises(CordError, match="HTTP 401"):
            _client(srv.url, api_key_env="K", max_retries=3).agree("", "1", "1")
        assert srv.count == 1


def test_cache_prevents_second_request_across_instances(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    with FakeChatServer() as srv:
        j = _client(srv.url, cache_path=cache)
        first = j.agree("q", "5", "5")
        second = j.agree("q", "5", "5")
        assert srv.count == 1
        assert (first.cached, second.cached) == (False, True)
        # a new process reading the same cache file does not ask again either
        j2 = _client(srv.url, cache_path=cache)
        assert j2.agree("q", "5", "5").agree is True
        assert srv.count == 1
        # a different model is a different question
        LLMJudge(srv.url, "other-model", cache_path=cache, backoff=0.01).agree("q", "5", "5")
        assert srv.count == 2
    lines = cache.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["reply"] == "YES" for x in lines)


def test_cache_survives_a_truncated_last_line(tmp_path):
    cache = tmp_path / "c.jsonl"
    with FakeChatServer() as srv:
        _client(srv.url, cache_path=cache).agree("q", "1", "1")
        with open(cache, "a") as f:
            f.write('{"key": "abc", "rep')  # a crash mid-write
        j = _client(srv.url, cache_path=cache)
        assert j.agree("q", "1", "1").cached is True
        assert srv.count == 1


def test_server_down_is_one_clear_error_naming_the_url():
    # a bound socket that does not listen refuses connections, and holding it keeps any
    # other process from taking the port meanwhile (closing it first would be a race)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        j = _client(f"http://127.0.0.1:{port}", max_retries=1, timeout=5.0)
        with pytest.raises(CordError) as ei:
            j.agree("q", "1", "1")
    msg = str(ei.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in msg
    assert "unreachable" in msg and "\n" not in msg
    assert j.stats["requests"] == 2


def test_unset_key_variable_sends_no_key_and_a_refusal_names_it(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with FakeChatServer() as srv:  # a local server that needs no key
        assert _client(srv.url, api_key_env="NO_SUCH_JUDGE_KEY").agree("", "1", "1").agree is True
        assert "Authorization" not in srv.headers[0]
    with FakeChatServer(status=[401]) as srv:
        with pytest.raises(CordError, match="NO_SUCH_JUDGE_KEY with the API key is not set"):
            _client(srv.url, api_key_env="NO_SUCH_JUDGE_KEY").agree("", "1", "1")


def test_from_config(tmp_path):
    from types import SimpleNamespace

    cfg = SimpleNamespace(kind="llm", base_url=None, model=None, api_key_env="K", timeout=3.0, max_retries=1,
                          concurrency=2, cache_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(CordError, match="base_url and judge.model"):
        LLMJudge.from_config(cfg)
    with FakeChatServer() as srv:
        cfg.base_url, cfg.model = srv.url, "m"
        j = LLMJudge.from_config(cfg)
        assert (j.timeout, j.max_retries, j.concurrency) == (3.0, 1, 2)
        j.agree("", "1", "1")
    assert (tmp_path / "llm_judge.jsonl").is_file()


def test_batch_runs_concurrently_within_the_limit_and_dedupes():
    # the first 3 requests are held until 3 are in flight at once: only a client that
    # really sends 3 concurrently gets past the gate (one at a time would break it)
    with FakeChatServer(gate=3) as srv:
        j = _client(srv.url, concurrency=3, timeout=60.0)  # longer than the gate's 20 s wait
        cands = [str(i) for i in range(6)] + ["0"]
        refs = [str(i) for i in range(6)] + ["0"]
        out = j.agree_batch([""] * 7, cands, refs)
    assert [v.agree for v in out] == [True] * 7
    assert [v.cached for v in out] == [False] * 6 + [True]
    assert srv.count == 6  # the repeated pair was asked once
    assert not srv.gate_broken and j.stats["retries"] == 0
    assert srv.max_active == 3  # reached (the gate) and never exceeded (the limit)


def test_batch_with_concurrency_one_sends_one_at_a_time():
    # a gate of 2 that a one-at-a-time client can never pass: its first request waits the
    # gate's second out and breaks it; a client sending two at once would pass it
    with FakeChatServer(gate=2, gate_timeout=1.0) as srv:
        out = _client(srv.url, concurrency=1).agree_batch([""] * 4, list("abcd"), list("abce"))
    assert [v.agree for v in out] == [True, True, True, False]
    assert (srv.count, srv.max_active) == (4, 1)
    assert srv.gate_broken


def test_reward_api_llm_kind():
    with FakeChatServer() as srv:
        client = _client(srv.url)
        r = judge("42", "42", "llm", client=client, question="6*7?")
        assert (r.score, r.kind) == (1, "llm")
        res = judge_batch(["1", "2"], ["1", "3"], "llm", client=client)
        assert [x.score for x in res] == [1, 0]
    with FakeChatServer(reply="Perhaps they agree") as srv:
        r = judge("1", "1", "llm", client=_client(srv.url))
        assert r.score == 0 and "verdict" in r.note
    with pytest.raises(CordError, match="client"):
        judge("1", "1", "llm")


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("YES", True),
        ("NO", False),
        ("yes", True),
        ("No.", False),
        ("**YES**", True),
        ('"NO"', False),
        ("Yes, both answers give 42.", True),
        ("NO - the numbers differ", False),
        ("  YES\n", True),
        ("Yesterday", None),
        ("Not sure", None),
        ("Nope", None),
        ("Yes. Actually no.", None),
        ("The answers agree: YES", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict_is_strict(reply, expected):
    assert parse_verdict(reply) is expected
