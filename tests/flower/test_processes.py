"""Local Flower processes: TLS material, app dir, and clean shutdown (slow tests start real processes)."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import textwrap
import time
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedarena.flower.processes import LocalFederation, _toml_value, kill_marked, marked_pids, write_app_dir, write_flwr_home
from fedarena.flower.tls import make_local_tls


def test_tls_server_cert_is_signed_by_ca_for_loopback(tmp_path):
    files = make_local_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject and ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert files.server_key.stat().st_mode & 0o077 == 0
    assert make_local_tls(tmp_path / "again").ca_cert.read_bytes() != files.ca_cert.read_bytes()


def test_app_dir_and_flwr_home(tmp_path):
    app = write_app_dir(tmp_path / "app", {"config": 'a = "x"\nb = 1', "round-timeout": 30.0})
    tree = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert tree["components"] == {"serverapp": "fedarena.experiments.flower_server:app",
                                  "clientapp": "fedarena.flower.client_app:app"}
    assert tree["config"]["config"] == 'a = "x"\nb = 1'
    home = tomllib.loads((write_flwr_home(tmp_path / "h", "127.0.0.1:9", tmp_path / "ca.pem") / "config.toml").read_text())
    assert home["superlink"]["fedarena"] == {"address": "127.0.0.1:9", "root-certificates": str(tmp_path / "ca.pem")}
    assert _toml_value("a b") == '"a b"' and _toml_value(3) == "3"


@pytest.mark.slow
def test_failure_inside_deployment_leaves_no_process(tmp_path):
    token = None
    with pytest.raises(RuntimeError, match="boom"):
        with LocalFederation(tmp_path, [{"partition-id": 0}, {"partition-id": 1}],
                             tls=make_local_tls(tmp_path / "tls")) as fed:
            token = fed.token
            time.sleep(3)  # let the SuperNodes connect and start their SuperExec helpers
            assert all(p.alive() for p in fed.processes.values())
            assert len(marked_pids(token)) >= 3
            raise RuntimeError("boom")
    assert marked_pids(token) == []


@pytest.mark.slow
def test_ctrl_c_leaves_no_process(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from fedarena.flower.processes import LocalFederation
        with LocalFederation(Path({str(tmp_path)!r}), [{{"partition-id": 0}}]) as fed:
            print(fed.token, flush=True)
            time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    token = ""
    try:
        token = child.stdout.readline().strip()
        assert token and marked_pids(token)
        time.sleep(2)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=120)  # generous: CI machines may be loaded
        assert marked_pids(token) == []
    finally:
        child.kill()
        if token:
            kill_marked(token)  # nothing stays behind even when an assertion above failed


def test_a_node_that_could_not_bind_its_port_is_restarted_on_another(tmp_path, monkeypatch):
    """free_port() names a port free now; if something takes it before the SuperNode binds, the node exits ("address
    already in use", seen in CI) and start() restarts it on a new port instead of waiting out the start timeout."""
    from fedarena.flower.processes import free_port

    fed = LocalFederation(tmp_path, [{}], start_timeout=20)
    ports: list[int] = []

    def start_node(i: int):
        fed.node_ports[i] = port = free_port()
        listen = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
        ports.append(port)
        return fed._spawn(f"supernode-{i}", [sys.executable, "-c", "raise SystemExit(1)" if len(ports) == 1 else listen])

    monkeypatch.setattr(fed, "start_node", start_node)
    try:
        start_node(0)
        fed._await_node(0)
        assert len(ports) == 2 and fed.node_ports[0] == ports[1]
        assert fed.processes["supernode-0"].popen.poll() is None  # the second one listens
    finally:
        fed.close()
    with pytest.raises(Exception, match="exited with code 1"):
        fed2 = LocalFederation(tmp_path / "b", [{}], start_timeout=20)
        monkeypatch.setattr(fed2, "start_node", lambda i: (fed2.node_ports.__setitem__(i, free_port()),
                            fed2._spawn("supernode-0", [sys.executable, "-c", "raise SystemExit(1)"]))[1])
        fed2.start_node(0)
        try:
            fed2._await_node(0, attempts=2)
        finally:
            fed2.close()
