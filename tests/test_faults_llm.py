"""LLM endpoint faults during real turns: a `Session` on the tiny random FLUX pipeline talks to a scripted
OpenAI-compatible server that runs in its own process, so it can hang, be slow, answer 500/429, or be SIGKILLed
in the middle of a request. Timeouts and retries are configured as a user would (`DITFLOW_LLM_TIMEOUT`,
`DITFLOW_LLM_RETRIES`).

What must hold: every wait is bounded by the configured timeout; 5xx/429 are retried a bounded number of times
with growing backoff; then the turn is answered by the rules (the configured floor) and says so in its notes; and a
session whose endpoint died mid-turn is intact when reopened.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ditflow.api import Session

pytest.importorskip("ditflow.agents.graph")

TIMEOUT, RETRIES, BACKOFF = 2.0, 1, 0.5  # BACKOFF: the openai backend's default first backoff
SLACK = 4.0  # seconds of scheduling noise allowed on a busy 2-core machine

SERVER = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, mode, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ANSWERS = {
    "ParsedRequest": {"task": "generate", "num_inputs": 0, "num_outputs": 1, "inputs": [],
                      "outputs": [{"index": 1, "description": "a red circle on the left"}]},
    "Plan": {"steps": [{"tool": "generate", "prompt": "a red circle on the left", "outputs": [1]}]},
}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send(200, {"data": [{"id": "scripted"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = body["response_format"]["json_schema"]["name"]
        with open(log_path, "a") as log:
            log.write(f"{time.time()} {name}\n")
        if mode == "hang":
            time.sleep(3600)
        if mode == "slow":
            time.sleep(60)
        if mode == "500":
            return self.send(500, {"error": "internal"})
        if mode == "429":
            return self.send(429, {"error": "slow down"}, [("Retry-After", "0.2")])
        if name not in ANSWERS:
            return self.send(400, {"error": f"no scripted answer for {name}"})
        self.send(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": json.dumps(ANSWERS[name])}}]})

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
'''


class Endpoint:
    """The scripted server as a child process on a fixed loopback port (so a restart comes back on it)."""

    def __init__(self, tmp: Path, port: int | None = None):
        self.script, self.log = tmp / "server.py", tmp / "requests.log"
        self.script.write_text(SERVER)
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port, self.proc = port, None
        self.url = f"http://127.0.0.1:{port}/v1"

    def start(self, mode: str) -> "Endpoint":
        self.log.write_text("")
        self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.port), mode, str(self.log)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def requests(self) -> list[tuple[float, str]]:
        return [(float(t), name) for t, name in (line.split() for line in self.log.read_text().splitlines())]


@pytest.fixture()
def endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DITFLOW_LLM_TIMEOUT", str(TIMEOUT))
    monkeypatch.setenv("DITFLOW_LLM_RETRIES", str(RETRIES))
    ep = Endpoint(tmp_path)
    yield ep
    ep.kill()


@pytest.fixture(scope="module")
def pipe():
    from ditflow.pipelines.tiny import tiny_flux_pipeline

    return tiny_flux_pipeline()


def session(url: str, home: Path, pipe, **kw) -> Session:
    return Session(llm=url, pipeline=pipe, home=home, verify=False, **kw)


def worst_call(retries: int = RETRIES) -> float:
    """The longest one LLM call may take: every attempt times out, with the backoff between attempts."""
    return TIMEOUT * (retries + 1) + sum(BACKOFF * 2**k for k in range(retries))


def assert_rules_answered(turn, url: str) -> None:
    assert turn.ok, turn.error
    notes = " ".join(turn.record.notes)
    assert "using the rules parse" in notes and url in notes, notes  # visible: who answered, and why


# ----------------------------------------------------------------------------- the cases
def test_endpoint_killed_mid_turn_then_session_reopens_intact(endpoint, tmp_path, pipe):
    home = tmp_path / "home"
    endpoint.start("ok")
    s = session(endpoint.url, home, pipe)
    first = s.chat("a red circle on the left")
    assert first.ok and not any("rules" in n for n in first.record.notes)  # the LLM answered turn 1
    sid = s.id

    endpoint.kill()
    endpoint.start("hang")
    result = {}

    def killer():  # SIGKILL the server while it holds the parse request of turn 2
        deadline = time.monotonic() + 60
        while not endpoint.requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        result["killed_at"] = time.monotonic()
        endpoint.kill()

    import threading

    t = threading.Thread(target=killer)
    t.start()
    t0 = time.monotonic()
    second = s.chat("two small blue squares on a gray background")
    t.join()
    assert "killed_at" in result
    assert_rules_answered(second, endpoint.url)
    after_kill = second.record.timings.parse_s - (result["killed_at"] - t0)
    assert after_kill < worst_call() + SLACK  # the dead endpoint cost at most the configured bound
    s.close()

    endpoint.start("ok")  # the endpoint comes back on the same address; the session reopens from disk
    again = session(endpoint.url, home, pipe, session_id=sid)
    assert [t.instruction for t in again.history] == ["a red circle on the left",
                                                      "two small blue squares on a gray background"]
    assert all(p.is_file() for t in again.history for p in t.image_paths)
    third = again.chat("make it green")
    assert third.ok and third.record.turn == 3
    again.close()


def test_slow_endpoint_the_timeout_is_honoured(endpoint, tmp_path, pipe):
    endpoint.start("slow")  # answers after 60 s: far beyond the timeout
    s = session(endpoint.url, tmp_path / "home", pipe)
    turn = s.chat("a red circle on the left")
    assert_rules_answered(turn, endpoint.url)
    parse_s = turn.record.timings.parse_s
    assert TIMEOUT * (RETRIES + 1) <= parse_s < worst_call() + SLACK  # waited for the timeout, and no longer
    assert [n for _, n in endpoint.requests()].count("ParsedRequest") == RETRIES + 1
    s.close()


@pytest.mark.parametrize("mode", ["500", "429"])
def test_5xx_and_429_are_retried_with_backoff_then_the_rules_answer(endpoint, tmp_path, pipe, monkeypatch, mode):
    monkeypatch.setenv("DITFLOW_LLM_RETRIES", "2")
    endpoint.start(mode)
    s = session(endpoint.url, tmp_path / "home", pipe)
    turn = s.chat("a red circle on the left")
    assert_rules_answered(turn, endpoint.url)
    assert "HTTP " + mode in " ".join(turn.record.notes)
    parse = [t for t, n in endpoint.requests() if n == "ParsedRequest"]
    assert len(parse) == 3  # bounded: one try and two retries
    gaps = [b - a for a, b in zip(parse, parse[1:])]
    assert gaps[0] >= BACKOFF * 0.9 and gaps[1] >= 2 * BACKOFF * 0.9  # backoff doubles (Retry-After 0.2 is less)
    assert gaps[1] > gaps[0] * 1.2
    plan = [t for t, n in endpoint.requests() if n == "Plan"]
    assert len(plan) == 3  # the planner asked too, was refused the same way, and the rules planned
    s.close()


def test_an_unreachable_endpoint_fails_fast_not_at_the_timeout(endpoint, tmp_path, pipe):
    """Nothing listens on the port: connection refused is retried, never waited out for the full timeout."""
    s = session(endpoint.url, tmp_path / "home", pipe)
    turn = s.chat("a red circle on the left")
    assert_rules_answered(turn, endpoint.url)
    assert turn.record.timings.parse_s < sum(BACKOFF * 2**k for k in range(RETRIES)) + SLACK
    s.close()


def test_bad_timeout_settings_are_refused_clearly(monkeypatch):
    from ditflow.agents.llm.openai import OpenAIBackend

    monkeypatch.setenv("DITFLOW_LLM_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="DITFLOW_LLM_TIMEOUT"):
        OpenAIBackend("http://127.0.0.1:9/v1")
    monkeypatch.setenv("DITFLOW_LLM_TIMEOUT", "0")
    with pytest.raises(ValueError, match="timeout must be > 0"):
        OpenAIBackend("http://127.0.0.1:9/v1")
    assert os.environ["DITFLOW_LLM_TIMEOUT"] == "0"
