"""`RuntimeState`: the typed contents of a runtime's `runtime.json`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tidings.hyperty.runtime import HypertyRuntime, HypertyRuntimeError
from tidings.hyperty.runtime_state import STATE_FILE, RuntimeState

#: A state file as a runtime writes it after `subscribe(command=...)` and a registration.
WRITTEN = {
    "runtime_url": "hyperty-runtime://example.com/7d1c",
    "element": "http://127.0.0.1:8090/hyperty",
    "service": "ws://127.0.0.1:8080/",
    "hyperties": {
        "hyperty://example.com/9f3c": {"factory": "connector", "options": {"name": "Bob"}}
    },
    "command": "python -m tidings.hyperty.wake --state bob",
    "subscription": {"endpoint": "http://127.0.0.1:8080/wpush/v2/x", "keys": {}},
    "credential": "c2VjcmV0",
}


def test_a_written_state_reads_back_typed_and_writes_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text(json.dumps({**WRITTEN, "later": {"kept": True}}))
    state = RuntimeState.load(path)
    assert state.runtime_url == "hyperty-runtime://example.com/7d1c"
    assert state.credential == "c2VjcmV0"
    assert state.hyperties["hyperty://example.com/9f3c"]["factory"] == "connector"
    assert state.user is None
    state.save(path)
    assert json.loads(path.read_text()) == {**WRITTEN, "later": {"kept": True}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_file_is_an_empty_state_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    assert RuntimeState.load(tmp_path / STATE_FILE) == RuntimeState()
    (tmp_path / STATE_FILE).write_text("[1, 2]")
    with pytest.raises(HypertyRuntimeError, match="does not hold a JSON object"):
        RuntimeState.load(tmp_path / STATE_FILE)
    (tmp_path / STATE_FILE).write_text('{"hyperties": ["hyperty://example.com/1"]}')
    with pytest.raises(HypertyRuntimeError, match="`hyperties` is not a JSON object"):
        RuntimeState.load(tmp_path / STATE_FILE)
    (tmp_path / STATE_FILE).write_text("{")
    with pytest.raises(HypertyRuntimeError, match="not valid JSON"):
        HypertyRuntime(None, tmp_path)


def test_a_runtime_reopens_its_state_and_refuses_another_url(tmp_path: Path) -> None:
    runtime = HypertyRuntime(None, tmp_path, domain="example.com", element="http://e/hyperty/")
    again = HypertyRuntime(None, tmp_path)
    assert again.url == runtime.url
    assert again.element == "http://e/hyperty"
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {
        "runtime_url": runtime.url,
        "element": "http://e/hyperty",
        "hyperties": {},
    }
    with pytest.raises(HypertyRuntimeError, match="holds the runtime"):
        HypertyRuntime("hyperty-runtime://example.com/other", tmp_path)
