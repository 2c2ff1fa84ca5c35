"""Shared fixtures: the shipped model, a real JACK server and a monitor port on it, and the data outside
the repository.

JACK: there is no ALSA sequencer on the machines these tests run on, so MIDI goes through JACK (Debian
package ``jackd2``). The server (``improviser.testing.jack_server``, which the benchmarks use too) is
started once per test session under a unique name, which the tests and the improviser processes they start
find through ``JACK_DEFAULT_SERVER``; its output goes to ``jackd.log`` in the session's temporary folder.

Data: the JSB Chorales benchmark lives beside the checkout, in ``../shared/data`` (see its README).

Without jackd, or without the data, the tests that need them skip locally and fail in CI (when ``CI`` is
set): they must never skip silently there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from improviser import testing

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def skip_or_fail(reason: str) -> None:
    """Skip the test locally; fail it in CI, where nothing may be missing."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def model():
    """The shipped checkpoint's model (loaded once)."""
    from improviser.model.network import default_checkpoint, load_checkpoint

    return load_checkpoint(default_checkpoint())[0]


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """``shared_data("jsb-chorales/jsb-chorales-quarter.json")``: that file under ../shared/data, or the
    test skips (fails in CI) saying it is missing."""

    def find(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            skip_or_fail(f"{path} not found: the benchmark data lives outside the repository, in ../shared/data "
                         "beside the checkout (see its README)")
        return path

    return find


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory):
    """The name of a running JACK server (dummy driver, -p 32, synchronous), set as JACK_DEFAULT_SERVER."""
    log = tmp_path_factory.mktemp("jack") / "jackd.log"
    with contextlib.ExitStack() as stack:
        try:
            name = stack.enter_context(testing.jack_server("improviser-test", log=log))
        except testing.JackUnavailable as e:
            skip_or_fail(str(e))
        yield name


@pytest.fixture
def monitor(jack_server):
    """A Monitor on the test's JACK server, closed before the server stops."""
    mon = testing.Monitor()
    try:
        yield mon
    finally:
        mon.close()
