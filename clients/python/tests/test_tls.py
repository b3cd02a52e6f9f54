"""Mutual TLS against a local HTTPS server: what a wrong CA, an expired or foreign certificate and missing files say."""

from __future__ import annotations

import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

pytest.importorskip("cryptography")

import plexus  # noqa: E402

from pki import issue, make_ca  # noqa: E402


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"studies": [{"id": "aaa-validation", "title": "t", "privacy": {"exact": True}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca, ca_key = make_ca(d)
    cert, key = issue(d, "coordinator", ca, ca_key, server=True)
    issue(d, "alice", ca, ca_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"dir": d, "url": f"https://127.0.0.1:{httpd.server_address[1]}", "ca": ca, "ca_key": ca_key}
    httpd.shutdown()


def test_from_pki_connects(server):
    net = plexus.Network.from_pki(server["dir"], as_="alice", url=server["url"])
    assert list(net.studies()["id"]) == ["aaa-validation"]
    net_localhost = plexus.Network.from_pki(server["dir"], as_="alice", url=server["url"].replace("127.0.0.1", "localhost"))
    assert len(net_localhost.studies()) == 1


def test_wrong_ca_says_the_coordinator_does_not_chain_to_it(server, tmp_path):
    wrong_ca, _ = make_ca(str(tmp_path), "other-ca")
    net = plexus.Network(server["url"], wrong_ca, os.path.join(server["dir"], "alice.pem"),
                         os.path.join(server["dir"], "alice.key"), role="researcher")
    with pytest.raises(plexus.PlexusConnectionError, match="does not chain to the CA in .*other-ca.pem") as e:
        net.studies()
    assert isinstance(e.value, ConnectionError) and e.value.path == wrong_ca


def test_client_certificate_of_another_ca_is_refused(server, tmp_path):
    other_ca, other_key = make_ca(str(tmp_path), "other-ca")
    cert, key = issue(str(tmp_path), "mallory", other_ca, other_key)
    net = plexus.Network(server["url"], server["ca"], cert, key, role="researcher")
    with pytest.raises(plexus.PlexusConnectionError, match="refused the researcher certificate .*mallory.pem"):
        net.studies()


def test_expired_certificate_is_named_before_connecting(server, tmp_path):
    cert, key = issue(str(tmp_path), "old-alice", server["ca"], server["ca_key"], expired=True)
    with pytest.raises(plexus.PlexusConnectionError,
                       match=r"the researcher certificate .*old-alice.pem expired on \d{4}-\d\d-\d\d") as e:
        plexus.Network(server["url"], server["ca"], cert, key, role="researcher")
    assert e.value.path == cert


def test_missing_files_are_named(server, tmp_path):
    with pytest.raises(plexus.PlexusConnectionError, match=r"the certificate .*/nobody.pem for the nobody does not exist"):
        plexus.Network.from_pki(server["dir"], as_="nobody", url=server["url"])
    cert, key = issue(str(tmp_path), "carol", server["ca"], server["ca_key"])
    os.remove(key)
    with pytest.raises(plexus.PlexusConnectionError, match=r"the private key .*/carol.key for the researcher does not exist"):
        plexus.Network(server["url"], server["ca"], cert, key, role="researcher")
    with pytest.raises(plexus.PlexusConnectionError, match="connect file .* does not exist"):
        plexus.Network.from_connect_file(str(tmp_path / "connect.json"))


def test_key_of_another_certificate(server, tmp_path):
    cert, _ = issue(str(tmp_path), "bob", server["ca"], server["ca_key"])
    with pytest.raises(plexus.PlexusConnectionError, match="do not load together"):
        plexus.Network(server["url"], server["ca"], cert, os.path.join(server["dir"], "alice.key"))


def test_nothing_listening(server):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    net = plexus.Network.from_pki(server["dir"], as_="alice", url=f"https://127.0.0.1:{port}")
    with pytest.raises(plexus.PlexusConnectionError, match="nothing listens there"):
        net.studies()


def test_connect_file_identities(server, tmp_path):
    connect = {"url": server["url"], "pki": server["dir"], "ca": server["ca"],
               "identities": {"researcher": {"name": "alice", "cert": os.path.join(server["dir"], "alice.pem"),
                                             "key": os.path.join(server["dir"], "alice.key")}},
               "studies": {"exact": "aaa-validation"}}
    path = tmp_path / "connect.json"
    path.write_text(json.dumps(connect))
    net = plexus.Network.from_connect_file(str(path))
    assert net.connect_info["studies"]["exact"] == "aaa-validation"
    assert len(net.studies()) == 1
    with pytest.raises(plexus.PlexusConnectionError, match="has no identity 'auditor' \\(it has: researcher\\)"):
        plexus.Network.from_connect_file(str(path), role="auditor")
