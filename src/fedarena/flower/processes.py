"""Flower processes on this machine: a SuperLink, SuperNodes, and `flwr run`, always cleaned up.

A local deployment (`fedarena deploy --local N`) starts one SuperLink and N SuperNodes on
127.0.0.1, each on a free port, with a private FLWR_HOME in a temporary directory (the user's own
Flower config is never read or written). Every process this module starts, and every process
those start (Flower's SuperExec, ServerApp and ClientApp processes, some of which detach into
their own sessions), carries a marker variable in its environment; `close()` stops the
processes it started (SIGTERM to each process group, then SIGKILL) and then kills anything still
carrying the marker, so nothing is left running after success, failure or Ctrl-C.

Facts used (checked on Flower 1.42.0): the SuperLink serves its Fleet, Control and Runtime HTTP
APIs on one port (`--port`); each SuperNode needs its own `--port` for its local runtime API;
`flwr run APP NAME` reads the connection NAME from `$FLWR_HOME/config.toml`; runtime dependency
installation (`uv sync`) must be off for offline machines.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import tomli_w

from fedarena.core.types import FedarenaError
from fedarena.flower.tls import TlsFiles

log = logging.getLogger(__name__)

MARKER = "FEDARENA_FLOWER_DEPLOYMENT"  # environment variable every started process inherits
CONNECTION = "fedarena"  # the connection name written into FLWR_HOME/config.toml
APP_NAME = "fedarena-deploy"
APP_VERSION = "1.0.0"
RunConfigValue = str | int | float | bool


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on (host, port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FedarenaError(f"process {proc.args[0]} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise FedarenaError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def flower_bin(name: str) -> str:
    """A Flower executable from the environment that runs this Python (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FedarenaError(f"Flower executable {name} not found next to {sys.executable}; install flwr==1.42.0")
    return str(path)


def write_app_dir(directory: Path, run_config: Mapping[str, RunConfigValue]) -> Path:
    """The Flower app `flwr run` ships: a pyproject naming fedarena's generic ServerApp and ClientApp
    (fedarena itself is installed on every machine), with `run_config` as the app's config defaults."""
    directory.mkdir(parents=True, exist_ok=True)
    tree = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": APP_NAME, "version": APP_VERSION, "description": "fedarena on Flower",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "fedarena",
            "components": {"serverapp": "fedarena.experiments.flower_server:app",
                           "clientapp": "fedarena.flower.client_app:app"},
            "config": dict(run_config),
        }}},
    }
    (directory / "pyproject.toml").write_text(tomli_w.dumps(tree))
    return directory


def write_flwr_home(home: Path, address: str, ca_cert: Path | None, insecure: bool = False) -> Path:
    """`$FLWR_HOME/config.toml` with one connection, CONNECTION, to `address`: plain HTTP if `insecure`,
    else TLS verified with `ca_cert` (or, without it, the system's trust store)."""
    home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, RunConfigValue] = {"address": address}
    if insecure:
        conn["insecure"] = True
    elif ca_cert is not None:
        conn["root-certificates"] = str(ca_cert)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
    return home


@dataclass
class Process:
    """One started process, its own process group, and its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


def marked_pids(token: str) -> list[int]:
    """Processes of this user whose environment carries MARKER=token (zombies excluded)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and not _zombie(entry):
                found.append(int(entry.name))
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
    return found


def kill_marked(token: str, attempts: int = 20) -> None:
    """SIGKILL every process carrying MARKER=token until none is left."""
    for _ in range(attempts):
        left = marked_pids(token)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    log.warning("processes still running after cleanup: %s", marked_pids(token))


