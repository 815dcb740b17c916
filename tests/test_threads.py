"""core.threads: a background thread lowers its own OS priority, and only its own."""

from __future__ import annotations

import sys
import threading

import pytest

from core.threads import BACKGROUND_NICE, MAX_NICE, lower_priority, thread_nice


def _in_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.update(fn()))
    thread.start()
    thread.join()
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux-only")
def test_lower_priority_changes_the_calling_thread_only():
    before = thread_nice()

    def work():
        lowered = lower_priority()
        seen = {"lowered": lowered, "nice": thread_nice()}
        # a thread started from the lowered one inherits its priority (as torch's OpenMP team does)
        child = _in_thread(lambda: {"child": thread_nice()})
        return {**seen, **child}

    out = _in_thread(work)
    assert out["lowered"] is True
    assert out["nice"] == min(MAX_NICE, before + BACKGROUND_NICE)
    assert out["child"] == out["nice"]
    assert thread_nice() == before  # the calling (server) thread keeps its priority


def test_lower_priority_elsewhere_says_so_and_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(sys, "platform", "darwin")
    with caplog.at_level("INFO", logger="core.threads"):
        assert _in_thread(lambda: {"lowered": lower_priority()})["lowered"] is False
    assert "Linux-only" in caplog.text
    assert thread_nice() is None


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux-only")
def test_a_refused_setpriority_is_logged_and_the_thread_goes_on(monkeypatch, caplog):
    import os

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)  # what a sandbox without the syscall does
    with caplog.at_level("WARNING", logger="core.threads"):
        assert _in_thread(lambda: {"lowered": lower_priority()})["lowered"] is False
    assert "keeps its OS priority" in caplog.text and "not permitted" in caplog.text
