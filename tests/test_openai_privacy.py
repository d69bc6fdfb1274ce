"""Issue 9.4: where the `openai` backend sends records and keys, checked against a real HTTP server that records
every request it receives (tests/http_recorder.py); our client is the real one.

Before the fix (commit d73d475) `api_key_env` defaulted to OPENAI_API_KEY, so that key went as a Bearer token to
whatever base_url named, plain http to another machine was accepted, and nothing was said about records leaving
this machine: the tests of the default key, the unset named key, plain http elsewhere, the warning and the loopback
rule fail there (checked); the named-key and loopback-quiet tests guard what already worked.
"""

from __future__ import annotations

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.generation import create_generator
from medalign_rag.generation import openai_http
from tests.http_recorder import ANSWER, non_loopback_address, start_recorder


@pytest.fixture
def recorder():
    recorder, server = start_recorder()
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def recorder_on_all_interfaces():
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    recorder, server = start_recorder(bind="0.0.0.0")
    recorder.host = address
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test starts as a fresh process would: no host warned about yet."""
    monkeypatch.setattr(openai_http, "_warned_hosts", set(), raising=False)


def test_no_key_is_sent_unless_the_config_names_its_variable(recorder, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-never-leave")
    with create_generator("openai", base_url=recorder.url()) as generator:
        assert [r.text for r in generator.generate(["q"])] == [ANSWER]
    assert recorder.requests, "the server saw nothing"
    for request in recorder.requests:
        assert "authorization" not in {name.lower() for name in request.headers}
        assert b"sk-should-never-leave" not in request.body


def test_the_named_key_is_sent_as_a_bearer_token(recorder, monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", "sk-named-123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    with create_generator("openai", base_url=recorder.url(), api_key_env="MY_SERVER_KEY") as generator:
        generator.generate(["q"])
    assert {r.headers.get("Authorization") for r in recorder.requests} == {"Bearer sk-named-123"}


def test_a_named_but_unset_key_variable_is_an_error_before_any_request(recorder, monkeypatch):
    monkeypatch.delenv("MY_MISSING_KEY", raising=False)
    with pytest.raises(MedalignError, match=r"\$MY_MISSING_KEY.*not set"):
        create_generator("openai", base_url=recorder.url(), api_key_env="MY_MISSING_KEY")
    assert recorder.requests == []


def test_loopback_is_quiet_and_plain_http_there_is_fine(recorder, capfd):
    with create_generator("openai", base_url=recorder.url()) as generator:
        generator.generate(["q"])
    with create_generator("openai", base_url=recorder.url(host="localhost")) as generator:
        generator.generate(["q"])
    assert capfd.readouterr().err == ""


def test_plain_http_to_another_machine_is_refused_before_anything_is_sent(recorder_on_all_interfaces):
    recorder = recorder_on_all_interfaces
    with pytest.raises(MedalignError, match="allow_insecure_http"):
        create_generator("openai", base_url=recorder.url())
    assert recorder.requests == []


def test_allowed_insecure_http_to_another_machine_warns_once_on_stderr(recorder_on_all_interfaces, capfd):
    recorder = recorder_on_all_interfaces
    for _ in range(2):
        with create_generator("openai", base_url=recorder.url(), allow_insecure_http=True) as generator:
            assert [r.text for r in generator.generate(["q"])] == [ANSWER]
    captured = capfd.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warnings) == 1 and recorder.host in warnings[0] and "patient records" in warnings[0]
    assert captured.out == ""
    assert len(recorder.completions()) == 2


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("localhost", True), ("10.0.0.5", False), ("example.org", False),
                                            ("0.0.0.0", False), ("localhost.example.org", False)])
def test_loopback_hosts(host, loopback):
    assert openai_http.is_loopback_host(host) is loopback


@pytest.mark.parametrize("base_url", ["ftp://127.0.0.1/v1", "127.0.0.1:8000/v1", "http:///v1"])
def test_malformed_base_urls_are_one_clear_error(base_url):
    with pytest.raises(MedalignError, match="base_url"):
        create_generator("openai", base_url=base_url)