def _zombie(entry: Path) -> bool:
    stat = (entry / "stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"


@dataclass
class LocalFederation:
    """A SuperLink and `num_nodes` SuperNodes on 127.0.0.1; use as a context manager.

    `node_configs[i]` is SuperNode i's `--node-config` (what its ClientApp reads from
    `context.node_config`). With `tls`, the SuperLink serves HTTPS with `tls.server_cert` and every
    client trusts only `tls.ca_cert`; without it, everything is plain HTTP on loopback only.
    """

    root: Path
    node_configs: list[dict[str, RunConfigValue]]
    tls: TlsFiles | None = None
    start_timeout: float = 60.0
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    superlink_port: int = 0
    processes: dict[str, Process] = field(default_factory=dict)
    node_ports: dict[int, int] = field(default_factory=dict)  # SuperNode i's local runtime API port
    remote: str = ""  # HOST:PORT of a SuperLink started elsewhere: start() then starts nothing
    remote_ca: Path | None = None
    remote_insecure: bool = False
    simulation: bool = False  # the SuperLink runs Flower's simulation runtime (virtual SuperNodes, Ray)

    @property
    def address(self) -> str:
        return self.remote or f"127.0.0.1:{self.superlink_port}"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({MARKER: self.token, "FLWR_HOME": str(self.flwr_home), "PYTHONUNBUFFERED": "1"})
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        return env

    def _spawn(self, name: str, args: list[str]) -> Process:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{name}.log"
        with open(path, "ab") as fh:
            popen = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env(), cwd=self.root, start_new_session=True)
        proc = Process(name, popen, path)
        self.processes[name] = proc
        log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(args))
        return proc

    def __enter__(self) -> "LocalFederation":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.remote:
            write_flwr_home(self.flwr_home, self.remote, self.remote_ca, self.remote_insecure)
            return
        self.superlink_port = free_port()
        write_flwr_home(self.flwr_home, self.address, self.tls.ca_cert if self.tls else None, self.tls is None)
        args = [flower_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.superlink_port),
                "--disable-runtime-dependency-installation"]
        if self.simulation:
            args.append("--simulation")
        if self.tls:
            args += ["--ssl-certfile", str(self.tls.server_cert), "--ssl-keyfile", str(self.tls.server_key),
                     "--ssl-ca-certfile", str(self.tls.ca_cert)]
        else:
            args.append("--insecure")
        link = self._spawn("superlink", args)
        wait_for_port("127.0.0.1", self.superlink_port, self.start_timeout, link.popen)
        for i in range(len(self.node_configs)):
            self.start_node(i)
        for i in range(len(self.node_configs)):
            self._await_node(i)

    def start_node(self, i: int) -> Process:
        """Start (or restart) SuperNode i with its node config."""
        config = " ".join(f"{k}={_toml_value(v)}" for k, v in self.node_configs[i].items())
        self.node_ports[i] = free_port()
        args = [flower_bin("flower-supernode"), "--superlink", self.address, "--port", str(self.node_ports[i]),
                "--node-config", config]
        args += ["--root-certificates", str(self.tls.ca_cert)] if self.tls else ["--insecure"]
        return self._spawn(f"supernode-{i}", args)

    def _await_node(self, i: int, attempts: int = 3) -> None:
        """SuperNode i listening on its runtime port. free_port() only names a port free *now*: before the node binds
        it, the OS may hand it to an outgoing connection (both come from the ephemeral range), and the node exits with
        "address already in use" (seen in CI). Such a node is restarted on another port, up to `attempts` times."""
        for attempt in range(attempts):
            proc = self.processes[f"supernode-{i}"]
            try:
                wait_for_port("127.0.0.1", self.node_ports[i], self.start_timeout, proc.popen)
                return
            except FedarenaError:
                if proc.popen.poll() is None or attempt == attempts - 1:
                    raise
                log.warning("SuperNode %d exited before listening on port %d; restarting it on another port", i,
                            self.node_ports[i])
                self.start_node(i)

    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode i's process group (a crash, for fault tests)."""
        proc = self.processes[f"supernode-{i}"]
        proc.signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)

    def flwr_run(self, app_dir: Path, overrides: Path | None, timeout: float,
                 federation_config: str | None = None) -> subprocess.CompletedProcess:
        """`flwr run APP CONNECTION --stream` until the run ends; its output goes to logs/flwr-run.log.
        `federation_config` is `--federation-config` ('k=v ...', e.g. a simulation's num-supernodes)."""
        args = [flower_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream"]
        if overrides is not None:
            args += ["--run-config", str(overrides)]
        if federation_config is not None:
            args += ["--federation-config", federation_config]
        proc = self._spawn("flwr-run", args)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FedarenaError(f"flwr run did not finish within {timeout:.0f} s (see {proc.log_path})") from None
        return subprocess.CompletedProcess(args, proc.popen.returncode)

    def close(self, grace: float = 5.0) -> None:
        """Stop every started process (SIGTERM, then SIGKILL after `grace` s) and anything they started."""
        for proc in self.processes.values():
            if proc.alive():
                proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.signal(signal.SIGKILL)
                proc.popen.wait(timeout=10)
        kill_marked(self.token)  # detached children (own sessions) and orphans carry the marker


def _toml_value(value: RunConfigValue) -> str:
    """One `--node-config` value in TOML syntax (strings quoted)."""
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]
