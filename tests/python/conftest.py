"""Fixtures for the independent Python (grpcio) client test suite of claims-ledger.

* At session start the Python stubs are generated from ``<repo>/proto`` with ``grpc_tools.protoc``
  into a temporary directory that is put on ``sys.path``; tests import them as
  ``from claimsledger.v1 import ledger_pb2, ...``.
* ``server`` (session scope) runs the binary named by ``CLAIMS_LEDGER_BIN`` (default
  ``<repo>/target/debug/claims-ledger``) as
  ``BIN serve --data-dir DIR --listen 127.0.0.1:0 --addr-file ADDR_FILE`` and yields its address
  (``127.0.0.1:PORT``, as written to the addr file).
* ``fresh_server`` (function scope) is the same on an empty data directory, for tests that need their
  own log; ``start_server`` is the underlying factory (also used to restart on an existing data dir,
  and, with ``extra_args``, to pass further ``serve`` flags such as ``--config``).
* ``demo_server`` (session scope) is a server started with ``serve --demo`` (the built-in Istanbul
  dataset loaded before serving) on its own data dir, yielding its address. Tests must not write to it,
  so that its log stays exactly the demo dataset. ``fresh_demo_server`` (function scope) is a
  ``--demo`` server of its own, for tests that write. ``start_server(demo=True)`` starts one.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
DEFAULT_BIN = REPO / "target" / "debug" / "claims-ledger"

#: How long a server may take to write its addr file and accept connections.
STARTUP_TIMEOUT_S = 30.0
#: How long a server gets after SIGTERM before it is killed.
SHUTDOWN_GRACE_S = 5.0
#: Deadline of every RPC the tests make.
RPC_TIMEOUT_S = 10.0

_ADDR_RE = re.compile(r"^127\.0\.0\.1:[1-9][0-9]{0,4}$")

_stub_dir: str | None = None


# --------------------------------------------------------------------------------------------------
# Stub generation
# --------------------------------------------------------------------------------------------------


def _well_known_protos_dir() -> str:
    """The google/protobuf/*.proto files bundled with grpcio-tools."""
    try:
        return str(importlib.resources.files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover - very old Pythons / setuptools layouts
        import pkg_resources  # type: ignore[import-not-found]

        return pkg_resources.resource_filename("grpc_tools", "_proto")


def generate_stubs(out_dir: str) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={_well_known_protos_dir()}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc}: {' '.join(args)}")


def pytest_configure(config: pytest.Config) -> None:
    global _stub_dir
    if _stub_dir is not None:
        return
    _stub_dir = tempfile.mkdtemp(prefix="claims-ledger-pystubs-")
    generate_stubs(_stub_dir)
    sys.path.insert(0, _stub_dir)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stub_dir
    if _stub_dir is not None:
        try:
            sys.path.remove(_stub_dir)
        except ValueError:
            pass
        shutil.rmtree(_stub_dir, ignore_errors=True)
        _stub_dir = None


# --------------------------------------------------------------------------------------------------
# Server process
# --------------------------------------------------------------------------------------------------


def _binary() -> Path:
    return Path(os.environ.get("CLAIMS_LEDGER_BIN", str(DEFAULT_BIN)))


@pytest.fixture(scope="session")
def ledger_binary() -> Path:
    """The claims-ledger binary under test, for its CLI commands."""
    return _binary()


class ServerProcess:
    """One running `claims-ledger serve`."""

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        work_dir: Path,
        demo: bool = False,
        extra_args: tuple[str, ...] = (),
    ):
        self.binary = binary
        self.data_dir = data_dir
        self.work_dir = work_dir
        self.demo = demo
        self.extra_args = tuple(extra_args)
        self.addr_file = work_dir / "addr"
        self.stdout_path = work_dir / "stdout.log"
        self.stderr_path = work_dir / "stderr.log"
        self.proc: subprocess.Popen | None = None
        self.addr: str | None = None

    @property
    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            "127.0.0.1:0",
            "--addr-file",
            str(self.addr_file),
            *(["--demo"] if self.demo else []),
            *self.extra_args,
        ]

    def output(self, limit: int = 8000) -> str:
        parts = []
        for name, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            if len(text) > limit:
                text = "...\n" + text[-limit:]
            parts.append(f"--- server {name} ---\n{text}")
        return "\n".join(parts)

    def start(self) -> str:
        if not self.binary.is_file():
            pytest.fail(
                f"server binary {self.binary} does not exist; build it with `cargo build` "
                "or point CLAIMS_LEDGER_BIN at it",
                pytrace=False,
            )
        # A stale addr file from an earlier run on this work dir must not be mistaken for this one's.
        self.addr_file.unlink(missing_ok=True)
        self.addr = None
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=str(self.work_dir),
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        self.addr = self._wait_for_addr(deadline)
        self._wait_for_channel(deadline)
        return self.addr

    def _fail_startup(self, why: str) -> None:
        cmd = " ".join(self.argv)
        self.stop()
        pytest.fail(f"{why}\ncommand: {cmd}\n{self.output()}", pytrace=False)

    def _wait_for_addr(self, deadline: float) -> str:
        assert self.proc is not None
        previous = None
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self._fail_startup(f"server exited early with status {rc}")
            try:
                content = self.addr_file.read_text().strip()
            except FileNotFoundError:
                content = ""
            # Require the same non-empty content on two consecutive reads, so a partially written file
            # is not used.
            if content and content == previous:
                if not _ADDR_RE.match(content):
                    self._fail_startup(
                        f"addr file {self.addr_file} holds {content!r}, expected 127.0.0.1:PORT"
                    )
                return content
            previous = content or None
            if time.monotonic() > deadline:
                self._fail_startup(
                    f"server did not write a non-empty {self.addr_file} within {STARTUP_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.05)

    def _wait_for_channel(self, deadline: float) -> None:
        assert self.addr is not None
        with grpc.insecure_channel(self.addr) as channel:
            try:
                grpc.channel_ready_future(channel).result(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except grpc.FutureTimeoutError:
                rc = self.proc.poll() if self.proc else None
                self._fail_startup(
                    f"server wrote {self.addr} to its addr file but did not accept connections "
                    f"within {STARTUP_TIMEOUT_S:.0f} s (exit status: {rc})"
                )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Sends `sig` (SIGTERM by default; SIGKILL to simulate a crash); kills after the grace period."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory):
    """Factory: `start_server(data_dir=None, demo=False, extra_args=())` starts a server (on a new
    empty data dir by default; with `demo=True` as `serve --demo`, which loads the built-in dataset
    before serving; `extra_args` are appended to the `serve` command line)."""
    started: list[ServerProcess] = []

    def start(
        data_dir: Path | None = None, demo: bool = False, extra_args: tuple[str, ...] = ()
    ) -> ServerProcess:
        work_dir = tmp_path_factory.mktemp("ledger-demo" if demo else "ledger")
        if data_dir is None:
            data_dir = work_dir / "data"
        server = ServerProcess(
            _binary(), Path(data_dir), work_dir, demo=demo, extra_args=extra_args
        )
        started.append(server)
        server.start()
        return server

    yield start

    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server_process(start_server) -> ServerProcess:
    return start_server()


@pytest.fixture(scope="session")
def server(server_process: ServerProcess) -> str:
    """Address (127.0.0.1:PORT) of the session's shared server."""
    return server_process.addr  # type: ignore[return-value]


@pytest.fixture()
def fresh_server(start_server):
    """A server of its own on an empty data dir, stopped after the test."""
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def demo_server_process(start_server) -> ServerProcess:
    """The session's `serve --demo` server; read-only for tests (its log is the demo dataset)."""
    return start_server(demo=True)


@pytest.fixture(scope="session")
def demo_server(demo_server_process: ServerProcess) -> str:
    """Address (127.0.0.1:PORT) of the session's shared `serve --demo` server."""
    return demo_server_process.addr  # type: ignore[return-value]


@pytest.fixture()
def fresh_demo_server(start_server):
    """A `serve --demo` server of its own (on its own data dir), stopped after the test."""
    srv = start_server(demo=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def channel(server: str):
    with grpc.insecure_channel(server) as ch:
        yield ch


@pytest.fixture(autouse=True)
def _server_still_alive(request: pytest.FixtureRequest):
    """After each test that used a shared server, fail if that server has died."""
    yield
    for name in ("server_process", "demo_server_process"):
        if name in request.fixturenames:
            srv: ServerProcess = request.getfixturevalue(name)
            if not srv.running():
                pytest.fail(
                    f"the shared server ({name}) died during the test "
                    f"(exit status {srv.proc.returncode})\n{srv.output()}",
                    pytrace=False,
                )
