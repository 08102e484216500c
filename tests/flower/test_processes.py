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
