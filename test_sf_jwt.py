"""Tests of sf_jwt against a fake Salesforce token endpoint and independent oracles.

Fixtures and helpers:

- ``fake`` starts ``FakeSalesforce``, a real HTTPS server on 127.0.0.1 with a
  random free port, in a thread that stops at teardown. It serves
  testdata/server.crt, which testdata/ca.crt signed, so clients pass
  ``ca_file=CA_CERT``. It checks each token request in Salesforce's order and
  responds with Salesforce's exact error strings. The checks are the form
  content type and grant_type, a three-segment base64url RS256 assertion,
  ``iss`` equal to ``consumer_key``, and an RS256 signature that
  testdata/jwt_cert.crt verifies. Then come ``aud`` equal to ``audience``, an
  integer ``exp`` in the next five minutes, and a ``sub`` (or ``prn``) that
  ``users`` maps to ``None`` (approved) rather than to an OAuth error. Success
  returns Salesforce's JSON shape with a new access token each time and a
  loopback ``instance_url``. ``fake.behaviour`` makes it respond with a scripted
  OAuth error, a 503 or 200 HTML page, 200 JSON without ``access_token``, a
  plain-http ``instance_url``, a 302 redirect, a reset connection, or a stall of
  at most ``STALL_SECONDS``. It records every request
  (method, path, headers, form) and every token it issued.
- ``start_fake`` starts more fakes: plain HTTP, or on another loopback address.
- ``outside_connections`` (autouse) makes ``socket.getaddrinfo`` reject every
  host that is not loopback and fails the test if the code tried one, so no
  in-process test can reach Salesforce or any other host. Command-line tests run
  in subprocesses, so they connect only to loopback URLs and use the offline
  ``assertion`` subcommand for other hosts.
- Oracles: ``cryptography`` loads the fixture keys and signs and verifies,
  PyJWT decodes assertions, and ``_pkcs1_der`` writes PKCS#1 DER from numbers
  (the RFC 7515 Appendix A.2 key and keys with inconsistent numbers).

The keys and certificates in testdata/ were made by the openssl commands in
testdata/README.md.
"""

import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import logging
import os
import pathlib
import random
import re
import secrets
import shlex
import shutil
import socket
import socketserver
import ssl
import string
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

import jwt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

import sf_jwt

try:  # cryptography 43 moved TripleDES to the decrepit module
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:
    TripleDES = algorithms.TripleDES

# --- Paths and constants ---------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parent
TESTDATA = REPO / "testdata"
CA_CERT = TESTDATA / "ca.crt"
OTHER_CA_CERT = TESTDATA / "other_ca.crt"
SERVER_CERT = TESTDATA / "server.crt"
SERVER_KEY = TESTDATA / "server.key"
JWT_CERT = TESTDATA / "jwt_cert.crt"
KEY_PKCS1 = TESTDATA / "jwt_key_pkcs1.pem"
KEY_PKCS8 = TESTDATA / "jwt_key_pkcs8.pem"
OTHER_KEY = TESTDATA / "other_key.pem"

TOKEN_PATH = "/services/oauth2/token"
API_PATH = "/services/data"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
LOGIN_AUDIENCE = "https://login.salesforce.com"
TEST_AUDIENCE = "https://test.salesforce.com"

CONSUMER_KEY = "3MVG9fakeConsumerKeyForTheSfJwtTestSuite.0123456789"
USERNAME = "integration@example.com"
NOT_APPROVED_USER = "pending@example.com"
INACTIVE_USER = "former@example.com"

ORG_ID = "00D5g000004Ab1CEAS"
USER_ID = "0055g00000AbCdEAAT"

# The fake stalls this long at most, so a test with timeout=1 never waits longer.
STALL_SECONDS = 3
# The fake accepts an exp up to this many seconds ahead: five minutes plus clock slack.
MAX_EXP_AHEAD = 305
SUBPROCESS_TIMEOUT = 60

_BASE64URL_SEGMENT = re.compile(r"\A[A-Za-z0-9_-]+\Z")


# --- Independent helpers -----------------------------------------------------


def _b64url_to_bytes(segment):
    """Decode base64url text with or without padding, the way the standard library does."""
    if isinstance(segment, str):
        segment = segment.encode("ascii")
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


def _bytes_to_b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _crypto_private_key(path):
    return serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)


def _crypto_signature(path, data):
    return _crypto_private_key(path).sign(data, padding.PKCS1v15(), hashes.SHA256())


def _crypto_public_numbers(path):
    numbers = _crypto_private_key(path).public_key().public_numbers()
    return (numbers.n, numbers.e)


def _cert_public_key(path=JWT_CERT):
    return x509.load_pem_x509_certificate(pathlib.Path(path).read_bytes()).public_key()


def _private_numbers(path):
    """Return the PKCS#1 fields of a fixture key, as cryptography reads them."""
    numbers = _crypto_private_key(path).private_numbers()
    return {
        "n": numbers.public_numbers.n,
        "e": numbers.public_numbers.e,
        "d": numbers.d,
        "p": numbers.p,
        "q": numbers.q,
        "dp": numbers.dmp1,
        "dq": numbers.dmq1,
        "qi": numbers.iqmp,
    }


def _pem_body_lines(path):
    """Return the base64 lines of a PEM file, the text that must never be echoed."""
    lines = pathlib.Path(path).read_text().splitlines()
    return [line for line in lines if line and not line.startswith("-----") and ":" not in line]


def _der_tlv(tag, body):
    if len(body) < 0x80:
        length = bytes([len(body)])
    else:
        size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(size)]) + size
    return bytes([tag]) + length + body


def _der_integer(value):
    # One more byte than the bit length needs leaves room for the sign bit of DER's two's complement.
    return _der_tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _pkcs1_der(n, e, d, p, q, dp, dq, qi):
    """Write an RSAPrivateKey (RFC 8017 appendix A.1.2) as DER."""
    fields = [0, n, e, d, p, q, dp, dq, qi]
    return _der_tlv(0x30, b"".join(_der_integer(value) for value in fields))


def _clean_env(**extra):
    """Return os.environ without SF_* variables, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SF_")}
    env.update(extra)
    return env


def _is_loopback_host(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _closed_loopback_port():
    """Return a loopback port that nothing listens on."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def _decode_jwt(assertion):
    """Split a compact JWT into header bytes, claims bytes and signature bytes."""
    header, claims, signature = assertion.split(".")
    return _b64url_to_bytes(header), _b64url_to_bytes(claims), _b64url_to_bytes(signature)


# --- The fake Salesforce token endpoint -------------------------------------


class RecordedRequest(object):
    """One request as the fake endpoint received it."""

    def __init__(self, method, path, headers, body):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

    @property
    def assertion(self):
        return self.form.get("assertion", [""])[0]

    @property
    def claims(self):
        return json.loads(_decode_jwt(self.assertion)[1].decode("utf-8"))


def _oauth_error(error, description, status=400):
    return status, {"error": error, "error_description": description}


class FakeSalesforce(object):
    """A token endpoint that checks requests like Salesforce; see the module docstring."""

    def __init__(self, tls=True, host="127.0.0.1"):
        self.tls = tls
        self.host = host
        self.consumer_key = CONSUMER_KEY
        self.audience = LOGIN_AUDIENCE
        self.users = {
            USERNAME: None,
            NOT_APPROVED_USER: ("invalid_grant", "user hasn't approved this consumer"),
            INACTIVE_USER: ("invalid_grant", "inactive user"),
        }
        self.behaviour = None
        # Behaviours for the next token requests, one each, before ``behaviour`` applies.
        self.queue = []
        # Seconds each token request waits before its response, so concurrent logins overlap.
        self.login_delay = 0.0
        self.revoked = set()
        self.revoke_all = False
        # Seconds added to the Date header of every response, to fake a clock skew.
        self.date_offset = 0
        self.scripted_error = None
        self.requests = []
        self.issued = []
        self.server_errors = []
        self.release = threading.Event()
        self._public_key = _cert_public_key()
        self._server = None
        self._thread = None

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def base_url(self):
        scheme = "https" if self.tls else "http"
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d" % (scheme, host, self.port)

    @property
    def token_url(self):
        return self.base_url + TOKEN_PATH

    @property
    def logins(self):
        """The token requests received, whatever their outcome."""
        return [request for request in self.requests if request.path == TOKEN_PATH]

    @property
    def api_calls(self):
        return [request for request in self.requests if request.path.startswith(API_PATH)]

    @property
    def issued_tokens(self):
        return [body["access_token"] for body in self.issued if "access_token" in body]

    def script_error(self, status, error, description):
        self.behaviour = "oauth_error"
        self.scripted_error = (status, error, description)

    def start(self):
        server_class = _IPv6Server if ":" in self.host else _Server
        self._server = server_class((self.host, 0), _TokenEndpointHandler)
        self._server.fake = self
        self._server.tls_context = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(SERVER_CERT), str(SERVER_KEY))
            self._server.tls_context = context
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01})
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def check(self, request):
        """Return (status, error body or None) for a token request, in Salesforce's order."""
        media_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type != FORM_CONTENT_TYPE or request.form.get("grant_type") != [JWT_BEARER_GRANT]:
            return _oauth_error("unsupported_grant_type", "grant type not supported")

        invalid_client = _oauth_error("invalid_client", "invalid client credentials")
        segments = request.assertion.split(".")
        if len(segments) != 3 or not all(_BASE64URL_SEGMENT.match(part) for part in segments):
            return invalid_client
        try:
            header = json.loads(_b64url_to_bytes(segments[0]).decode("utf-8"))
            claims = json.loads(_b64url_to_bytes(segments[1]).decode("utf-8"))
            signature = _b64url_to_bytes(segments[2])
        except ValueError:
            return invalid_client
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            return invalid_client

        if claims.get("iss") != self.consumer_key:
            return _oauth_error("invalid_client_id", "client identifier invalid")

        signing_input = (segments[0] + "." + segments[1]).encode("ascii")
        try:
            self._public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return _oauth_error("invalid_grant", "invalid assertion")

        if claims.get("aud") != self.audience:
            return _oauth_error("invalid_grant", "audience is invalid")

        expiry = claims.get("exp")
        now = time.time()
        if not isinstance(expiry, int) or isinstance(expiry, bool) or not now < expiry <= now + MAX_EXP_AHEAD:
            return _oauth_error("invalid_grant", "expired authorization code")

        # Salesforce still accepts the older name prn, and it wins over sub.
        subject = claims.get("prn", claims.get("sub"))
        outcome = self.users.get(subject, ("invalid_grant", "user hasn't approved this consumer"))
        if outcome is not None:
            return _oauth_error(*outcome)
        return 200, None

    def success_body(self):
        alphabet = string.ascii_letters + string.digits + "."
        access_token = ORG_ID[:15] + "!AQ" + "".join(secrets.choice(alphabet) for _ in range(96))
        identity_url = "%s/id/%s/%s" % (self.base_url.replace("http://", "https://"), ORG_ID, USER_ID)
        issued_at = str(int(time.time() * 1000))
        signature = hmac.new(b"fake consumer secret", (identity_url + issued_at).encode("ascii"), hashlib.sha256)
        return {
            "access_token": access_token,
            "signature": base64.b64encode(signature.digest()).decode("ascii"),
            "scope": "api",
            "instance_url": "https://%s:%d" % ("[%s]" % self.host if ":" in self.host else self.host, self.port),
            "id": identity_url,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    # http.server.ThreadingHTTPServer needs Python 3.7.
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind looks up the host's FQDN, which this server does not need.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        request.settimeout(10)
        if self.tls_context is None:
            self.RequestHandlerClass(request, client_address, self)
            return
        try:
            connection = self.tls_context.wrap_socket(request, server_side=True)
        except OSError as exc:
            self.fake.server_errors.append("TLS handshake failed: %r" % exc)
            return
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            connection.close()

    def handle_error(self, request, client_address):
        self.fake.server_errors.append(traceback.format_exc())


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


_MAINTENANCE_PAGE = (
    b"<!DOCTYPE html><html><head><title>Down for maintenance</title></head>"
    b"<body><h1>Salesforce is down for maintenance</h1></body></html>"
)
_LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Login</title></head><body><form></form></body></html>"


class _TokenEndpointHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeSalesforce/1.0"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        self._handle()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_POST

    def _handle(self):
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        request = RecordedRequest(self.command, self.path, self.headers, self.rfile.read(length))
        fake.requests.append(request)

        if self.path.startswith(API_PATH):
            self._handle_api(fake, request)
            return
        if self.command == "GET" and self.path == "/id/%s/%s" % (ORG_ID, USER_ID):
            self._handle_identity(fake, request)
            return
        if self.command != "POST" or urllib.parse.urlsplit(self.path).path != TOKEN_PATH:
            self._send(404, "text/html", b"<html><body>Not Found</body></html>")
            return

        time.sleep(fake.login_delay)
        try:
            behaviour = fake.queue.pop(0)
        except IndexError:
            behaviour = fake.behaviour
        if behaviour == "rate_limited":
            self._send(429, "text/plain", b"Too many requests", [("Retry-After", "1")])
            return
        if behaviour == "bad_gateway":
            self._send(502, "text/html", b"<html><head><title>502 Bad Gateway</title></head></html>")
            return
        if behaviour == "oauth_error":
            status, error, description = fake.scripted_error
            self._send_json(status, {"error": error, "error_description": description})
            return
        if behaviour == "maintenance":
            self._send(503, "text/html", _MAINTENANCE_PAGE)
            return
        if behaviour == "redirect":
            location = "https://localhost:%d%s" % (fake.port, TOKEN_PATH)
            self._send(302, "text/html", b"<html><body>Moved</body></html>", [("Location", location)])
            return
        if behaviour == "reset":
            self._reset_connection()
            return
        if behaviour == "stall":
            fake.release.wait(STALL_SECONDS)

        status, error_body = fake.check(request)
        if status != 200:
            self._send_json(status, error_body)
            return
        if behaviour == "html_200":
            self._send(200, "text/html", _LOGIN_PAGE)
            return

        body = fake.success_body()
        if behaviour == "no_access_token":
            del body["access_token"]
        if behaviour == "http_instance_url":
            body["instance_url"] = "http://example.invalid"
        fake.issued.append(body)
        self._send_json(200, body)

    def date_time_string(self, timestamp=None):
        return http.server.BaseHTTPRequestHandler.date_time_string(self, time.time() + self.server.fake.date_offset)

    def _handle_identity(self, fake, request):
        """Respond like the identity URL: the org and user of a live bearer token."""
        authorization = request.headers.get("Authorization", "")
        token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
        if token not in fake.issued_tokens or token in fake.revoked or fake.revoke_all:
            self._send_json(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
            return
        self._send_json(200, {"organization_id": ORG_ID, "user_id": USER_ID, "username": USERNAME})

    def _handle_api(self, fake, request):
        """Answer like the REST API: 401 INVALID_SESSION_ID unless the bearer token is live."""
        authorization = request.headers.get("Authorization", "")
        token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
        if token not in fake.issued_tokens or token in fake.revoked or fake.revoke_all:
            self._send_json(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
            return
        if self.path == API_PATH + "/text":
            self._send(200, "text/plain", b"plain text answer")
            return
        echo = json.loads(request.body.decode("utf-8")) if request.body else None
        self._send_json(200, {"method": request.method, "path": request.path, "echo": echo})

    def _send_json(self, status, document):
        self._send(status, "application/json;charset=UTF-8", json.dumps(document).encode("utf-8"))

    def _send(self, status, content_type, body, extra_headers=()):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache,must-revalidate,max-age=0,no-store,private")
            for name, value in extra_headers:
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            # A client that timed out has gone away; the stall tests expect that.
            self.close_connection = True

    def _reset_connection(self):
        # A zero linger time makes close() send a TCP RST instead of a FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


# --- Fixtures ----------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def private_fixture_modes():
    """Make fixture private keys mode 0600: git checks files out as 0644, and sf_jwt warns about those."""
    for path in TESTDATA.iterdir():
        if path.suffix in (".key", ".der", ".p12") or path.name == "openssh_key" or b"PRIVATE KEY" in path.read_bytes():
            path.chmod(0o600)


@pytest.fixture(autouse=True)
def outside_connections(monkeypatch):
    """Block and list every host name lookup that is not loopback."""
    attempts = []
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback_host(host):
            attempts.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "the test suite blocks non-loopback host %r" % (host,))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only_getaddrinfo)
    yield attempts
    assert attempts == [], "the code under test tried to reach hosts outside loopback"


@pytest.fixture
def start_fake():
    started = []

    def start(tls=True, host="127.0.0.1"):
        fake = FakeSalesforce(tls=tls, host=host)
        fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def fake(start_fake):
    return start_fake()


@pytest.fixture(scope="module")
def signing_key():
    return sf_jwt.load_private_key(KEY_PKCS1)


def _assertion_for(signing_key, **overrides):
    arguments = {"client_id": CONSUMER_KEY, "username": USERNAME, "key": signing_key}
    arguments.update(overrides)
    return sf_jwt.create_assertion(**arguments)


def _get_token(fake, **overrides):
    arguments = {
        "client_id": CONSUMER_KEY,
        "username": USERNAME,
        "private_key": str(KEY_PKCS1),
        "login_url": fake.base_url,
        "ca_file": str(CA_CERT),
        "timeout": 10,
    }
    arguments.update(overrides)
    return sf_jwt.get_token(**arguments)


# --- The fake endpoint itself -------------------------------------------------


def _post(url, body, content_type=FORM_CONTENT_TYPE, method="POST"):
    """Send one request with urllib and return (status, parsed JSON or raw bytes)."""
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", content_type)
    context = ssl.create_default_context(cafile=str(CA_CERT))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, json.loads(payload.decode("utf-8"))
    except ValueError:
        return status, payload


def _pyjwt_assertion(key_path=KEY_PKCS1, algorithm="RS256", exp_offset=180, **changes):
    """Build an assertion with PyJWT; ``changes`` replace or add claims."""
    payload = {"iss": CONSUMER_KEY, "sub": USERNAME, "aud": LOGIN_AUDIENCE, "exp": int(time.time()) + exp_offset}
    payload.update(changes)
    key = pathlib.Path(key_path).read_bytes() if algorithm == "RS256" else "shared secret " * 4
    token = jwt.encode(payload, key, algorithm=algorithm)
    return token.decode("ascii") if isinstance(token, bytes) else token


def _form(assertion, grant_type=JWT_BEARER_GRANT):
    return urllib.parse.urlencode({"grant_type": grant_type, "assertion": assertion}).encode("ascii")


def test_fake_accepts_pyjwt_assertion(fake):
    status, body = _post(fake.token_url, _form(_pyjwt_assertion()))

    assert status == 200
    assert sorted(body) == ["access_token", "id", "instance_url", "issued_at", "scope", "signature", "token_type"]
    assert body["instance_url"] == "https://127.0.0.1:%d" % fake.port
    assert body["id"] == "https://127.0.0.1:%d/id/%s/%s" % (fake.port, ORG_ID, USER_ID)
    assert re.match(r"\A00D[0-9A-Za-z]{12}!AQ[0-9A-Za-z.]{96}\Z", body["access_token"])
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "api"
    assert re.match(r"\A\d{13}\Z", body["issued_at"])


def test_fake_issues_new_token_each_call(fake):
    first = _post(fake.token_url, _form(_pyjwt_assertion()))[1]
    second = _post(fake.token_url, _form(_pyjwt_assertion()))[1]

    assert first["access_token"] != second["access_token"]
    assert fake.issued_tokens == [first["access_token"], second["access_token"]]


def _plain_base64_assertion():
    # The same JWT encoded with standard base64: "+", "/" and "=" padding.
    header = base64.b64encode(b'{"alg":"RS256"}').decode("ascii")
    claims = base64.b64encode(json.dumps({"iss": CONSUMER_KEY, "sub": USERNAME}).encode("ascii")).decode("ascii")
    signature = base64.b64encode(b"\xfb\xff" * 128).decode("ascii")
    return ".".join([header, claims, signature])


UNSUPPORTED_GRANT = ("unsupported_grant_type", "grant type not supported")
INVALID_CLIENT = ("invalid_client", "invalid client credentials")


@pytest.mark.parametrize(
    "body, content_type, expected",
    [
        (json.dumps({"grant_type": JWT_BEARER_GRANT}).encode("ascii"), "application/json", UNSUPPORTED_GRANT),
        (_form("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", grant_type="urn:ietf:params:oauth:grant-type:jwt_bearer"),
         FORM_CONTENT_TYPE, UNSUPPORTED_GRANT),
        (_form(_plain_base64_assertion()), FORM_CONTENT_TYPE, INVALID_CLIENT),
        (_form("eyJhbGciOiJSUzI1NiJ9.e30"), FORM_CONTENT_TYPE, INVALID_CLIENT),
    ],
    ids=["json body", "misspelled grant", "plain base64", "two segments"],
)
def test_fake_rejects_malformed_request(fake, body, content_type, expected):
    status, response = _post(fake.token_url, body, content_type)

    assert status == 400
    assert (response["error"], response["error_description"]) == expected


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"algorithm": "HS256"}, ("invalid_client", "invalid client credentials")),
        ({"iss": "3MVG9someOtherApp"}, ("invalid_client_id", "client identifier invalid")),
        ({"key_path": OTHER_KEY}, ("invalid_grant", "invalid assertion")),
        ({"aud": TEST_AUDIENCE}, ("invalid_grant", "audience is invalid")),
        ({"aud": [LOGIN_AUDIENCE]}, ("invalid_grant", "audience is invalid")),
        ({"exp": 1300819380}, ("invalid_grant", "expired authorization code")),
        ({"exp_offset": -5}, ("invalid_grant", "expired authorization code")),
        ({"exp_offset": 3600}, ("invalid_grant", "expired authorization code")),
        ({"exp": "1900000000"}, ("invalid_grant", "expired authorization code")),
        ({"sub": NOT_APPROVED_USER}, ("invalid_grant", "user hasn't approved this consumer")),
        ({"sub": INACTIVE_USER}, ("invalid_grant", "inactive user")),
        ({"sub": "nobody@example.com"}, ("invalid_grant", "user hasn't approved this consumer")),
        ({"prn": NOT_APPROVED_USER}, ("invalid_grant", "user hasn't approved this consumer")),
    ],
    ids=["hs256", "iss", "other key", "aud test", "aud list", "exp 2011", "exp past", "exp hour", "exp string",
         "not approved", "inactive", "unknown user", "prn wins"],
)
def test_fake_rejects_assertion(fake, changes, expected):
    status, response = _post(fake.token_url, _form(_pyjwt_assertion(**changes)))

    assert status == 400
    assert (response["error"], response["error_description"]) == expected


@pytest.mark.parametrize("method, path", [("GET", TOKEN_PATH), ("POST", "/services/oauth2/authorize")])
def test_fake_returns_404_elsewhere(fake, method, path):
    body = _form(_pyjwt_assertion()) if method == "POST" else None

    status, _ = _post(fake.base_url + path, body, method=method)

    assert status == 404


def test_fake_records_request(fake):
    assertion = _pyjwt_assertion()
    _post(fake.token_url, _form(assertion))

    [request] = fake.requests
    assert request.method == "POST"
    assert request.path == TOKEN_PATH
    assert request.headers["Content-Type"] == FORM_CONTENT_TYPE
    assert request.form == {"grant_type": [JWT_BEARER_GRANT], "assertion": [assertion]}
    assert request.claims["sub"] == USERNAME


# --- Public names and errors --------------------------------------------------


def test_version_is_dotted_string():
    assert re.match(r"\A\d+\.\d+(\.\d+)?", sf_jwt.__version__)


@pytest.mark.parametrize(
    "name",
    ["base64url_encode", "base64url_decode", "load_private_key", "SigningKey", "build_claims", "sign_rs256",
     "create_assertion", "request_token", "get_token", "Token", "SalesforceJWTError", "ConfigurationError",
     "InvalidKeyError", "DecodeError", "AuthenticationError", "TransportError"],
)
def test_all_lists_public_name(name):
    assert name in sf_jwt.__all__


@pytest.mark.parametrize(
    "error, bases",
    [
        ("ConfigurationError", ("SalesforceJWTError", ValueError)),
        ("InvalidKeyError", ("ConfigurationError", "SalesforceJWTError", ValueError)),
        ("DecodeError", ("SalesforceJWTError", ValueError)),
        ("AuthenticationError", ("SalesforceJWTError",)),
        ("TransportError", ("SalesforceJWTError",)),
        ("SalesforceJWTError", (Exception,)),
    ],
)
def test_error_hierarchy(error, bases):
    for base in bases:
        base_class = getattr(sf_jwt, base) if isinstance(base, str) else base
        assert issubclass(getattr(sf_jwt, error), base_class), base


@pytest.mark.parametrize("error", ["AuthenticationError", "TransportError"])
def test_network_errors_are_not_value_errors(error):
    assert not issubclass(getattr(sf_jwt, error), ValueError)


# --- base64url ---------------------------------------------------------------

# RFC 4648 section 10 test vectors without padding, plus the two characters
# that differ from standard base64.
BASE64URL_VECTORS = [
    (b"", ""),
    (b"f", "Zg"),
    (b"fo", "Zm8"),
    (b"foo", "Zm9v"),
    (b"foob", "Zm9vYg"),
    (b"fooba", "Zm9vYmE"),
    (b"foobar", "Zm9vYmFy"),
    (b"\xfb\xff\xbf", "-_-_"),
    (b'{"alg":"RS256"}', "eyJhbGciOiJSUzI1NiJ9"),
]


@pytest.mark.parametrize("data, text", BASE64URL_VECTORS)
def test_base64url_encode_vector(data, text):
    encoded = sf_jwt.base64url_encode(data)

    assert encoded == text
    assert type(encoded) is str


@pytest.mark.parametrize("data, text", BASE64URL_VECTORS)
def test_base64url_decode_vector(data, text):
    assert sf_jwt.base64url_decode(text) == data


@pytest.mark.parametrize(
    "text, data", [("Zg==", b"f"), ("Zm8=", b"fo"), (b"Zm9vYg==", b"foob"), (b"-_-_", b"\xfb\xff\xbf")]
)
def test_base64url_decode_padded_or_bytes(text, data):
    assert sf_jwt.base64url_decode(text) == data


@pytest.mark.parametrize("text", ["+_8", "-/8", "Zm9v!", "Zm9v Yg", "Zm9v\nYg", "Zm9v\u00e9", "Zm*v", b"Zm9+"])
def test_base64url_decode_rejects_character(text):
    with pytest.raises(sf_jwt.DecodeError):
        sf_jwt.base64url_decode(text)


def test_base64url_decode_rejects_impossible_length():
    with pytest.raises(sf_jwt.DecodeError):
        sf_jwt.base64url_decode("Zm9vY")


@given(st.binary(max_size=300))
def test_base64url_encode_matches_stdlib(data):
    assert sf_jwt.base64url_encode(data) == _bytes_to_b64url(data)


@given(st.binary(max_size=300))
def test_base64url_round_trip(data):
    assert sf_jwt.base64url_decode(sf_jwt.base64url_encode(data)) == data


# --- Loading keys ---------------------------------------------------------------

KEY_FILES = ["jwt_key_pkcs1.pem", "jwt_key_pkcs8.pem", "jwt_key_pkcs1.der", "jwt_key_pkcs8.der", "jwt_cert_and_key.pem"]


def _key_source(name, form):
    path = TESTDATA / name
    if form == "str path":
        return str(path)
    if form == "pathlib":
        return path
    if form == "bytes":
        return path.read_bytes()
    return path.read_text()


@pytest.mark.parametrize(
    "name, form",
    [(name, form) for name in KEY_FILES for form in ("str path", "pathlib", "bytes", "text")
     if not (form == "text" and name.endswith(".der"))],
)
def test_load_key_container(name, form):
    key = sf_jwt.load_private_key(_key_source(name, form))

    assert key.public_numbers == _crypto_public_numbers(KEY_PKCS1)
    assert key.bits == 2048


def _key_text_variant(path, variant):
    text = pathlib.Path(path).read_text()
    if variant == "crlf":
        return text.replace("\n", "\r\n")
    if variant == "cr":
        return text.replace("\n", "\r")
    if variant == "bom":
        return "\ufeff" + text
    if variant == "surrounding whitespace":
        return "\n \t\n  " + text + "  \n\n\t "
    if variant == "escaped newlines":
        return text.replace("\n", "\\n")
    raise AssertionError(variant)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize("variant", ["crlf", "cr", "bom", "surrounding whitespace", "escaped newlines"])
@pytest.mark.parametrize("path", [KEY_PKCS1, KEY_PKCS8], ids=["pkcs1", "pkcs8"])
def test_load_key_text_variant(path, variant, as_bytes):
    source = _key_text_variant(path, variant)
    if as_bytes:
        source = source.encode("utf-8")

    key = sf_jwt.load_private_key(source)

    assert key.public_numbers == _crypto_public_numbers(path)


def test_load_key_variant_from_file(tmp_path):
    path = tmp_path / "windows_key.pem"
    path.write_bytes(b"\xef\xbb\xbf" + KEY_PKCS8.read_bytes().replace(b"\n", b"\r\n"))

    key = sf_jwt.load_private_key(str(path))

    assert key.public_numbers == _crypto_public_numbers(KEY_PKCS8)


@pytest.mark.parametrize("name", KEY_FILES + ["rsa1024.pem", "rsa3072.pem", "rsa2048_e3.pem", "other_key.pem"])
def test_key_fingerprint_matches_spki_digest(name):
    path = TESTDATA / name
    source = path.read_bytes()
    if name == "jwt_cert_and_key.pem" or name.endswith(".der"):
        path = KEY_PKCS1
    spki = _crypto_private_key(path).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    key = sf_jwt.load_private_key(source)

    assert key.fingerprint == "sha256:" + hashlib.sha256(spki).hexdigest()


@pytest.mark.skipif(not shutil.which("openssl"), reason="the openssl command is not installed")
def test_key_fingerprint_matches_openssl(signing_key):
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(KEY_PKCS1), "-pubout", "-outform", "DER"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=SUBPROCESS_TIMEOUT, check=True,
    ).stdout

    assert signing_key.fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("name, bits, exponent", [("rsa1024.pem", 1024, 65537), ("rsa3072.pem", 3072, 65537),
                                                  ("rsa2048_e3.pem", 2048, 3)])
def test_key_bits_and_exponent(name, bits, exponent):
    key = sf_jwt.load_private_key(TESTDATA / name)

    assert key.bits == bits
    assert key.public_numbers[1] == exponent


@pytest.mark.parametrize("show", [repr, str])
def test_key_repr_hides_private_numbers(signing_key, show):
    text = show(signing_key)
    numbers = _private_numbers(KEY_PKCS1)

    assert "2048" in text
    assert signing_key.fingerprint in text
    for name in ("d", "p", "q", "dp", "dq", "qi"):
        assert str(numbers[name]) not in text, name
        assert "%x" % numbers[name] not in text.lower(), name
    for line in _pem_body_lines(KEY_PKCS1):
        assert line not in text


# (file, words that the message must contain, case-insensitive)
WRONG_KEY_FILES = [
    ("jwt_cert.crt", ["certificate", "private key"]),
    ("jwt_cert.der", ["certificate", "private key"]),
    ("jwt_public.pem", ["public key"]),
    ("jwt_public_pkcs1.pem", ["public key"]),
    ("ec_key.pem", ["rsa"]),
    ("ec_key_pkcs8.pem", ["rsa"]),
    ("ed25519_key.pem", ["rsa"]),
    ("dsa_key.pem", ["rsa"]),
    ("rsa_pss_key.pem", ["rsa"]),
    ("openssh_key", ["openssh", "ssh-keygen"]),
    ("rsa_multiprime.pem", ["prime"]),
]


@pytest.mark.parametrize("form", ["str path", "bytes"])
@pytest.mark.parametrize("name, words", WRONG_KEY_FILES, ids=[row[0] for row in WRONG_KEY_FILES])
def test_load_key_rejects_file(name, words, form):
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(_key_source(name, form))

    message = str(caught.value)
    for word in words:
        assert word in message.lower(), word
    if not name.endswith((".der", ".p12")):
        for line in _pem_body_lines(TESTDATA / name):
            assert line not in message


@pytest.mark.parametrize("source", [b"", "", "empty file"], ids=["bytes", "str", "file"])
def test_load_key_rejects_empty(source, tmp_path):
    if source == "empty file":
        path = tmp_path / "empty.pem"
        path.write_bytes(b"")
        source = str(path)

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(source)

    assert "empty" in str(caught.value).lower()


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "pathlib"])
def test_load_key_missing_file(tmp_path, as_path):
    path = tmp_path / "no_such_key.pem"

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(path if as_path else str(path))

    assert "not found" in str(caught.value).lower()
    assert str(path) in str(caught.value)


def _random_bytes(size, seed):
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "big")


@pytest.mark.parametrize(
    "source",
    [
        _random_bytes(1, 1),
        _random_bytes(64, 2),
        _random_bytes(1200, 3),
        b"\x30\x82\x04\xa4" + _random_bytes(1188, 4),
        b"\x30\x82\x04\xa4\x02\x01\x00\x02\x82\x01\x01" + _random_bytes(1177, 5),
    ],
    ids=["1 byte", "64 bytes", "1200 bytes", "sequence header", "pkcs1 prefix"],
)
def test_load_key_rejects_random_bytes(source):
    with pytest.raises(sf_jwt.InvalidKeyError):
        sf_jwt.load_private_key(source)


@pytest.mark.parametrize("cut", [1, 4, 30, 300, 900, -1])
@pytest.mark.parametrize("name", ["jwt_key_pkcs1.der", "jwt_key_pkcs8.der"])
def test_load_key_rejects_truncated_der(name, cut):
    der = (TESTDATA / name).read_bytes()

    with pytest.raises(sf_jwt.InvalidKeyError):
        sf_jwt.load_private_key(der[:cut])


def _truncated_pem(path, cut):
    lines = pathlib.Path(path).read_text().splitlines(True)
    if cut == "no end line":
        return "".join(lines[: len(lines) // 2])
    if cut == "body cut":
        return "".join(lines[: len(lines) // 2] + lines[-1:])
    if cut == "tail cut":
        # Drop the last body line and half of the one before it.
        return "".join(lines[:-3] + [lines[-3][:32] + "\n"] + lines[-1:])
    raise AssertionError(cut)


@pytest.mark.parametrize("cut", ["no end line", "body cut", "tail cut"])
@pytest.mark.parametrize("path", [KEY_PKCS1, KEY_PKCS8], ids=["pkcs1", "pkcs8"])
def test_load_key_rejects_truncated_pem(path, cut):
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(_truncated_pem(path, cut))

    for line in _pem_body_lines(path):
        assert line not in str(caught.value)


def test_der_writer_matches_openssl():
    assert _pkcs1_der(**_private_numbers(KEY_PKCS1)) == (TESTDATA / "jwt_key_pkcs1.der").read_bytes()


@pytest.mark.parametrize("field, offset", [("n", 2), ("e", 2), ("d", 2), ("p", 2), ("q", 2), ("dp", 2), ("dq", 2),
                                           ("qi", 1)])
def test_load_key_rejects_inconsistent_numbers(field, offset):
    numbers = _private_numbers(KEY_PKCS1)
    numbers[field] += offset

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(_pkcs1_der(**numbers))

    message = str(caught.value).lower()
    for name in ("d", "p", "q", "dp", "dq", "qi"):
        assert str(numbers[name]) not in message, name
        assert "%x" % numbers[name] not in message, name


# --- Encrypted keys and PKCS#12 -------------------------------------------------
#
# The fixtures in testdata/ use the password "fixture-password". Most other
# encrypted files are made at test time by the openssl command (3.0 or newer)
# from testdata/jwt_key_pkcs1.pem; those tests are skipped without it.

KEY_PASSWORD = "fixture-password"
_WRONG_KEY_PASSWORD = "wrong-password-8d41"
ENCRYPTED_FIXTURES = ["jwt_key_encrypted_pkcs8.pem", "jwt_key_encrypted_pkcs1.pem", "jwt_key.p12"]
_TEST_ORIGIN = sf_jwt._KeyOrigin("the key file test.key", "test.key")
JWT_CERT_DER = (TESTDATA / "jwt_cert.der").read_bytes()
MISSING_PASSWORD_MESSAGE = (
    "{} is encrypted: pass its password with --jwt-key-password-file FILE or the SF_JWT_KEY_PASSWORD variable "
    "(sf-jwt), or the password argument (load_private_key)"
)
WRONG_PASSWORD_MESSAGE = (
    "{} cannot be decrypted: the password is wrong (or the file was altered after it was encrypted)"
)

PASSWORDS = {
    "empty": "",
    "ascii": "fixture-password",
    "latin": "pässwörd",
    "cjk": "密码パスワード",
    "long": "Tr0ub4dor&3-correct-horse-battery-staple-0123456789-abcdefghijklmnopqr",
}


def _openssl_major_version():
    if not shutil.which("openssl"):
        return 0
    output = subprocess.run(["openssl", "version"], stdout=subprocess.PIPE, universal_newlines=True).stdout
    match = re.match(r"OpenSSL (\d+)\.", output)
    return int(match.group(1)) if match else 0


needs_openssl3 = pytest.mark.skipif(_openssl_major_version() < 3, reason="needs the openssl command, 3.0 or newer")


def _openssl(*arguments):
    completed = subprocess.run(["openssl"] + [str(argument) for argument in arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=SUBPROCESS_TIMEOUT)
    if completed.returncode != 0:
        raise AssertionError("openssl {} failed: {}".format(" ".join(map(str, arguments)), completed.stderr.decode()))
    return completed.stdout


def _numbers_of(key):
    """Return (n, e, d, p, q) of an rsa.PrivateKey or a SigningKey."""
    key = getattr(key, "rsa_key", key)
    return (key.n, key.e, key.d, key.p, key.q)


def _crypto_numbers(key):
    numbers = key.private_numbers()
    return (numbers.public_numbers.n, numbers.public_numbers.e, numbers.d, numbers.p, numbers.q)


_ORIGINAL_NUMBERS = tuple(_private_numbers(KEY_PKCS1)[name] for name in ("n", "e", "d", "p", "q"))
_OTHER_NUMBERS = tuple(_private_numbers(OTHER_KEY)[name] for name in ("n", "e", "d", "p", "q"))


def _assert_decrypted_key(der, expected=_ORIGINAL_NUMBERS):
    """Check decrypted PrivateKeyInfo or RSAPrivateKey DER with sf_jwt's parser and with cryptography's."""
    assert _numbers_of(sf_jwt._key_from_der(der, _TEST_ORIGIN, None)) == expected
    assert _crypto_numbers(serialization.load_der_private_key(der, None)) == expected


def _read_bytes(path):
    return pathlib.Path(path).read_bytes()


def _first_pem_block(path):
    return sf_jwt._pem_blocks(pathlib.Path(path).read_text(), _TEST_ORIGIN)[0]


def _first_pem_der(path):
    return sf_jwt._pem_block_der(_first_pem_block(path), _TEST_ORIGIN)


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
@pytest.mark.parametrize("form", ["str path", "pathlib", "bytes"])
def test_encrypted_fixture_loads(name, form):
    key = sf_jwt.load_private_key(_key_source(name, form), KEY_PASSWORD)

    assert _numbers_of(key) == _ORIGINAL_NUMBERS
    assert key.fingerprint == sf_jwt.load_private_key(KEY_PKCS1).fingerprint


def test_legacy_pkcs12_fixture_loads(caplog):
    caplog.set_level(logging.INFO, logger="sf_jwt")
    path = TESTDATA / "jwt_key_legacy.p12"

    key = sf_jwt.load_private_key(path, KEY_PASSWORD)

    assert _numbers_of(key) == _ORIGINAL_NUMBERS
    assert "skipped a part of the key file {} that is encrypted with pbeWithSHAAnd40BitRC2-CBC, which sf_jwt " \
        "cannot decrypt".format(path) in caplog.text


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
@pytest.mark.parametrize("password", [KEY_PASSWORD.encode("ascii"), bytearray(KEY_PASSWORD.encode("ascii"))])
def test_encrypted_fixture_bytes_password(name, password):
    key = sf_jwt.load_private_key(TESTDATA / name, password)

    assert _numbers_of(key) == _ORIGINAL_NUMBERS


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_encrypted_fixture_missing_password(name):
    path = TESTDATA / name
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(path)

    assert str(caught.value) == MISSING_PASSWORD_MESSAGE.format("the key file {}".format(path))


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
@pytest.mark.parametrize("password", ["wrong", "Fixture-password", "fixture-password ", "", "fixture-passwordx"])
def test_encrypted_fixture_wrong_password(name, password):
    path = TESTDATA / name
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(path, password)

    assert str(caught.value) == WRONG_PASSWORD_MESSAGE.format("the key file {}".format(path))


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_encrypted_key_text_and_base64(name):
    data = (TESTDATA / name).read_bytes()
    wrapped = base64.b64encode(data).decode("ascii")
    sources = [wrapped, "\n".join(wrapped[i:i + 64] for i in range(0, len(wrapped), 64))]
    if not name.endswith(".p12"):
        sources.append(data.decode("ascii").replace("\n", "\\n"))

    for source in sources:
        assert _numbers_of(sf_jwt.load_private_key(source, KEY_PASSWORD)) == _ORIGINAL_NUMBERS


@pytest.mark.parametrize("password", [1234, ["fixture-password"], memoryview(b"fixture-password")])
def test_password_of_wrong_type(password):
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(KEY_PKCS1, password)

    assert str(caught.value) == "the password must be a str or bytes, not a {}".format(type(password).__name__)


def test_password_for_plain_key_ignored(caplog):
    caplog.set_level(logging.DEBUG, logger="sf_jwt")

    key = sf_jwt.load_private_key(KEY_PKCS8, "unused-password")

    assert _numbers_of(key) == _ORIGINAL_NUMBERS
    assert "is not encrypted, so the password given is not used" in caplog.text
    assert "unused-password" not in caplog.text


def test_password_never_in_error_or_log(caplog):
    caplog.set_level(logging.DEBUG, logger="sf_jwt")
    secret = "not-the-password-3f9c1e"

    for name in ENCRYPTED_FIXTURES:
        with pytest.raises(sf_jwt.InvalidKeyError) as caught:
            sf_jwt.load_private_key(TESTDATA / name, secret)
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)
    assert secret not in caplog.text


def test_missing_password_error_class():
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(TESTDATA / "jwt_key.p12")

    assert isinstance(caught.value, sf_jwt.ConfigurationError)
    assert caught.value.description == "the key file {}".format(TESTDATA / "jwt_key.p12")


def test_password_encodings():
    assert sf_jwt._password_forms("") == (b"", b"\x00\x00")
    assert sf_jwt._password_forms("pä") == (b"p\xc3\xa4", b"\x00p\x00\xe4\x00\x00")
    assert sf_jwt._password_forms(b"p\xc3\xa4") == (b"p\xc3\xa4", b"\x00p\x00\xe4\x00\x00")
    # Bytes that are not UTF-8 become one BMP character per byte, as in OpenSSL 3.
    assert sf_jwt._password_forms(b"p\xe4") == (b"p\xe4", b"\x00p\x00\xe4\x00\x00")
    # os.environ turns such bytes into surrogate escapes on POSIX, and they become the bytes again.
    assert sf_jwt._password_forms("p\udce4") == (b"p\xe4", b"\x00p\x00\xe4\x00\x00")
    assert sf_jwt._password_forms("😀").bmp == b"\xd8\x3d\xde\x00\x00\x00"


def test_password_with_lone_surrogate():
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(TESTDATA / "jwt_key.p12", "p\ud800")

    assert str(caught.value) == "the password contains an unpaired surrogate character"


def test_md5_blocked_gives_conversion_command(monkeypatch):
    # Python builds in FIPS mode reject MD5; this machine's does not, so the rejection is simulated.
    def blocked_md5(*args, **kwargs):
        raise ValueError("[digital envelope routines] unsupported")

    monkeypatch.setattr(hashlib, "md5", blocked_md5)
    path = TESTDATA / "jwt_key_encrypted_pkcs1.pem"
    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(path, KEY_PASSWORD)

    assert str(caught.value) == (
        "the key file {0} is encrypted with an MD5-derived key, and this Python blocks MD5: convert it to "
        "encrypted PKCS#8 by running 'openssl pkcs8 -topk8 -v2 aes-256-cbc -in {0} -out key-pkcs8.pem' and pass "
        "the new file".format(path)
    )


@pytest.mark.parametrize("name, data, expected", [
    ("jwt_key_pkcs1.pem", None, "PKCS#1 PEM"),
    ("jwt_key_pkcs8.der", None, "PKCS#8 DER"),
    ("jwt_key_encrypted_pkcs8.pem", None, "encrypted PKCS#8 PEM"),
    ("jwt_key_encrypted_pkcs1.pem", None, "PKCS#1 PEM encrypted by OpenSSL with AES-256-CBC"),
    ("jwt_key.p12", None, "PKCS#12"),
    ("jwt_key.p12", "base64", "PKCS#12 in base64"),
    ("jwt_key_legacy.p12", None, "PKCS#12 whose certificates sf_jwt cannot read (they are encrypted with RC2)"),
    ("jwt_key_encrypted_pkcs8.pem", "DER", "encrypted PKCS#8 DER"),
])
def test_key_container_described(name, data, expected):
    raw = (TESTDATA / name).read_bytes()
    if data == "base64":
        raw = base64.b64encode(raw)
    elif data == "DER":
        raw = _first_pem_der(TESTDATA / name)

    container, certificates = sf_jwt._describe_key_container(raw, KEY_PASSWORD, _TEST_ORIGIN)

    assert container == expected
    assert certificates == ([JWT_CERT_DER] if name == "jwt_key.p12" else [])


def test_cipher_tables_built_on_first_use():
    code = ("import sf_jwt; before = sorted(sf_jwt._cipher_tables); "
            "sf_jwt.load_private_key('testdata/jwt_key_encrypted_pkcs8.pem', 'fixture-password'); "
            "print(before, sorted(sf_jwt._cipher_tables))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), stdout=subprocess.PIPE,
                               universal_newlines=True, timeout=SUBPROCESS_TIMEOUT)

    assert completed.stdout.strip() == "[] ['aes']"


# --- Cipher and KDF vectors ---

# FIPS-197 appendix C.1, C.2 and C.3: plaintext 00112233...eeff, key 000102... of 16, 24 and 32 bytes.
@pytest.mark.parametrize(
    "key_size, ciphertext",
    [
        (16, "69c4e0d86a7b0430d8cdb78070b4c55a"),
        (24, "dda97ca4864cdfe06eaf70a0ec0d7191"),
        (32, "8ea2b7ca516745bfeafc49904b496089"),
    ],
)
def test_aes_fips197_appendix_c(key_size, ciphertext):
    round_keys = sf_jwt._aes_decryption_round_keys(bytes(range(key_size)))
    plaintext = sf_jwt._aes_decrypt_block(int(ciphertext, 16), round_keys)
    assert plaintext == 0x00112233445566778899AABBCCDDEEFF


SP800_38A_PLAINTEXT = (
    "6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710"
)


# NIST SP 800-38A appendix F.2.2, F.2.4 and F.2.6 (CBC-AES128/192/256.Decrypt), IV 000102...0f.
@pytest.mark.parametrize(
    "cipher, key, ciphertext",
    [
        (
            "AES-128-CBC", "2b7e151628aed2a6abf7158809cf4f3c",
            "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
            "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7",
        ),
        (
            "AES-192-CBC", "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
            "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a"
            "571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd",
        ),
        (
            "AES-256-CBC", "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
            "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
        ),
    ],
)
def test_aes_cbc_sp800_38a(cipher, key, ciphertext):
    plaintext = sf_jwt._cbc_decrypt_blocks(cipher, bytes.fromhex(key), bytes(range(16)), bytes.fromhex(ciphertext))
    assert plaintext.hex() == SP800_38A_PLAINTEXT


@pytest.mark.parametrize("key_size", [16, 24, 32])
def test_aes_cbc_matches_cryptography(key_size):
    for length in (16, 48, 1232):
        key, iv, plaintext = os.urandom(key_size), os.urandom(16), os.urandom(length)
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        cipher = "AES-{}-CBC".format(key_size * 8)
        assert sf_jwt._cbc_decrypt_blocks(cipher, key, iv, ciphertext) == plaintext


# Single DES as TDEA with K1 = K2 = K3. The values were also reproduced with `openssl enc` (OpenSSL 3.0).
@pytest.mark.parametrize(
    "key, ciphertext, plaintext",
    [
        # NIST SP 800-20 table A.1 (variable plaintext known answer test), first three rows.
        ("0101010101010101", "95f8a5e5dd31d900", "8000000000000000"),
        ("0101010101010101", "dd7f121ca5015619", "4000000000000000"),
        ("0101010101010101", "2e8653104f3834ea", "2000000000000000"),
        # NIST SP 800-20 table A.2 (variable key known answer test), first row.
        ("8001010101010101", "95a8d72813daa94d", "0000000000000000"),
    ],
)
def test_des_sp800_20(key, ciphertext, plaintext):
    decrypted = sf_jwt._cbc_decrypt_blocks("DES-EDE3-CBC", bytes.fromhex(key) * 3, bytes(8), bytes.fromhex(ciphertext))
    assert decrypted.hex() == plaintext


def test_des_cbc_fips81():
    # The CBC example of FIPS 81: key 0123456789abcdef, IV 1234567890abcdef.
    ciphertext = bytes.fromhex("e5c7cdde872bf27c43e934008c389c0f683788499a7c05f6")
    key = bytes.fromhex("0123456789abcdef") * 3
    decrypted = sf_jwt._cbc_decrypt_blocks("DES-EDE3-CBC", key, bytes.fromhex("1234567890abcdef"), ciphertext)
    assert decrypted == b"Now is the time for all "


def test_tdea_sp800_67_example():
    # NIST SP 800-67 appendix B, three-key TDEA in ECB mode ("qufck" is the standard's spelling).
    key = bytes.fromhex("0123456789abcdef" "23456789abcdef01" "456789abcdef0123")
    schedules = sf_jwt._tdea_decryption_schedules(key)
    blocks = ["a826fd8ce53b855f", "cce21c8112256fe6", "68d5c05dd9b6b900"]
    plaintext = b"".join(sf_jwt._des_block(int(block, 16), schedules).to_bytes(8, "big") for block in blocks)
    assert plaintext == b"The qufck brown fox jump"


def test_tdea_cbc_matches_cryptography():
    for length in (8, 64, 1232):
        key, iv, plaintext = os.urandom(24), os.urandom(8), os.urandom(length)
        encryptor = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        assert sf_jwt._cbc_decrypt_blocks("DES-EDE3-CBC", key, iv, ciphertext) == plaintext


def test_pbkdf2_rfc6070():
    # RFC 6070 section 2: PBKDF2-HMAC-SHA1, a check of hashlib as sf_jwt uses it.
    one_round = hashlib.pbkdf2_hmac("sha1", b"password", b"salt", 1, 20)
    assert one_round.hex() == "0c60c80f961f0e71f3a9b524af6012062fe037a6"
    many_rounds = hashlib.pbkdf2_hmac("sha1", b"password", b"salt", 4096, 20)
    assert many_rounds.hex() == "4b007901b765489abead49d926f721d065a429c1"
    long_result = hashlib.pbkdf2_hmac(
        "sha1", b"passwordPASSWORDpassword", b"saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 25
    )
    assert long_result.hex() == "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"
    assert hashlib.pbkdf2_hmac("sha1", b"pass\0word", b"sa\0lt", 4096, 16).hex() == "56fa6aa75548099dcc37d7f03425e0c3"


# Stephen Henson's PKCS#12 KDF vectors (SHA-1), which OpenSSL's and Bouncy Castle's test suites
# carry; each was also reproduced with `openssl kdf ... PKCS12KDF` (OpenSSL 3.0).
@pytest.mark.parametrize(
    "password, salt, iterations, purpose, expected",
    [
        ("smeg", "0a58cf64530d823f", 1, 1, "8aaae6297b6cb04642ab5b077851284eb7128f1a2a7fbca3"),
        ("smeg", "0a58cf64530d823f", 1, 2, "79993dfe048d3b76"),
        ("smeg", "642b99ab44fb4b1f", 1, 1, "f3a95fec48d7711e985cfe67908c5ab79fa3d7c5caa5d966"),
        ("smeg", "642b99ab44fb4b1f", 1, 2, "c0a38d64a79bea1d"),
        ("smeg", "3d83c0e4546ac140", 1, 3, "8d967d88f6caa9d714800ab3d48051d63f73a312"),
        ("queeg", "05dec959acff72f7", 1000, 1, "ed2034e36328830ff09df1e1a07dd357185dac0d4f9eb3d4"),
    ],
)
def test_pkcs12_kdf_published_vectors(password, salt, iterations, purpose, expected):
    bmp = sf_jwt._password_forms(password).bmp
    derived = sf_jwt._pkcs12_kdf("sha1", bmp, bytes.fromhex(salt), iterations, purpose, len(expected) // 2)
    assert derived.hex() == expected


@needs_openssl3
@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("password_name", sorted(PASSWORDS))
def test_pkcs12_kdf_matches_openssl_kdf(hash_name, password_name):
    bmp = sf_jwt._password_forms(PASSWORDS[password_name]).bmp
    salt = bytes.fromhex("a1b2c3d4e5f60718")
    for purpose, size in ((1, 24), (2, 8), (3, 32), (1, 70)):
        expected = _openssl(
            "kdf", "-keylen", str(size), "-kdfopt", "digest:" + hash_name.upper(), "-kdfopt", "hexpass:" + bmp.hex(),
            "-kdfopt", "hexsalt:" + salt.hex(), "-kdfopt", "iter:2048", "-kdfopt", "id:{}".format(purpose),
            "PKCS12KDF",
        )
        derived = sf_jwt._pkcs12_kdf(hash_name, bmp, salt, 2048, purpose, size)
        assert derived.hex() == expected.decode().strip().replace(":", "").lower()


@needs_openssl3
def test_evp_bytes_to_key_matches_openssl():
    output = _openssl("enc", "-aes-256-cbc", "-k", "pässwörd", "-S", "0102030405060708", "-md", "md5", "-P")
    # The output has the lines "salt=...", "key=..." and "iv =...".
    values = {}
    for line in output.decode().splitlines():
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip()
    derived = sf_jwt._evp_bytes_to_key("pässwörd".encode("utf-8"), bytes.fromhex("0102030405060708"), 48)
    assert derived[:32].hex() == values["key"].lower()
    assert derived[32:].hex() == values["iv"].lower()


# --- Encrypted PKCS#8 made by openssl ---

V2_CIPHERS = ["aes-128-cbc", "aes-192-cbc", "aes-256-cbc", "des3"]
V2_PRFS = ["hmacWithSHA1", "hmacWithSHA224", "hmacWithSHA256", "hmacWithSHA384", "hmacWithSHA512"]


@needs_openssl3
@pytest.mark.parametrize("cipher", V2_CIPHERS)
@pytest.mark.parametrize("prf", V2_PRFS)
@pytest.mark.parametrize("password_name", sorted(PASSWORDS))
def test_pkcs8_pbes2(tmp_path, cipher, prf, password_name):
    password = PASSWORDS[password_name]
    path = tmp_path / "key.pem"
    _openssl(
        "pkcs8", "-topk8", "-v2", cipher, "-v2prf", prf, "-in", KEY_PKCS1, "-passout", "pass:" + password,
        "-out", str(path),
    )
    _assert_decrypted_key(sf_jwt._decrypt_pkcs8(_first_pem_der(path), password, _TEST_ORIGIN))


@needs_openssl3
@pytest.mark.parametrize("algorithm", ["PBE-SHA1-3DES", "PBE-SHA1-2DES"])
@pytest.mark.parametrize("password_name", sorted(PASSWORDS))
def test_pkcs8_pkcs12_pbe(tmp_path, algorithm, password_name):
    password = PASSWORDS[password_name]
    path = tmp_path / "key.pem"
    _openssl("pkcs8", "-topk8", "-v1", algorithm, "-in", KEY_PKCS1, "-passout", "pass:" + password, "-out", str(path))
    _assert_decrypted_key(sf_jwt._decrypt_pkcs8(_first_pem_der(path), password, _TEST_ORIGIN))


@needs_openssl3
def test_pkcs8_der_and_bytes_password(tmp_path):
    path = tmp_path / "key.der"
    _openssl("pkcs8", "-topk8", "-in", KEY_PKCS1, "-passout", "pass:pässwörd", "-outform", "DER", "-out", str(path))
    _assert_decrypted_key(sf_jwt._decrypt_pkcs8(_read_bytes(path), "pässwörd".encode("utf-8"), _TEST_ORIGIN))


@needs_openssl3
def test_pkcs8_without_key_length_or_prf(tmp_path):
    # -v2 aes-256-cbc -v2prf hmacWithSHA1 omits the PRF, so the SHA-1 default applies.
    path = tmp_path / "key.pem"
    _openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA1", "-in", KEY_PKCS1,
            "-passout", "pass:x", "-out", str(path))
    assert "hmacWithSHA" not in _openssl("asn1parse", "-in", str(path)).decode()
    _assert_decrypted_key(sf_jwt._decrypt_pkcs8(_first_pem_der(path), "x", _TEST_ORIGIN))


@needs_openssl3
@pytest.mark.parametrize("password_name", ["empty", "ascii", "cjk"])
def test_genpkey_aes256(tmp_path, password_name):
    password = PASSWORDS[password_name]
    path = tmp_path / "key.pem"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes256",
            "-pass", "pass:" + password, "-out", str(path))
    plain_path = tmp_path / "plain.pem"
    _openssl("pkey", "-in", str(path), "-passin", "pass:" + password, "-out", str(plain_path))
    expected = _crypto_numbers(_crypto_private_key(plain_path))
    _assert_decrypted_key(sf_jwt._decrypt_pkcs8(_first_pem_der(path), password, _TEST_ORIGIN), expected)


# --- Traditional PEM (Proc-Type and DEK-Info headers) made by openssl ---


@needs_openssl3
@pytest.mark.parametrize("cipher", ["-aes128", "-aes192", "-aes256", "-des3"])
@pytest.mark.parametrize("password_name", sorted(set(PASSWORDS) - {"empty"}))
def test_traditional_pem(tmp_path, cipher, password_name):
    # OpenSSL 3.0 refuses to write a traditional PEM key with an empty pass phrase, so "empty" is left out.
    password = PASSWORDS[password_name]
    path = tmp_path / "key.pem"
    _openssl("rsa", cipher, "-traditional", "-in", KEY_PKCS1, "-passout", "pass:" + password, "-out", str(path))
    block = _first_pem_block(path)
    assert block.headers["Proc-Type"] == "4,ENCRYPTED"
    _assert_decrypted_key(sf_jwt._decrypt_traditional_pem(block, password, _TEST_ORIGIN))


# --- PKCS#12 made by openssl ---

PKCS12_VARIANTS = {
    "default": [],
    "legacy": ["-legacy"],
    "3des-sha1-mac": ["-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1"],
    "2des-key": ["-keypbe", "PBE-SHA1-2DES", "-certpbe", "NONE"],
    "aes128-sha512-mac": ["-keypbe", "AES-128-CBC", "-certpbe", "AES-192-CBC", "-macalg", "sha512"],
    "unencrypted": ["-keypbe", "NONE", "-certpbe", "NONE"],
    "unencrypted-no-mac": ["-keypbe", "NONE", "-certpbe", "NONE", "-nomac"],
    "encrypted-no-mac": ["-nomac"],
}


def _make_pkcs12(directory, password, options, key_path=KEY_PKCS1, name="key.p12", cert_path=JWT_CERT):
    path = directory / name
    _openssl("pkcs12", "-export", "-inkey", key_path, "-in", cert_path, "-passout", "pass:" + password,
            "-out", str(path), *options)
    return _read_bytes(path)


@needs_openssl3
@pytest.mark.parametrize("variant", sorted(PKCS12_VARIANTS))
@pytest.mark.parametrize("password_name", sorted(PASSWORDS))
def test_pkcs12(tmp_path, variant, password_name):
    password = PASSWORDS[password_name]
    data = _make_pkcs12(tmp_path, password, PKCS12_VARIANTS[variant])
    keys, certificates, _ = sf_jwt._keys_from_pkcs12(data, password, _TEST_ORIGIN)
    assert len(keys) == 1
    _assert_decrypted_key(keys[0])
    # -legacy encrypts the certificate with RC2, which is skipped.
    assert certificates == ([] if variant == "legacy" else [_read_bytes(TESTDATA / "jwt_cert.der")])


@needs_openssl3
def test_pkcs12_default_mac_is_sha256(tmp_path):
    _make_pkcs12(tmp_path, "x", [])
    info = subprocess.run(
        ["openssl", "pkcs12", "-in", str(tmp_path / "key.p12"), "-info", "-noout", "-passin", "pass:x"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ).stdout.decode()
    assert "MAC: sha256" in info
    assert "PBES2, PBKDF2, AES-256-CBC" in info


@needs_openssl3
@pytest.mark.parametrize("password", [None, ""])
def test_pkcs12_empty_password_when_none_given(tmp_path, password):
    keys, _, _ = sf_jwt._keys_from_pkcs12(_make_pkcs12(tmp_path, "", []), password, _TEST_ORIGIN)
    _assert_decrypted_key(keys[0])


def test_pkcs12_made_by_cryptography_without_password():
    from cryptography.hazmat.primitives.serialization import pkcs12

    with open(KEY_PKCS1, "rb") as key_file:
        key = serialization.load_pem_private_key(key_file.read(), None)
    data = pkcs12.serialize_key_and_certificates(b"jwt", key, None, None, serialization.NoEncryption())
    keys, certificates, _ = sf_jwt._keys_from_pkcs12(data, None, _TEST_ORIGIN)
    _assert_decrypted_key(keys[0])
    assert certificates == []


def _spliced_pkcs12(directory, parts_of_first, parts_of_second):
    """Write a PFX without a MAC from AuthenticatedSafe parts of two openssl files, and return its bytes.

    openssl and cryptography write one key per file, so files with two keys are
    spliced. In OpenSSL 3's files part 0 contains the certificate and part 1 the
    key. The first file has the fixture key, the second testdata/other_key.pem.
    """
    first = _make_pkcs12(directory, "x", ["-nomac"], KEY_PKCS1, "first.p12")
    other_cert = directory / "other.crt"
    _openssl("req", "-x509", "-new", "-key", OTHER_KEY, "-subj", "/CN=other", "-days", "1", "-out", other_cert)
    second = _make_pkcs12(directory, "x", ["-nomac"], OTHER_KEY, "second.p12", other_cert)

    parts = []
    for data, selected in ((first, parts_of_first), (second, parts_of_second)):
        _, content_info = sf_jwt._der_sequence(data)
        _, content = sf_jwt._content_info(content_info)
        all_parts = [_der_tlv(tag, value) for tag, value in sf_jwt._der_sequence(content[1])]
        parts += [all_parts[index] for index in selected]
    authenticated_safe = _der_tlv(0x30, b"".join(parts))
    content_info = _der_tlv(0x30, _der_tlv(0x06, bytes.fromhex("2a864886f70d010701")) + _der_tlv(
        0xA0, _der_tlv(0x04, authenticated_safe)))
    combined = _der_tlv(0x30, _der_tlv(0x02, b"\x03") + content_info)
    (directory / "spliced.p12").write_bytes(combined)
    return combined


@needs_openssl3
def test_pkcs12_with_two_keys(tmp_path):
    combined = _spliced_pkcs12(tmp_path, [0, 1], [0, 1])
    # openssl reads the spliced file too, so it is a valid PFX.
    exported = _openssl("pkcs12", "-in", tmp_path / "spliced.p12", "-nodes", "-passin", "pass:x").decode()
    assert exported.count("BEGIN PRIVATE KEY") == 2

    keys, certificates, _ = sf_jwt._keys_from_pkcs12(combined, "x", _TEST_ORIGIN)
    assert len(keys) == 2
    _assert_decrypted_key(keys[0], _ORIGINAL_NUMBERS)
    _assert_decrypted_key(keys[1], _OTHER_NUMBERS)
    assert len(certificates) == 2


@needs_openssl3
@pytest.mark.parametrize("parts_of_first, parts_of_second, expected", [
    ([0, 1], [1], _ORIGINAL_NUMBERS),
    ([1], [0, 1], _OTHER_NUMBERS),
    ([1, 0], [1], _ORIGINAL_NUMBERS),
])
def test_pkcs12_key_with_certificate_chosen(tmp_path, caplog, parts_of_first, parts_of_second, expected):
    caplog.set_level(logging.INFO, logger="sf_jwt")
    combined = _spliced_pkcs12(tmp_path, parts_of_first, parts_of_second)

    key = sf_jwt.load_private_key(combined, "x")

    assert _numbers_of(key) == expected
    assert "the key data contains 2 private keys: using {}, the one whose certificate is in the file".format(
        key.fingerprint) in caplog.text


@needs_openssl3
@pytest.mark.parametrize("parts_of_first, parts_of_second, certified", [([0, 1], [0, 1], 2), ([1], [1], 0)])
def test_pkcs12_two_keys_unclear(tmp_path, parts_of_first, parts_of_second, certified):
    combined = _spliced_pkcs12(tmp_path, parts_of_first, parts_of_second)

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(combined, "x")

    assert str(caught.value) == (
        "the key data contains 2 private keys, and {} of them have a readable certificate in the file, so the key "
        "to use is unclear: export only the key whose certificate is uploaded to the Connected App".format(certified)
    )


@needs_openssl3
def test_pkcs12_without_key(tmp_path):
    path = tmp_path / "certificate.p12"
    _openssl("pkcs12", "-export", "-nokeys", "-in", JWT_CERT, "-passout", "pass:x", "-out", path)

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(path, "x")

    assert str(caught.value) == (
        "the key file {} is a PKCS#12 file with no private key (it contains 1 certificate): export the "
        "certificate together with its private key, and pass that file".format(path)
    )


@needs_openssl3
@pytest.mark.parametrize("kind", ["pkcs8", "pkcs12"])
def test_password_bytes_not_utf8(tmp_path, kind):
    # openssl takes the file's bytes as they are; for PKCS#12 it makes one BMP character of each byte.
    password_file = tmp_path / "password"
    password_file.write_bytes(b"p\xe4ss\n")
    path = tmp_path / "key"
    if kind == "pkcs8":
        _openssl("pkcs8", "-topk8", "-in", KEY_PKCS1, "-passout", "file:{}".format(password_file), "-out", path)
    else:
        _openssl("pkcs12", "-export", "-inkey", KEY_PKCS1, "-in", JWT_CERT, "-passout",
                 "file:{}".format(password_file), "-out", path)

    assert _numbers_of(sf_jwt.load_private_key(path, b"p\xe4ss")) == _ORIGINAL_NUMBERS
    assert _numbers_of(sf_jwt.load_private_key(path, "p\udce4ss")) == _ORIGINAL_NUMBERS


def _with_der_integer_replaced(data, old, new):
    """Re-encode DER with each INTEGER equal to old set to new, except inside OCTET STRINGs."""
    output = b""
    offset = 0
    while offset < len(data):
        tag, start, end = sf_jwt._der_read(data, offset, len(data))
        content = data[start:end]
        if tag & 0x20:
            content = _with_der_integer_replaced(content, old, new)
        elif tag == 0x02 and int.from_bytes(content, "big", signed=True) == old:
            content = new.to_bytes(new.bit_length() // 8 + 1, "big", signed=True)
        output += _der_tlv(tag, content)
        offset = end
    return output


@needs_openssl3
@pytest.mark.parametrize("kind, iterations, maximum", [
    ("pkcs8", 20000000, "10000000"),
    ("pkcs12 mac", 2000000, "1000000"),
])
def test_iteration_count_above_limit(tmp_path, kind, iterations, maximum):
    # The count is written into a file made with 2048 iterations, so openssl need not run millions of rounds.
    # In the PKCS#12 file only the MAC's count is outside an OCTET STRING.
    path = tmp_path / "key"
    if kind == "pkcs8":
        _openssl("pkcs8", "-topk8", "-in", KEY_PKCS1, "-passout", "pass:x", "-outform", "DER", "-out", path)
    else:
        _openssl("pkcs12", "-export", "-inkey", KEY_PKCS1, "-in", JWT_CERT, "-passout", "pass:x", "-out", path)
    altered = _with_der_integer_replaced(path.read_bytes(), 2048, iterations)

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(altered, "x")

    assert "is protected with {} iterations (sf_jwt stops at {}, so that a corrupt count cannot hang it)".format(
        iterations, maximum) in str(caught.value)


# --- Wrong, missing and unsupported ---


def _encrypted_files(directory):
    """Return (name, function to decrypt it) for one file of each kind, all with the password "right"."""
    pkcs8 = directory / "pkcs8.pem"
    _openssl("pkcs8", "-topk8", "-in", KEY_PKCS1, "-passout", "pass:right", "-out", str(pkcs8))
    traditional = directory / "traditional.pem"
    _openssl("rsa", "-aes256", "-traditional", "-in", KEY_PKCS1, "-passout", "pass:right", "-out", str(traditional))
    files = [
        ("pkcs8", lambda password: sf_jwt._decrypt_pkcs8(_first_pem_der(pkcs8), password, _TEST_ORIGIN)),
        ("traditional", lambda password: sf_jwt._decrypt_traditional_pem(_first_pem_block(traditional), password, _TEST_ORIGIN)),
    ]
    for variant in ("default", "legacy", "encrypted-no-mac"):
        data = _make_pkcs12(directory, "right", PKCS12_VARIANTS[variant], name=variant + ".p12")
        files.append((variant, lambda password, data=data: sf_jwt._keys_from_pkcs12(data, password, _TEST_ORIGIN)))
    return files


@needs_openssl3
def test_wrong_password_same_message(tmp_path):
    for name, decrypt in _encrypted_files(tmp_path):
        for password in ("wrong", "Right", "right ", "rightright"):
            with pytest.raises(sf_jwt.InvalidKeyError) as raised:
                decrypt(password)
            assert str(raised.value) == WRONG_PASSWORD_MESSAGE.format("the key file test.key"), name


@needs_openssl3
def test_missing_password_message(tmp_path):
    for name, decrypt in _encrypted_files(tmp_path):
        with pytest.raises(sf_jwt.InvalidKeyError) as raised:
            decrypt(None)
        expected = MISSING_PASSWORD_MESSAGE.format("the key file test.key")
        assert str(raised.value) == expected, name


@needs_openssl3
@pytest.mark.parametrize(
    "options, algorithm",
    [
        (["-v1", "PBE-SHA1-RC2-40"], "pbeWithSHAAnd40BitRC2-CBC"),
        (["-v1", "PBE-SHA1-RC4-128"], "pbeWithSHAAnd128BitRC4"),
        (["-v1", "PBE-MD5-DES"], "pbeWithMD5AndDES-CBC"),
        (["-v2", "des-cbc"], "DES-CBC"),
        (["-v2", "rc2-cbc"], "RC2-CBC"),
        (["-scrypt"], "scrypt"),
    ],
)
def test_pkcs8_unsupported_algorithm(tmp_path, options, algorithm):
    path = tmp_path / "key.pem"
    _openssl("pkcs8", "-topk8", "-provider", "legacy", "-provider", "default", "-in", KEY_PKCS1,
            "-passout", "pass:x", "-out", str(path), *options)
    for password in ("x", None):
        with pytest.raises(sf_jwt.InvalidKeyError) as raised:
            sf_jwt._decrypt_pkcs8(_first_pem_der(path), password, _TEST_ORIGIN)
        assert "protected with {},".format(algorithm) in str(raised.value)
        assert "'openssl pkcs8 -topk8 -v2 aes-256-cbc" in str(raised.value)


@needs_openssl3
def test_traditional_unsupported_cipher(tmp_path):
    path = tmp_path / "key.pem"
    _openssl("rsa", "-des", "-traditional", "-provider", "legacy", "-provider", "default", "-in", KEY_PKCS1,
            "-passout", "pass:x", "-out", str(path))
    with pytest.raises(sf_jwt.InvalidKeyError) as raised:
        sf_jwt._decrypt_traditional_pem(_first_pem_block(path), "x", _TEST_ORIGIN)
    assert "protected with DES-CBC," in str(raised.value)
    assert "'openssl rsa -aes256" in str(raised.value)


@needs_openssl3
def test_pkcs12_rc2_key_unsupported(tmp_path):
    data = _make_pkcs12(tmp_path, "x", ["-legacy", "-keypbe", "PBE-SHA1-RC2-40"])
    with pytest.raises(sf_jwt.InvalidKeyError) as raised:
        sf_jwt._keys_from_pkcs12(data, "x", _TEST_ORIGIN)
    assert "protected with pbeWithSHAAnd40BitRC2-CBC," in str(raised.value)
    assert "'openssl pkcs12 -legacy -in test.key -nocerts -out key-aes.pem'" in str(raised.value)


@needs_openssl3
def test_pkcs12_key_found_beside_rc2_part(tmp_path):
    data = _make_pkcs12(tmp_path, "x", ["-legacy", "-keypbe", "NONE"])
    keys, certificates, _ = sf_jwt._keys_from_pkcs12(data, "x", _TEST_ORIGIN)
    _assert_decrypted_key(keys[0])
    assert certificates == []


@needs_openssl3
def test_pkcs12_only_rc2_part_unsupported(tmp_path):
    # Without a key anywhere else, the skipped RC2 part is reported, since the key may be inside it.
    path = tmp_path / "certificate.p12"
    _openssl("pkcs12", "-export", "-legacy", "-nokeys", "-in", JWT_CERT, "-passout", "pass:x", "-out", str(path))
    with pytest.raises(sf_jwt.InvalidKeyError) as raised:
        sf_jwt._keys_from_pkcs12(_read_bytes(path), "x", _TEST_ORIGIN)
    assert "protected with pbeWithSHAAnd40BitRC2-CBC," in str(raised.value)


def test_traditional_bad_dek_info():
    block = sf_jwt._PEMBlock("RSA PRIVATE KEY", {"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,XYZ"}, "AAAA")
    with pytest.raises(sf_jwt.InvalidKeyError, match="DEK-Info"):
        sf_jwt._decrypt_traditional_pem(block, "x", _TEST_ORIGIN)


# --- Truncated and altered files ---


def _altered_file_targets(directory):
    """Return (name, data) of encrypted files with 1 iteration, so that each attempt is fast."""
    der = directory / "pkcs8.der"
    _openssl("pkcs8", "-topk8", "-iter", "1", "-in", KEY_PKCS1, "-passout", "pass:right", "-outform", "DER",
             "-out", der)
    traditional = directory / "traditional.pem"
    _openssl("rsa", "-aes128", "-traditional", "-in", KEY_PKCS1, "-passout", "pass:right", "-out", traditional)
    targets = [("pkcs8", _read_bytes(der)), ("traditional", _read_bytes(traditional))]
    for variant in ("default", "legacy", "unencrypted-no-mac", "encrypted-no-mac", "3des-sha1-mac"):
        data = _make_pkcs12(directory, "right", PKCS12_VARIANTS[variant] + ["-iter", "1"], name=variant + ".p12")
        targets.append((variant, data))
    return targets


@needs_openssl3
def test_truncated_files_rejected(tmp_path):
    for name, data in _altered_file_targets(tmp_path):
        assert _numbers_of(sf_jwt.load_private_key(data, "right")) == _ORIGINAL_NUMBERS
        for length in range(len(data)):
            if name == "traditional" and b"-----END" in data[:length]:
                continue  # text after the END line is ignored
            with pytest.raises(sf_jwt.InvalidKeyError):
                sf_jwt.load_private_key(data[:length], "right")


@needs_openssl3
def test_bit_flips_rejected(tmp_path):
    # A flip may hit something that nothing checks, such as an unencrypted certificate, so the
    # key may still load, but then it must be the original key.
    for name, data in _altered_file_targets(tmp_path):
        # Every byte of the first 200, where the structure and parameters are, then every fifth.
        offsets = list(range(min(200, len(data)))) + list(range(200, len(data), 5))
        for offset in offsets:
            altered = bytearray(data)
            altered[offset] ^= 1 << (offset % 8)
            _assert_loads_fixture_or_rejects(bytes(altered), "right")


@needs_openssl3
def test_altered_ciphertext_rejected(tmp_path):
    # After a flip in the ciphertext, either the padding or structure check fails or the RSA checks do.
    path = tmp_path / "key.der"
    _openssl("pkcs8", "-topk8", "-iter", "1", "-in", KEY_PKCS1, "-passout", "pass:x", "-outform", "DER",
             "-out", path)
    data = _read_bytes(path)
    for offset in range(len(data) - 1200, len(data), 7):
        altered = bytearray(data)
        altered[offset] ^= 0x40
        with pytest.raises(sf_jwt.InvalidKeyError):
            sf_jwt.load_private_key(bytes(altered), "x")


# --- Signatures ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["rsa1024.pem", "jwt_key_pkcs1.pem", "rsa3072.pem", "rsa2048_e3.pem"])
@pytest.mark.parametrize("data", [b"", b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrIn0", bytes(range(256)) * 4],
                         ids=["empty", "signing input", "1 KiB"])
def test_sign_matches_cryptography(name, data):
    key = sf_jwt.load_private_key(TESTDATA / name)

    assert sf_jwt.sign_rs256(data, key) == _crypto_signature(TESTDATA / name, data)


def test_sign_4096_matches_cryptography():
    path = TESTDATA / "rsa4096.pem"
    data = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiI0MDk2In0"

    key = sf_jwt.load_private_key(path)

    assert key.bits == 4096
    assert sf_jwt.sign_rs256(data, key) == _crypto_signature(path, data)


def test_sign_keeps_leading_zero_byte():
    path = TESTDATA / "rsa1024.pem"
    crypto_key = _crypto_private_key(path)
    for counter in range(4096):
        data = b"leading zero %d" % counter
        expected = crypto_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if expected[0] == 0:
            break
    else:
        pytest.fail("no signature with a leading zero byte among 4096 messages")

    assert sf_jwt.sign_rs256(data, sf_jwt.load_private_key(path)) == expected


# RFC 7515 Appendix A.2: the RS256 example key (a JWK) and the published signature.
RFC7515_KEY = {
    "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS"
         "-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2Ca"
         "pHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54"
         "h4FRWyuXpoQ",
    "e": "AQAB",
    "d": "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_G"
         "O-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBj"
         "udU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p"
         "1DhOVRuOopznQ",
    "p": "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2K"
         "KDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc",
    "q": "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_H"
         "lB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc",
    "dp": "BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vm"
          "AktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0",
    "dq": "h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9c"
          "jz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU",
    "qi": "IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJ"
          "toOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U",
}
RFC7515_SIGNING_INPUT = (
    b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
)
RFC7515_SIGNATURE = (
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1d"
    "nZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwu"
    "sC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
)


@pytest.fixture(scope="module")
def rfc7515_key():
    numbers = {name: int.from_bytes(_b64url_to_bytes(value), "big") for name, value in RFC7515_KEY.items()}
    return sf_jwt.load_private_key(_pkcs1_der(**numbers))


def test_rfc7515_key_numbers(rfc7515_key):
    modulus = int.from_bytes(_b64url_to_bytes(RFC7515_KEY["n"]), "big")

    assert rfc7515_key.public_numbers == (modulus, 65537)
    assert rfc7515_key.bits == 2048


def test_rfc7515_rs256_signature(rfc7515_key):
    signature = sf_jwt.sign_rs256(RFC7515_SIGNING_INPUT, rfc7515_key)

    assert sf_jwt.base64url_encode(signature) == RFC7515_SIGNATURE


# --- Claims -------------------------------------------------------------------

NOW = 1700000000


def test_claims_exact():
    claims = sf_jwt.build_claims(CONSUMER_KEY, USERNAME, now=NOW)

    assert claims == {"iss": CONSUMER_KEY, "sub": USERNAME, "aud": LOGIN_AUDIENCE, "exp": NOW + 180}


@pytest.mark.parametrize("now, lifetime, expiry", [(NOW, 1, NOW + 1), (NOW, 300, NOW + 300), (NOW + 0.99, 180, NOW + 180),
                                                   (float(NOW), 60, NOW + 60)])
def test_claims_exp_integer(now, lifetime, expiry):
    claims = sf_jwt.build_claims(CONSUMER_KEY, USERNAME, lifetime=lifetime, now=now)

    assert claims["exp"] == expiry
    assert type(claims["exp"]) is int


def test_claims_exp_from_clock():
    before = int(time.time())
    claims = sf_jwt.build_claims(CONSUMER_KEY, USERNAME)
    after = int(time.time())

    assert before + 180 <= claims["exp"] <= after + 180


_TZ_SCRIPT = (
    "import time, sf_jwt\n"
    "before = int(time.time())\n"
    "expiry = sf_jwt.build_claims('k', 'u@example.com')['exp']\n"
    "after = int(time.time())\n"
    "print(before, expiry, after)\n"
)


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Kolkata", "Pacific/Kiritimati", "UTC"])
def test_claims_exp_ignores_tz(zone):
    completed = subprocess.run(
        [sys.executable, "-c", _TZ_SCRIPT], cwd=str(REPO), env=_clean_env(TZ=zone),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=SUBPROCESS_TIMEOUT,
    )
    before, expiry, after = (int(field) for field in completed.stdout.split())

    assert before + 180 <= expiry <= after + 180


@pytest.mark.parametrize(
    "client_id, username, audience, expected",
    [
        ("  " + CONSUMER_KEY + "\n", "\t" + USERNAME + " ", LOGIN_AUDIENCE,
         {"iss": CONSUMER_KEY, "sub": USERNAME, "aud": LOGIN_AUDIENCE}),
        (CONSUMER_KEY, USERNAME, TEST_AUDIENCE + "/", {"iss": CONSUMER_KEY, "sub": USERNAME, "aud": TEST_AUDIENCE}),
        (CONSUMER_KEY, "user@example.com.dev", "https://acme.my.salesforce.com/",
         {"iss": CONSUMER_KEY, "sub": "user@example.com.dev", "aud": "https://acme.my.salesforce.com"}),
        (CONSUMER_KEY, "o'brien&co+jwt@example.com", LOGIN_AUDIENCE,
         {"iss": CONSUMER_KEY, "sub": "o'brien&co+jwt@example.com", "aud": LOGIN_AUDIENCE}),
    ],
    ids=["whitespace", "trailing slash", "sandbox suffix", "no escaping"],
)
def test_claims_normalized(client_id, username, audience, expected):
    claims = sf_jwt.build_claims(client_id, username, audience=audience, now=NOW)

    expected = dict(expected, exp=NOW + 180)
    assert claims == expected


@pytest.mark.parametrize(
    "arguments",
    [
        {"client_id": ""},
        {"client_id": "  \n"},
        {"username": ""},
        {"username": " "},
        {"audience": ""},
        {"audience": "http://login.salesforce.com"},
        {"audience": "login.salesforce.com"},
        {"lifetime": 0},
        {"lifetime": 301},
        {"lifetime": -180},
    ],
    ids=["empty iss", "blank iss", "empty sub", "blank sub", "empty aud", "http aud", "bare host aud", "lifetime 0",
         "lifetime 301", "lifetime negative"],
)
def test_claims_reject_value(arguments):
    full = {"client_id": CONSUMER_KEY, "username": USERNAME, "now": NOW}
    full.update(arguments)

    with pytest.raises(sf_jwt.ConfigurationError):
        sf_jwt.build_claims(**full)


# --- Assertions -----------------------------------------------------------------


def test_assertion_header_exact(signing_key):
    assertion = _assertion_for(signing_key, now=NOW)

    header, _, _ = _decode_jwt(assertion)
    assert header == b'{"alg":"RS256"}'
    assert assertion.split(".")[0] == "eyJhbGciOiJSUzI1NiJ9"


def test_assertion_claims_exact(signing_key):
    assertion = _assertion_for(signing_key, audience=TEST_AUDIENCE, lifetime=120, now=NOW)

    _, claims, _ = _decode_jwt(assertion)
    assert json.loads(claims.decode("utf-8")) == {"iss": CONSUMER_KEY, "sub": USERNAME, "aud": TEST_AUDIENCE,
                                                  "exp": NOW + 120}
    assert b" " not in claims
    assert b"\n" not in claims


def test_assertion_is_base64url_text(signing_key):
    assertion = _assertion_for(signing_key, username="\u00e9l\u00e8ve+?>>@example.com", now=NOW)

    assert type(assertion) is str
    assert re.match(r"\A[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z", assertion)
    assert json.loads(_decode_jwt(assertion)[1].decode("utf-8"))["sub"] == "\u00e9l\u00e8ve+?>>@example.com"


def test_assertion_signature_verifies(signing_key):
    assertion = _assertion_for(signing_key, now=NOW)

    header, claims, signature = assertion.split(".")
    _cert_public_key().verify(
        _b64url_to_bytes(signature), (header + "." + claims).encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
    )
    assert _b64url_to_bytes(signature) == _crypto_signature(KEY_PKCS1, (header + "." + claims).encode("ascii"))


def test_assertion_decodes_with_pyjwt(signing_key):
    assertion = _assertion_for(signing_key)
    public_pem = _cert_public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    claims = jwt.decode(assertion, public_pem, algorithms=["RS256"], audience=LOGIN_AUDIENCE)

    assert claims["iss"] == CONSUMER_KEY
    assert claims["sub"] == USERNAME


def test_assertion_rejects_empty_username(signing_key):
    with pytest.raises(sf_jwt.ConfigurationError):
        _assertion_for(signing_key, username="")


# --- Token requests against the fake endpoint ------------------------------------


def test_get_token_success(fake):
    token = _get_token(fake)

    [body] = fake.issued
    assert token.access_token == body["access_token"]
    assert token.instance_url == "https://127.0.0.1:%d" % fake.port
    assert token.id == body["id"]
    assert token.token_type == "Bearer"
    assert token.scope == "api"
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    assert token.issued_at == epoch + datetime.timedelta(milliseconds=int(body["issued_at"]))
    assert token.issued_at.utcoffset() == datetime.timedelta(0)
    assert token.raw == body


def test_token_repr_masks_access_token(fake):
    token = _get_token(fake)

    assert token.access_token not in repr(token)
    assert token.access_token not in str(token)
    assert token.access_token[16:] not in repr(token)


def test_token_without_issued_at(fake, monkeypatch):
    original = FakeSalesforce.success_body

    def without_issued_at(self):
        body = original(self)
        del body["issued_at"]
        del body["signature"]
        return body

    monkeypatch.setattr(FakeSalesforce, "success_body", without_issued_at)

    token = _get_token(fake)

    assert token.issued_at is None
    assert token.access_token == fake.issued_tokens[0]


def test_get_token_sends_claims(fake):
    before = int(time.time())
    _get_token(fake, lifetime=200)
    after = int(time.time())

    claims = fake.requests[0].claims
    assert {name: claims[name] for name in ("iss", "sub", "aud")} == {
        "iss": CONSUMER_KEY, "sub": USERNAME, "aud": LOGIN_AUDIENCE}
    assert before + 200 <= claims["exp"] <= after + 200


def test_get_token_request_shape(fake):
    _get_token(fake)

    [request] = fake.requests
    assert request.method == "POST"
    assert request.path == TOKEN_PATH
    assert request.headers["Content-Type"].split(";")[0].strip() == FORM_CONTENT_TYPE
    assert sorted(request.form) == ["assertion", "grant_type"]
    assert request.form["grant_type"] == [JWT_BEARER_GRANT]
    assert request.headers["Accept"] == "application/json"
    assert sf_jwt.__version__ in request.headers["User-Agent"]
    assert "Python-urllib" not in request.headers["User-Agent"]


def test_request_token_sends_assertion_verbatim(fake, signing_key):
    assertion = _assertion_for(signing_key)

    token = sf_jwt.request_token(assertion, fake.token_url, timeout=10, ca_file=str(CA_CERT))

    assert fake.requests[0].form["assertion"] == [assertion]
    assert token.access_token == fake.issued_tokens[0]


def test_request_token_ssl_context(fake, signing_key):
    context = ssl.create_default_context(cafile=str(CA_CERT))

    token = sf_jwt.request_token(_assertion_for(signing_key), fake.token_url, timeout=10, ssl_context=context)

    assert token.access_token == fake.issued_tokens[0]


@pytest.mark.parametrize("form", ["signing key", "str path", "pathlib", "pem text"])
def test_get_token_key_forms(fake, signing_key, form):
    sources = {
        "signing key": signing_key,
        "str path": str(KEY_PKCS8),
        "pathlib": KEY_PKCS8,
        "pem text": KEY_PKCS8.read_text(),
    }

    token = _get_token(fake, private_key=sources[form])

    assert token.access_token == fake.issued_tokens[0]


def test_get_token_login_url_trailing_slash(fake):
    _get_token(fake, login_url=fake.base_url + "/")

    assert [request.path for request in fake.requests] == [TOKEN_PATH]


def test_get_token_explicit_audience(fake):
    fake.audience = TEST_AUDIENCE

    token = _get_token(fake, audience=TEST_AUDIENCE)

    assert fake.requests[0].claims["aud"] == TEST_AUDIENCE
    assert token.access_token == fake.issued_tokens[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_get_token_http_loopback(start_fake, host):
    bind_host = "127.0.0.1" if host == "localhost" else host
    try:
        fake = start_fake(tls=False, host=bind_host)
    except OSError as exc:
        pytest.skip("cannot listen on %s: %s" % (bind_host, exc))
    login_url = fake.base_url.replace(bind_host, host) if host == "localhost" else fake.base_url

    token = _get_token(fake, login_url=login_url, ca_file=None)

    assert token.access_token == fake.issued_tokens[0]


PLAIN_HTTP_URLS = [
    "http://login.salesforce.com",
    "http://acme.my.salesforce.com",
    "http://10.0.0.1:8080",
    "http://[2001:db8::1]",
    "http://localhost.example.com",
    "http://127.0.0.1.nip.io",
]


@pytest.mark.parametrize("login_url", PLAIN_HTTP_URLS)
def test_get_token_rejects_plain_http(login_url, outside_connections):
    with pytest.raises(sf_jwt.ConfigurationError) as caught:
        sf_jwt.get_token(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=login_url, timeout=1)

    assert "https" in str(caught.value).lower()
    assert outside_connections == []


@pytest.mark.parametrize("login_url", PLAIN_HTTP_URLS)
def test_request_token_rejects_plain_http(login_url, signing_key, outside_connections):
    with pytest.raises(sf_jwt.ConfigurationError):
        sf_jwt.request_token(_assertion_for(signing_key), login_url + TOKEN_PATH, timeout=1)

    assert outside_connections == []


@pytest.mark.parametrize("arguments", [{"lifetime": 301}, {"audience": "http://login.salesforce.com"},
                                       {"username": " "}], ids=["lifetime", "audience", "username"])
def test_get_token_checks_before_sending(fake, arguments):
    with pytest.raises(sf_jwt.ConfigurationError):
        _get_token(fake, **arguments)

    assert fake.requests == []


def test_get_token_rejects_lightning_host(outside_connections):
    with pytest.raises(sf_jwt.ConfigurationError) as caught:
        sf_jwt.get_token(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url="https://acme.lightning.force.com")

    assert "acme.my.salesforce.com" in str(caught.value)
    assert outside_connections == []


# (error, error_description, hint groups: each group needs one of its words, case-insensitive)
OAUTH_ERRORS = [
    ("invalid_grant", "user hasn't approved this consumer", [["pre-authorized"], ["permission set"]]),
    ("invalid_grant", "audience is invalid", [["audience"], ["sandbox"]]),
    ("invalid_grant", "invalid assertion", [["certificate"]]),
    ("invalid_grant", "expired authorization code", [["clock", "utc"]]),
    ("invalid_client_id", "client identifier invalid", [["consumer key"]]),
    ("invalid_client", "invalid client credentials", [["rs256", "base64url"]]),
    ("invalid_app_access", "user is not admin approved to access this app", [["profile", "permission set"]]),
    ("app_not_found", "External client app is not installed in this org", [["my domain", "my.salesforce.com"]]),
    ("invalid_grant", "login rate exceeded", [["reuse"]]),
    ("unsupported_grant_type", "grant type not supported", [["grant_type", "form"]]),
    ("invalid_grant", "inactive user", [["activate"]]),
]


@pytest.mark.parametrize("error, description, hint_words", OAUTH_ERRORS, ids=[row[1] for row in OAUTH_ERRORS])
def test_oauth_error_catalogue(fake, signing_key, error, description, hint_words):
    fake.script_error(400, error, description)

    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        sf_jwt.request_token(_assertion_for(signing_key), fake.token_url, timeout=10, ca_file=str(CA_CERT))

    failure = caught.value
    assert failure.status == 400
    assert failure.error == error
    assert failure.error_description == description
    assert str(failure).startswith("%s: %s" % (error, description))
    assert failure.hint
    assert failure.hint in str(failure)
    for group in hint_words:
        assert any(word in failure.hint.lower() for word in group), group


def test_oauth_error_unknown_code(fake, signing_key):
    fake.script_error(400, "invalid_request", "something unexpected")

    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        sf_jwt.request_token(_assertion_for(signing_key), fake.token_url, timeout=10, ca_file=str(CA_CERT))

    assert caught.value.error == "invalid_request"
    assert caught.value.error_description == "something unexpected"
    assert str(caught.value).startswith("invalid_request: something unexpected")


@pytest.mark.parametrize("status", [401, 403])
def test_oauth_error_keeps_status(fake, signing_key, status):
    fake.script_error(status, "invalid_grant", "invalid assertion")

    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        sf_jwt.request_token(_assertion_for(signing_key), fake.token_url, timeout=10, ca_file=str(CA_CERT))

    assert caught.value.status == status
    assert caught.value.error == "invalid_grant"


@pytest.mark.parametrize(
    "setup, expected",
    [
        ({"client_id": "3MVG9someOtherApp"}, ("invalid_client_id", "client identifier invalid")),
        ({"private_key": str(OTHER_KEY)}, ("invalid_grant", "invalid assertion")),
        ({"fake_audience": TEST_AUDIENCE, "audience": LOGIN_AUDIENCE}, ("invalid_grant", "audience is invalid")),
        ({"username": NOT_APPROVED_USER}, ("invalid_grant", "user hasn't approved this consumer")),
        ({"username": INACTIVE_USER}, ("invalid_grant", "inactive user")),
    ],
    ids=["wrong consumer key", "wrong key", "sandbox audience", "not approved", "inactive"],
)
def test_get_token_rejected(fake, setup, expected):
    setup = dict(setup)
    fake.audience = setup.pop("fake_audience", LOGIN_AUDIENCE)

    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        _get_token(fake, **setup)

    assert (caught.value.error, caught.value.error_description) == expected
    assert caught.value.status == 400


def test_get_token_default_audience_rejected(fake):
    fake.audience = TEST_AUDIENCE

    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        _get_token(fake)

    assert (caught.value.error, caught.value.error_description) == ("invalid_grant", "audience is invalid")
    assert fake.requests[0].claims["aud"] == LOGIN_AUDIENCE
    assert 1 <= len(fake.requests) <= 2


def test_request_token_expired_assertion(fake, signing_key):
    assertion = _assertion_for(signing_key, now=time.time() - 600)

    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        sf_jwt.request_token(assertion, fake.token_url, timeout=10, ca_file=str(CA_CERT))

    assert (caught.value.error, caught.value.error_description) == ("invalid_grant", "expired authorization code")


def test_request_token_hs256_assertion(fake):
    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        sf_jwt.request_token(_pyjwt_assertion(algorithm="HS256"), fake.token_url, timeout=10, ca_file=str(CA_CERT))

    assert (caught.value.error, caught.value.error_description) == ("invalid_client", "invalid client credentials")


def _request_with_behaviour(fake, signing_key, behaviour, timeout=10, ca_file=str(CA_CERT)):
    fake.behaviour = behaviour
    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt.request_token(_assertion_for(signing_key), fake.token_url, timeout=timeout, ca_file=ca_file)
    return caught.value


def test_transport_maintenance_page(fake, signing_key):
    failure = _request_with_behaviour(fake, signing_key, "maintenance")

    assert failure.retryable is True
    assert failure.status == 503
    assert "503" in str(failure)
    assert "<html" not in str(failure).lower()


def test_transport_html_200(fake, signing_key):
    failure = _request_with_behaviour(fake, signing_key, "html_200")

    assert failure.status == 200
    assert "json" in str(failure).lower()


def test_transport_missing_access_token(fake, signing_key):
    failure = _request_with_behaviour(fake, signing_key, "no_access_token")

    assert "access_token" in str(failure)


def test_transport_http_instance_url(fake, signing_key):
    failure = _request_with_behaviour(fake, signing_key, "http_instance_url")

    assert "http://example.invalid" in str(failure)
    assert fake.issued_tokens[0] not in str(failure)


def test_transport_redirect_not_followed(fake, signing_key):
    failure = _request_with_behaviour(fake, signing_key, "redirect")

    assert "localhost" in str(failure)
    assert failure.status == 302
    assert len(fake.requests) == 1


def test_transport_connection_reset(fake, signing_key):
    failure = _request_with_behaviour(fake, signing_key, "reset")

    assert failure.retryable is True
    assert failure.status is None


def test_transport_stall_times_out(fake, signing_key):
    failure = _request_with_behaviour(fake, signing_key, "stall", timeout=1)

    assert "timed out" in str(failure).lower()
    assert failure.retryable is True
    assert failure.status is None
    assert len(fake.requests) == 1


def test_get_token_retries_are_bounded(fake):
    fake.behaviour = "maintenance"

    with pytest.raises(sf_jwt.TransportError) as caught:
        _get_token(fake)

    assert caught.value.status == 503
    assert caught.value.retryable is True
    assert 1 <= len(fake.requests) <= 3


@pytest.mark.parametrize("ca_file", [str(OTHER_CA_CERT), None], ids=["other ca", "system store"])
def test_transport_untrusted_certificate(fake, signing_key, ca_file):
    failure = _request_with_behaviour(fake, signing_key, None, ca_file=ca_file)

    message = str(failure).lower()
    assert "certificate" in message
    assert "ca-file" in message or "ca_file" in message
    assert failure.retryable is False
    assert fake.requests == []


def test_transport_connection_refused(signing_key):
    token_url = "https://127.0.0.1:%d%s" % (_closed_loopback_port(), TOKEN_PATH)

    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt.request_token(_assertion_for(signing_key), token_url, timeout=5, ca_file=str(CA_CERT))

    assert caught.value.status is None
    assert "127.0.0.1" in str(caught.value)


def test_transport_not_found(fake, signing_key):
    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt.request_token(_assertion_for(signing_key), fake.base_url + "/services/oauth2/tokens", timeout=10,
                             ca_file=str(CA_CERT))

    assert caught.value.status == 404


def test_logs_hide_secrets(fake, caplog):
    caplog.set_level(logging.DEBUG)
    token = _get_token(fake)
    fake.script_error(400, "invalid_grant", "invalid assertion")
    with pytest.raises(sf_jwt.AuthenticationError):
        _get_token(fake)

    assert caplog.records
    assert _leaked_secrets(caplog.text, fake) == []
    assert token.access_token not in caplog.text


# --- Command line ---------------------------------------------------------------


def _run_cli(args, env=None, stdin=None, invocation="module"):
    if invocation == "module":
        command = [sys.executable, "-m", "sf_jwt"]
    else:
        command = [sys.executable, "sf_jwt.py"]
    return subprocess.run(
        command + list(args), cwd=str(REPO), env=env if env is not None else _clean_env(),
        input=stdin if stdin is not None else "",  # a pipe, never the terminal, so sf-jwt does not prompt
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=SUBPROCESS_TIMEOUT,
    )


def _token_args(fake, *extra, **options):
    key_file = options.get("key_file", KEY_PKCS8)
    return ["token", "--client-id", CONSUMER_KEY, "--username", USERNAME, "--jwt-key-file", str(key_file),
            "--login-url", fake.base_url, "--ca-file", str(CA_CERT)] + list(extra)


def _assertion_args(*extra):
    return ["assertion", "--client-id", CONSUMER_KEY, "--username", USERNAME, "--jwt-key-file", str(KEY_PKCS1)] + list(
        extra)


def _leaked_secrets(text, fake):
    """List the kinds of secret that appear in ``text``."""
    leaks = []
    if any(token in text for token in fake.issued_tokens):
        leaks.append("access token")
    if any(request.assertion.split(".")[-1] in text for request in fake.requests if request.assertion.count(".") == 2):
        leaks.append("assertion signature")
    if any(line in text for line in _pem_body_lines(KEY_PKCS1) + _pem_body_lines(KEY_PKCS8)):
        leaks.append("PEM body")
    if str(_private_numbers(KEY_PKCS1)["d"]) in text:
        leaks.append("private exponent")
    return leaks


def _assert_clean_failure(completed, exit_code):
    assert completed.returncode == exit_code, completed.stderr
    assert completed.stderr.strip()
    assert "Traceback" not in completed.stderr
    assert "\n\n" not in completed.stderr.strip()


@pytest.mark.parametrize("invocation", ["module", "script"])
def test_cli_token_format_token(fake, invocation):
    completed = _run_cli(_token_args(fake, "--format", "token"), invocation=invocation)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == fake.issued_tokens[0] + "\n"
    assert completed.stderr == ""


def test_cli_token_format_env(fake):
    completed = _run_cli(_token_args(fake, "--format", "env"))

    assert completed.returncode == 0, completed.stderr
    assignments = dict(shlex.split(line)[0].split("=", 1) for line in completed.stdout.splitlines() if line.strip())
    assert assignments["SF_ACCESS_TOKEN"] == fake.issued_tokens[0]
    assert assignments["SF_INSTANCE_URL"] == "https://127.0.0.1:%d" % fake.port


def test_cli_token_format_json(fake):
    completed = _run_cli(_token_args(fake, "--format", "json"))

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    [body] = fake.issued
    assert document["access_token"] == body["access_token"]
    assert document["instance_url"] == body["instance_url"]
    assert document["id"] == body["id"]
    assert document["token_type"] == "Bearer"
    assert document["scope"] == "api"
    issued_at = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        milliseconds=int(body["issued_at"]))
    assert document["issued_at"] == issued_at.isoformat()


def test_cli_short_options(fake):
    completed = _run_cli(["token", "-i", CONSUMER_KEY, "-o", USERNAME, "-f", str(KEY_PKCS1), "-r", fake.base_url,
                          "--ca-file", str(CA_CERT), "--format", "token"])

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == fake.issued_tokens[0]
    assert fake.requests[0].claims["iss"] == CONSUMER_KEY


def test_cli_instance_url_alias(fake):
    completed = _run_cli(["token", "-i", CONSUMER_KEY, "-o", USERNAME, "-f", str(KEY_PKCS1), "--instance-url",
                          fake.base_url, "--ca-file", str(CA_CERT), "--format", "token"])

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == fake.issued_tokens[0]


def test_cli_env_fallbacks(fake):
    env = _clean_env(SF_CLIENT_ID=CONSUMER_KEY, SF_USERNAME=USERNAME, SF_JWT_KEY_FILE=str(KEY_PKCS1),
                     SF_LOGIN_URL=fake.base_url)

    completed = _run_cli(["token", "--ca-file", str(CA_CERT), "--format", "token"], env=env)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == fake.issued_tokens[0]
    assert fake.requests[0].claims["sub"] == USERNAME


@pytest.mark.parametrize("path", [KEY_PKCS1, KEY_PKCS8], ids=["pkcs1", "pkcs8"])
def test_cli_env_key_with_escaped_newlines(fake, path):
    env = _clean_env(SF_CLIENT_ID=CONSUMER_KEY, SF_USERNAME=USERNAME, SF_LOGIN_URL=fake.base_url,
                     SF_JWT_KEY=path.read_text().replace("\n", "\\n"))

    completed = _run_cli(["token", "--ca-file", str(CA_CERT), "--format", "token"], env=env)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == fake.issued_tokens[0]


def test_cli_env_audience(fake):
    fake.audience = "https://acme.my.salesforce.com"
    env = _clean_env(SF_AUDIENCE_URL="https://acme.my.salesforce.com")

    completed = _run_cli(_token_args(fake, "--format", "token"), env=env)

    assert completed.returncode == 0, completed.stderr
    assert fake.requests[0].claims["aud"] == "https://acme.my.salesforce.com"


def test_cli_option_beats_env(fake):
    env = _clean_env(SF_CLIENT_ID="3MVG9someOtherApp", SF_USERNAME=NOT_APPROVED_USER)

    completed = _run_cli(_token_args(fake, "--format", "token"), env=env)

    assert completed.returncode == 0, completed.stderr
    assert fake.requests[0].claims["iss"] == CONSUMER_KEY
    assert fake.requests[0].claims["sub"] == USERNAME


def test_cli_assertion_output():
    before = int(time.time())
    completed = _run_cli(_assertion_args())
    after = int(time.time())

    assert completed.returncode == 0, completed.stderr
    assertion = completed.stdout.strip()
    header, claims, signature = _decode_jwt(assertion)
    assert header == b'{"alg":"RS256"}'
    claims = json.loads(claims.decode("utf-8"))
    assert {name: claims[name] for name in ("iss", "sub", "aud")} == {
        "iss": CONSUMER_KEY, "sub": USERNAME, "aud": LOGIN_AUDIENCE}
    assert before + 180 <= claims["exp"] <= after + 180
    assert signature == _crypto_signature(KEY_PKCS1, assertion.rsplit(".", 1)[0].encode("ascii"))


@pytest.mark.parametrize(
    "options, audience",
    [
        ([], LOGIN_AUDIENCE),
        (["--login-url", "https://test.salesforce.com/"], TEST_AUDIENCE),
        (["--login-url", "https://acme--dev.sandbox.my.salesforce.com"], TEST_AUDIENCE),
        (["--login-url", "https://acme.scratch.my.salesforce.com"], TEST_AUDIENCE),
        (["--login-url", "https://acme--uat.my.salesforce.com"], TEST_AUDIENCE),
        (["--login-url", "https://acme.my.salesforce.com"], LOGIN_AUDIENCE),
        (["--sandbox"], TEST_AUDIENCE),
        (["--login-url", "https://acme--dev.sandbox.my.salesforce.com", "--audience",
          "https://acme--dev.sandbox.my.salesforce.com"], "https://acme--dev.sandbox.my.salesforce.com"),
    ],
    ids=["default", "test", "sandbox my domain", "scratch", "legacy sandbox", "my domain", "sandbox flag",
         "audience"],
)
def test_cli_assertion_default_audience(options, audience):
    completed = _run_cli(_assertion_args(*options))

    assert completed.returncode == 0, completed.stderr
    claims = json.loads(_decode_jwt(completed.stdout.strip())[1].decode("utf-8"))
    assert claims["aud"] == audience


def test_cli_assertion_rejects_lightning_host():
    completed = _run_cli(_assertion_args("--login-url", "https://acme.lightning.force.com"))

    _assert_clean_failure(completed, 2)
    assert "acme.my.salesforce.com" in completed.stderr


def _signed_assertion(path=KEY_PKCS1, lifetime=180):
    key = sf_jwt.load_private_key(path)
    return sf_jwt.create_assertion(CONSUMER_KEY, USERNAME, key, lifetime=lifetime)


@pytest.mark.parametrize("via_stdin", [False, True], ids=["argument", "stdin"])
def test_cli_decode(via_stdin):
    assertion = _signed_assertion()
    claims = json.loads(_decode_jwt(assertion)[1].decode("utf-8"))

    if via_stdin:
        completed = _run_cli(["decode", "-"], stdin=assertion + "\n")
    else:
        completed = _run_cli(["decode", assertion])

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["header"] == {"alg": "RS256"}
    assert document["claims"] == claims
    expires_at = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
    assert document["expires_at"].startswith(expires_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert 0 < document["seconds_left"] <= 180
    assert document["signature"] == "not checked"


def test_cli_decode_expired(signing_key):
    assertion = _assertion_for(signing_key, now=time.time() - 1000)

    completed = _run_cli(["decode", assertion])

    assert completed.returncode == 0, completed.stderr
    assert -1000 < json.loads(completed.stdout)["seconds_left"] <= -820


@pytest.mark.parametrize("option, path", [("--cert", JWT_CERT), ("--jwt-key-file", KEY_PKCS8)])
def test_cli_decode_valid_signature(option, path):
    completed = _run_cli(["decode", _signed_assertion(), option, str(path)])

    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["signature"] == "valid"


@pytest.mark.parametrize("option, path", [("--cert", JWT_CERT), ("--jwt-key-file", KEY_PKCS8)])
def test_cli_decode_bad_signature(option, path):
    completed = _run_cli(["decode", _signed_assertion(OTHER_KEY), option, str(path)])

    _assert_clean_failure(completed, 1)
    assert "signature" in completed.stderr.lower()


@pytest.mark.parametrize("text", ["not-a-jwt", "eyJhbGciOiJSUzI1NiJ9.e30", "eyJhbGciOiJSUzI1NiJ9.!!!.c2ln"])
def test_cli_decode_malformed(text):
    completed = _run_cli(["decode", text])

    _assert_clean_failure(completed, 2)


@pytest.mark.parametrize(
    "drop, words",
    [("--client-id", ["client-id", "SF_CLIENT_ID"]), ("--username", ["username", "SF_USERNAME"]),
     ("--jwt-key-file", ["jwt-key-file", "SF_JWT_KEY"])],
)
def test_cli_missing_option(fake, drop, words):
    args = _token_args(fake)
    position = args.index(drop)
    del args[position:position + 2]

    completed = _run_cli(args)

    _assert_clean_failure(completed, 2)
    assert any(word in completed.stderr for word in words)
    assert fake.requests == []


@pytest.mark.parametrize(
    "extra",
    [["--format", "xml"], ["--timeout", "soon"], ["--no-such-option"]],
    ids=["format", "timeout", "unknown option"],
)
def test_cli_bad_usage(fake, extra):
    completed = _run_cli(_token_args(fake, *extra))

    _assert_clean_failure(completed, 2)
    assert fake.requests == []


def test_cli_unknown_subcommand():
    completed = _run_cli(["login"])

    _assert_clean_failure(completed, 2)


@pytest.mark.parametrize("key_file, word", [(TESTDATA / "no_such_key.pem", "not found"),
                                            (JWT_CERT, "certificate"),
                                            (TESTDATA / "jwt_key_encrypted_pkcs8.pem", "encrypted")])
def test_cli_bad_key_file(fake, key_file, word):
    completed = _run_cli(_token_args(fake, key_file=key_file))

    _assert_clean_failure(completed, 2)
    assert word in completed.stderr.lower()
    assert fake.requests == []


def test_cli_rejected_exits_1(fake):
    fake.consumer_key = "3MVG9someOtherApp"

    completed = _run_cli(_token_args(fake))

    _assert_clean_failure(completed, 1)
    assert "invalid_client_id" in completed.stderr
    assert "client identifier invalid" in completed.stderr
    assert "consumer key" in completed.stderr.lower()


@pytest.mark.parametrize("behaviour", ["html_200", "redirect", "http_instance_url"])
def test_cli_server_failure_exits_3(fake, behaviour):
    fake.behaviour = behaviour

    completed = _run_cli(_token_args(fake))

    _assert_clean_failure(completed, 3)


def test_cli_connection_refused_exits_3():
    completed = _run_cli(["token", "-i", CONSUMER_KEY, "-o", USERNAME, "-f", str(KEY_PKCS1), "--login-url",
                          "https://127.0.0.1:%d" % _closed_loopback_port(), "--ca-file", str(CA_CERT)])

    _assert_clean_failure(completed, 3)


def test_cli_timeout_exits_3(fake):
    fake.behaviour = "stall"

    completed = _run_cli(_token_args(fake, "--timeout", "1"))

    _assert_clean_failure(completed, 3)
    assert "timed out" in completed.stderr.lower()


def test_cli_untrusted_certificate_exits_3(fake):
    args = _token_args(fake)
    args[args.index(str(CA_CERT))] = str(OTHER_CA_CERT)

    completed = _run_cli(args)

    _assert_clean_failure(completed, 3)
    assert "certificate" in completed.stderr.lower()
    assert "--ca-file" in completed.stderr


def test_cli_quiet_without_verbose(fake):
    completed = _run_cli(_token_args(fake, "--format", "token"))

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""


@pytest.mark.parametrize("position", ["before", "after"])
def test_cli_verbose_logs(fake, position):
    args = _token_args(fake, "--format", "token")
    args = ["-v"] + args if position == "before" else args + ["-v"]

    completed = _run_cli(args)

    assert completed.returncode == 0, completed.stderr
    assert TOKEN_PATH in completed.stderr
    assert completed.stdout.strip() == fake.issued_tokens[0]


@pytest.mark.parametrize(
    "behaviour, exit_code, key_source",
    [(None, 0, "file"), (None, 0, "env"), ("rejected", 1, "env"), ("maintenance", 3, "file"),
     ("no_access_token", 3, "env")],
)
def test_cli_verbose_hides_secrets(fake, behaviour, exit_code, key_source):
    if behaviour == "rejected":
        fake.users[USERNAME] = ("invalid_grant", "user hasn't approved this consumer")
    else:
        fake.behaviour = behaviour
    args = _token_args(fake, "--format", "json")
    env = _clean_env()
    if key_source == "env":
        position = args.index("--jwt-key-file")
        del args[position:position + 2]
        env["SF_JWT_KEY"] = KEY_PKCS8.read_text().replace("\n", "\\n")

    completed = _run_cli(["-v"] + args, env=env)

    assert completed.returncode == exit_code, completed.stderr
    assert completed.stderr.strip()
    assert "Traceback" not in completed.stderr
    assert len(fake.requests) >= 1
    assert _leaked_secrets(completed.stderr, fake) == []


def test_cli_verbose_assertion_hides_signature():
    completed = _run_cli(["-v"] + _assertion_args())

    assert completed.returncode == 0, completed.stderr
    signature = completed.stdout.strip().split(".")[2]
    assert signature not in completed.stderr
    assert str(_private_numbers(KEY_PKCS1)["d"]) not in completed.stderr
    assert not any(line in completed.stderr for line in _pem_body_lines(KEY_PKCS1))


# --- Token lifecycle: retries, audience fallback, TokenProvider, cache file --


def _provider(fake, **overrides):
    arguments = {
        "client_id": CONSUMER_KEY,
        "username": USERNAME,
        "private_key": str(KEY_PKCS1),
        "login_url": fake.base_url,
        "ca_file": str(CA_CERT),
        "timeout": 10,
    }
    arguments.update(overrides)
    return sf_jwt.TokenProvider(**arguments)


@pytest.mark.parametrize("behaviour", ["maintenance", "bad_gateway", "reset"])
def test_get_token_retries_transient_failure(fake, behaviour):
    fake.queue = [behaviour]
    token = _get_token(fake)
    assert len(fake.logins) == 2
    assert token.access_token == fake.issued_tokens[0]


def test_get_token_retries_after_timeout(fake):
    fake.queue = ["stall"]
    token = _get_token(fake, timeout=1)
    assert len(fake.logins) == 2
    assert token.access_token == fake.issued_tokens[0]


def test_get_token_signs_fresh_assertion_per_attempt(fake):
    # Retry-After: 1 makes the second attempt start at least a second later.
    fake.queue = ["rate_limited"]
    _get_token(fake)
    first, second = [request.claims["exp"] for request in fake.logins]
    assert second - first >= 1


def test_get_token_honours_retry_after(fake):
    fake.queue = ["rate_limited"]
    started = time.monotonic()
    _get_token(fake)
    assert time.monotonic() - started >= 0.95
    assert len(fake.logins) == 2


def test_get_token_logs_each_retry(fake, caplog):
    fake.queue = ["rate_limited"]
    with caplog.at_level(logging.INFO, logger="sf_jwt"):
        _get_token(fake)
    retries = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert len(retries) == 1
    assert "HTTP 429" in retries[0]
    assert "retry 1 of 2 in 1.0 s" in retries[0]


def test_get_token_never_retries_oauth_error(fake):
    fake.script_error(400, "invalid_grant", "inactive user")
    with pytest.raises(sf_jwt.AuthenticationError):
        _get_token(fake, max_attempts=5)
    assert len(fake.logins) == 1


def test_get_token_stops_after_max_attempts(fake):
    fake.behaviour = "bad_gateway"
    with pytest.raises(sf_jwt.TransportError) as caught:
        _get_token(fake, max_attempts=2)
    assert caught.value.status == 502
    assert caught.value.retryable is True
    assert len(fake.logins) == 2


def test_get_token_deadline_bounds_time(fake):
    fake.behaviour = "stall"
    started = time.monotonic()
    with pytest.raises(sf_jwt.TransportError):
        _get_token(fake, timeout=10, max_attempts=10, deadline=1.5)
    # The deadline also caps each attempt's timeout, so the 10 s timeout never applies.
    assert time.monotonic() - started < 3
    assert len(fake.logins) <= 3


def test_transport_error_carries_retry_after(fake, signing_key):
    fake.behaviour = "rate_limited"
    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt.request_token(_assertion_for(signing_key), fake.token_url, ca_file=str(CA_CERT))
    assert caught.value.status == 429
    assert caught.value.retry_after == 1.0


@pytest.mark.parametrize("argument, value", [("max_attempts", 0), ("max_attempts", 11), ("deadline", 0)])
def test_get_token_rejects_retry_setting(fake, argument, value):
    with pytest.raises(sf_jwt.ConfigurationError) as caught:
        _get_token(fake, **{argument: value})
    assert argument in str(caught.value)
    assert fake.requests == []


def test_audience_fallback_to_my_domain(fake, caplog):
    fake.audience = fake.base_url
    with caplog.at_level(logging.WARNING, logger="sf_jwt"):
        token = _get_token(fake)
    assert token.access_token == fake.issued_tokens[0]
    assert [request.claims["aud"] for request in fake.logins] == [LOGIN_AUDIENCE, fake.base_url]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "logged in with audience {} after {} was rejected".format(fake.base_url, LOGIN_AUDIENCE) in warnings[0]
    assert "--audience" in warnings[0]


def test_audience_fallback_app_not_found(fake):
    fake.audience = fake.base_url
    fake.queue = ["oauth_error"]
    fake.scripted_error = (400, "app_not_found", "External client app is not installed in this org")
    _get_token(fake)
    assert [request.claims["aud"] for request in fake.logins] == [LOGIN_AUDIENCE, fake.base_url]


def test_audience_fallback_stops_after_two(fake):
    fake.script_error(400, "invalid_grant", "audience is invalid")
    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        _get_token(fake)
    assert caught.value.error_description == "audience is invalid"
    assert len(fake.logins) == 2


def test_explicit_audience_has_no_fallback(fake):
    fake.audience = fake.base_url
    with pytest.raises(sf_jwt.AuthenticationError) as caught:
        _get_token(fake, audience=LOGIN_AUDIENCE)
    assert caught.value.error_description == "audience is invalid"
    assert len(fake.logins) == 1


def test_provider_reuses_token(fake):
    provider = _provider(fake)
    first = provider.get()
    second = provider.get()
    assert first is second
    assert len(fake.logins) == 1


def test_provider_single_flight_32_threads(fake):
    fake.login_delay = 0.3
    provider = _provider(fake)
    barrier = threading.Barrier(32)
    tokens = []

    def ask():
        barrier.wait()
        tokens.append(provider.get().access_token)

    threads = [threading.Thread(target=ask) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(fake.logins) == 1
    assert tokens == [fake.issued_tokens[0]] * 32


def test_provider_waiters_share_error(fake):
    fake.login_delay = 0.3
    fake.script_error(400, "invalid_grant", "inactive user")
    provider = _provider(fake)
    barrier = threading.Barrier(8)
    errors = []

    def ask():
        barrier.wait()
        try:
            provider.get()
        except sf_jwt.AuthenticationError as error:
            errors.append(error.error_description)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == ["inactive user"] * 8
    assert len(fake.logins) == 1


def test_provider_logs_in_after_max_age(fake):
    now = [1000000.0]
    provider = _provider(fake, max_age=900, clock=lambda: now[0])
    first = provider.get()
    now[0] += 899
    assert provider.get() is first
    now[0] += 2
    second = provider.get()
    assert second.access_token != first.access_token
    assert len(fake.logins) == 2


def test_provider_invalidate_only_that_token(fake):
    provider = _provider(fake)
    first = provider.get()
    provider.invalidate(first)
    second = provider.get()
    provider.invalidate(first)
    assert provider.get() is second
    assert len(fake.logins) == 2


def test_provider_two_threads_same_401(fake):
    provider = _provider(fake)
    stale = provider.get()
    barrier = threading.Barrier(2)
    tokens = []

    def react_to_401():
        barrier.wait()
        provider.invalidate(stale)
        tokens.append(provider.get().access_token)

    threads = [threading.Thread(target=react_to_401) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(fake.logins) == 2
    assert tokens == [fake.issued_tokens[1]] * 2


def test_provider_request_json(fake):
    provider = _provider(fake)
    response = provider.request("POST", "/services/data/v62.0/sobjects/Account", data={"Name": "Acme"})
    assert response.status == 200
    assert response.body == {"method": "POST", "path": "/services/data/v62.0/sobjects/Account", "echo": {"Name": "Acme"}}
    call = fake.api_calls[0]
    assert call.headers["Authorization"] == "Bearer " + fake.issued_tokens[0]
    assert call.headers["Content-Type"] == "application/json"


def test_provider_request_non_json_body(fake):
    provider = _provider(fake)
    response = provider.request("GET", API_PATH + "/text")
    assert response.status == 200
    assert response.body == b"plain text answer"
    assert response.headers["Content-Type"] == "text/plain"


def test_provider_request_relogs_once_on_401(fake):
    provider = _provider(fake)
    fake.revoked.add(provider.get().access_token)
    response = provider.request("GET", "services/data/v62.0/limits")
    assert response.status == 200
    assert len(fake.logins) == 2
    assert len(fake.api_calls) == 2
    assert fake.api_calls[1].headers["Authorization"] == "Bearer " + fake.issued_tokens[1]


def test_provider_request_returns_second_401(fake):
    provider = _provider(fake)
    fake.revoke_all = True
    response = provider.request("GET", "/services/data/v62.0/limits")
    assert response.status == 401
    assert response.body[0]["errorCode"] == "INVALID_SESSION_ID"
    assert len(fake.logins) == 2
    assert len(fake.api_calls) == 2


def test_provider_request_rejects_other_host(fake):
    provider = _provider(fake)
    with pytest.raises(sf_jwt.ConfigurationError) as caught:
        provider.request("GET", "https://localhost:%d/services/data" % fake.port)
    assert "is not on the instance host" in str(caught.value)
    assert fake.api_calls == []


def test_provider_request_accepts_instance_url(fake):
    provider = _provider(fake)
    token = provider.get()
    response = provider.request("GET", token.instance_url + "/services/data/v62.0")
    assert response.status == 200
    assert response.body["path"] == "/services/data/v62.0"


def test_provider_as_requests_auth(fake):
    class PreparedRequest(object):
        def __init__(self):
            self.headers = {"Accept": "application/json"}

    provider = _provider(fake)
    request = PreparedRequest()
    assert provider(request) is request
    assert request.headers == {"Accept": "application/json", "Authorization": "Bearer " + fake.issued_tokens[0]}


def test_provider_repr_hides_token(fake):
    provider = _provider(fake)
    token = provider.get()
    assert repr(provider) == "<TokenProvider {} at {}>".format(USERNAME, fake.base_url)
    assert token.access_token not in repr(provider)


def test_provider_rejects_max_age(fake):
    with pytest.raises(sf_jwt.ConfigurationError) as caught:
        _provider(fake, max_age=0)
    assert "max_age" in str(caught.value)


def test_cache_file_shared_between_providers(fake, tmp_path):
    cache = tmp_path / "tokens.json"
    first = _provider(fake, cache_file=str(cache)).get()
    second = _provider(fake, cache_file=str(cache)).get()
    assert second.access_token == first.access_token
    assert len(fake.logins) == 1
    assert cache.stat().st_mode & 0o777 == 0o600


def test_cache_file_holds_no_key_or_assertion(fake, tmp_path):
    cache = tmp_path / "tokens.json"
    _provider(fake, cache_file=str(cache)).get()
    content = cache.read_text()
    assert fake.logins[0].assertion.split(".")[2] not in content
    for line in _pem_body_lines(KEY_PKCS1):
        assert line not in content
    assert USERNAME not in content
    assert CONSUMER_KEY not in content


def test_cache_file_entry_expires(fake, tmp_path):
    cache = str(tmp_path / "tokens.json")
    now = [1000000.0]
    _provider(fake, cache_file=cache, clock=lambda: now[0]).get()
    now[0] += 901
    _provider(fake, cache_file=cache, clock=lambda: now[0]).get()
    assert len(fake.logins) == 2


def test_cache_file_keyed_by_username(fake, tmp_path):
    cache = str(tmp_path / "tokens.json")
    fake.users["second@example.com"] = None
    first = _provider(fake, cache_file=cache).get()
    second = _provider(fake, cache_file=cache, username="second@example.com").get()
    assert first.access_token != second.access_token
    assert len(fake.logins) == 2
    assert len(json.loads(pathlib.Path(cache).read_text())["entries"]) == 2


def test_cache_file_invalidate_removes_entry(fake, tmp_path):
    cache = str(tmp_path / "tokens.json")
    provider = _provider(fake, cache_file=cache)
    stale = provider.get()
    provider.invalidate(stale)
    fresh = _provider(fake, cache_file=cache).get()
    assert fresh.access_token != stale.access_token
    assert len(fake.logins) == 2


def test_cache_file_corrupt_is_rewritten(fake, tmp_path, caplog):
    cache = tmp_path / "tokens.json"
    cache.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="sf_jwt"):
        token = _provider(fake, cache_file=str(cache)).get()
    assert token.access_token == fake.issued_tokens[0]
    assert "not an sf_jwt token cache" in caplog.text
    assert json.loads(cache.read_text())["format"] == "sf_jwt token cache 1"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_cache_file_foreign_owner_is_ignored(fake, tmp_path, caplog):
    cache = tmp_path / "tokens.json"
    first = _provider(fake, cache_file=str(cache)).get()
    os.chown(str(cache), 12345, 12345)
    with caplog.at_level(logging.WARNING, logger="sf_jwt"):
        second = _provider(fake, cache_file=str(cache)).get()
    assert second.access_token != first.access_token
    assert "another user owns it" in caplog.text
    assert cache.stat().st_uid == os.getuid()


def test_cache_file_unwritable_still_logs_in(fake, tmp_path, caplog):
    cache = tmp_path / "missing-directory" / "tokens.json"
    with caplog.at_level(logging.WARNING, logger="sf_jwt"):
        token = _provider(fake, cache_file=str(cache)).get()
    assert token.access_token == fake.issued_tokens[0]
    assert "cannot write the token cache" in caplog.text


_CACHE_CLIENT = """
import sys
sys.path.insert(0, {repo!r})
import sf_jwt
provider = sf_jwt.TokenProvider({consumer_key!r}, {username!r}, {key!r}, login_url=sys.argv[1],
                                ca_file={ca!r}, cache_file=sys.argv[2], timeout=20)
print(provider.get().access_token)
"""


def test_cache_file_20_processes_one_login(fake, tmp_path):
    fake.login_delay = 0.5
    script = tmp_path / "client.py"
    script.write_text(_CACHE_CLIENT.format(
        repo=str(REPO), consumer_key=CONSUMER_KEY, username=USERNAME, key=str(KEY_PKCS1), ca=str(CA_CERT)
    ))
    cache = str(tmp_path / "tokens.json")
    processes = [
        subprocess.Popen([sys.executable, str(script), fake.base_url, cache], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=_clean_env())
        for _ in range(20)
    ]
    outputs = [process.communicate(timeout=SUBPROCESS_TIMEOUT) for process in processes]
    assert [process.returncode for process in processes] == [0] * 20
    assert len(fake.logins) == 1
    assert {stdout.decode().strip() for stdout, _ in outputs} == {fake.issued_tokens[0]}


def test_cli_token_cache(fake, tmp_path):
    cache = str(tmp_path / "tokens.json")
    command = ["token", "-i", CONSUMER_KEY, "-o", USERNAME, "-f", str(KEY_PKCS1), "-r", fake.base_url,
               "--ca-file", str(CA_CERT), "--cache", cache, "--format", "token"]
    first = _run_cli(command)
    second = _run_cli(command)
    assert first.returncode == 0
    assert second.stdout == first.stdout == fake.issued_tokens[0] + "\n"
    assert len(fake.logins) == 1


def test_shared_key_file_warns_once(tmp_path, caplog):
    if os.name != "posix":
        pytest.skip("file modes are POSIX only")
    key_file = tmp_path / "shared.pem"
    key_file.write_bytes(KEY_PKCS1.read_bytes())
    key_file.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="sf_jwt"):
        sf_jwt.load_private_key(str(key_file))
        sf_jwt.load_private_key(str(key_file))
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "the key file {0} is accessible to other users (mode 640): restrict it with 'chmod 600 {0}'".format(key_file)
    ]


def test_private_key_file_does_not_warn(tmp_path, caplog):
    key_file = tmp_path / "private.pem"
    key_file.write_bytes(KEY_PKCS1.read_bytes())
    key_file.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="sf_jwt"):
        sf_jwt.load_private_key(str(key_file))
    assert caplog.records == []


# --- Hardening: hostile input, broken networks, secrets ---
#
# The property tests (hypothesis) run a fixed number of examples from a fixed
# seed (derandomize=True), so every CI run tries the same inputs. The
# environment variable SF_JWT_FUZZ_EXAMPLES sets that number for a longer run;
# the bit-flip part of the mutation corpus grows with it. Every parser may raise
# only its documented errors: InvalidKeyError for keys, DecodeError for
# base64url and JWTs, AuthenticationError or TransportError for token
# responses, and TypeError for an argument of the wrong Python type.

import http.client  # noqa: E402
import tracemalloc  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("SF_JWT_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Bit flips per fixture file in the mutation corpus: a seeded sample, or every bit
# once the budget covers the file (about 10,000 bits for DER, 13,500 for PEM).
CORPUS_FLIPS = FUZZ_EXAMPLES * 20
FUZZ_TOKEN_URL = "https://login.example.invalid" + TOKEN_PATH
MIB = 1024 * 1024

_FIXTURE_NUMBERS = _private_numbers(KEY_PKCS1)
_FIXTURE_PUBLIC = (_FIXTURE_NUMBERS["n"], _FIXTURE_NUMBERS["e"])
_KEY_FIXTURES = ["jwt_key_pkcs1.der", "jwt_key_pkcs8.der", "jwt_key_pkcs1.pem", "jwt_key_pkcs8.pem",
                 "jwt_cert_and_key.pem"]
_KEY_FIXTURE_BYTES = {name: (TESTDATA / name).read_bytes() for name in _KEY_FIXTURES}
SERVER_EXPIRED_CERT = TESTDATA / "server_expired.crt"
# Private keys among the rejected fixtures: their PEM bodies are secrets too.
_PRIVATE_PEM_FIXTURES = ["ec_key.pem", "ec_key_pkcs8.pem", "ed25519_key.pem", "dsa_key.pem", "rsa_pss_key.pem",
                         "jwt_key_encrypted_pkcs8.pem", "jwt_key_encrypted_pkcs1.pem", "openssh_key",
                         "rsa_multiprime.pem"]


def _assert_loads_fixture_or_rejects(data, password=None):
    """Load key data that may be damaged, and return whether it loaded.

    It must either load as the fixture key or raise InvalidKeyError with a message.
    """
    try:
        key = sf_jwt.load_private_key(data, password)
    except sf_jwt.InvalidKeyError as error:
        assert str(error).strip()
        return False
    assert key.public_numbers == _FIXTURE_PUBLIC
    return True


# --- Hardening: key loading (property tests and mutation corpus) ---


def _der_length(length, style):
    """Encode a DER length field, minimally or in one of the ways a damaged file gets it wrong."""
    if style == "minimal":
        if length < 0x80:
            return bytes([length])
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        return bytes([0x80 | len(size)]) + size
    if style == "non-minimal":
        return b"\x84" + length.to_bytes(4, "big")
    if style == "indefinite":
        return b"\x80"
    if style == "2**31":
        return b"\x84\x80\x00\x00\x00"
    if style == "10 MiB":
        return b"\x83\xa0\x00\x00"
    if style == "2**64 - 1":
        return b"\x88" + b"\xff" * 8
    if style == "one more":
        return _der_length(length + 1, "minimal")
    if style == "one less":
        return _der_length(max(length - 1, 0), "minimal")
    raise AssertionError(style)


_HOSTILE_LENGTH_STYLES = ["non-minimal", "indefinite", "2**31", "10 MiB", "2**64 - 1", "one more", "one less"]
# Mostly well-formed lengths, so that the generated trees get deep before one length is wrong.
_der_length_styles = st.sampled_from(["minimal"] * 10 + _HOSTILE_LENGTH_STYLES)


def _der_element(tag, content, style):
    return bytes([tag]) + _der_length(len(content), style) + content


def _der_constructed(children):
    return st.builds(
        lambda tag, parts, style: _der_element(tag, b"".join(parts), style),
        st.sampled_from([0x30, 0x31, 0xA0, 0x04, 0x03]),
        st.lists(children, max_size=6),
        _der_length_styles,
    )


_der_leaves = st.builds(_der_element, st.integers(0, 255), st.binary(max_size=48), _der_length_styles)
_der_trees = st.recursive(_der_leaves, _der_constructed, max_leaves=40)

_PEM_LABELS = ["RSA PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
               "CERTIFICATE", "PUBLIC KEY", "CERTIFICATE REQUEST", "X509 CRL"]


def _pem_armour(label, der):
    body = base64.b64encode(der).decode("ascii")
    lines = [body[start:start + 64] for start in range(0, len(body), 64)]
    return "-----BEGIN {0}-----\n{1}\n-----END {0}-----\n".format(label, "\n".join(lines)).encode("ascii")


def _pkcs8_wrap(pkcs1):
    """Wrap a PKCS#1 RSAPrivateKey in a PKCS#8 PrivateKeyInfo (RFC 5208)."""
    algorithm = _der_tlv(0x30, bytes.fromhex("06092a864886f70d010101") + b"\x05\x00")
    return _der_tlv(0x30, _der_integer(0) + algorithm + _der_tlv(0x04, pkcs1))


# Integers above 14,000 bits come from a bit count: from Python 3.7.14 on, the repr of an
# integer of more than 4,300 digits raises ValueError, and hypothesis takes reprs of bounds.
_hostile_integers = st.one_of(
    st.integers(-2 ** 64, 2 ** 64),
    st.integers(-2 ** 14000, 2 ** 14000),
    st.sampled_from([0, 1, -1, 2, 3]),
    st.sampled_from([511, 512, 16384, 16385, 20000]).map(lambda bits: 2 ** bits - 1),
)


@st.composite
def _pkcs1_with_hostile_number(draw):
    """The fixture key's numbers with one replaced, or all eight drawn at random; PKCS#1 or PKCS#8."""
    if draw(st.booleans()):
        numbers = dict(_FIXTURE_NUMBERS)
        numbers[draw(st.sampled_from(sorted(numbers)))] = draw(_hostile_integers)
        der = _pkcs1_der(**numbers)
    else:
        der = _pkcs1_der(*draw(st.lists(_hostile_integers, min_size=8, max_size=8)))
    return _pkcs8_wrap(der) if draw(st.booleans()) else der


_MAX_POSITION = 2 ** 16
_mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, _MAX_POSITION), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, _MAX_POSITION)),
    st.tuples(st.just("insert"), st.integers(0, _MAX_POSITION), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, _MAX_POSITION), st.integers(1, 64)),
    st.tuples(st.just("overwrite"), st.integers(0, _MAX_POSITION), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("duplicate"), st.integers(0, _MAX_POSITION), st.integers(1, 256)),
)


def _mutate(data, mutation):
    """Apply one mutation; positions wrap around the length of the data."""
    kind, position = mutation[0], mutation[1] % (len(data) + 1)
    if kind == "flip":
        if not data:
            return data
        position %= len(data)
        return data[:position] + bytes([data[position] ^ (1 << mutation[2])]) + data[position + 1:]
    if kind == "truncate":
        return data[:position]
    if kind == "insert":
        return data[:position] + mutation[2] + data[position:]
    if kind == "delete":
        return data[:position] + data[position + mutation[2]:]
    if kind == "overwrite":
        return data[:position] + mutation[2] + data[position + len(mutation[2]):]
    if kind == "duplicate":
        return data[:position] + data[position:position + mutation[2]] * 2 + data[position + mutation[2]:]
    raise AssertionError(kind)


@FUZZ
@given(st.one_of(st.binary(max_size=4096), st.binary(min_size=48, max_size=3000).map(base64.b64encode)))
def test_fuzz_load_key_random_bytes(data):
    with pytest.raises(sf_jwt.InvalidKeyError):
        sf_jwt.load_private_key(data)


@FUZZ
@given(_der_trees, st.sampled_from([None] + _PEM_LABELS))
def test_fuzz_load_key_der_tree(der, label):
    data = der if label is None else _pem_armour(label, der)

    with pytest.raises(sf_jwt.InvalidKeyError):
        sf_jwt.load_private_key(data)


@FUZZ
@given(_pkcs1_with_hostile_number())
def test_fuzz_load_key_hostile_numbers(der):
    _assert_loads_fixture_or_rejects(der)


@FUZZ
@given(st.sampled_from(_KEY_FIXTURES), st.lists(_mutations, min_size=1, max_size=4))
def test_fuzz_load_key_mutated_file(name, mutations):
    data = _KEY_FIXTURE_BYTES[name]
    for mutation in mutations:
        data = _mutate(data, mutation)

    _assert_loads_fixture_or_rejects(data)


_ENCRYPTED_FIXTURE_BYTES = {
    name: (TESTDATA / name).read_bytes() for name in ENCRYPTED_FIXTURES + ["jwt_key_legacy.p12"]
}


@FUZZ
@given(st.sampled_from(sorted(_ENCRYPTED_FIXTURE_BYTES)), st.lists(_mutations, min_size=1, max_size=4))
def test_fuzz_load_key_mutated_encrypted_file(name, mutations):
    data = _ENCRYPTED_FIXTURE_BYTES[name]
    for mutation in mutations:
        data = _mutate(data, mutation)

    _assert_loads_fixture_or_rejects(data, KEY_PASSWORD)


def _der_headers(der, start=0, end=None):
    """Yield (offset, header size, content size) of every element, descending into constructed
    elements and into OCTET STRINGs that hold DER, as PKCS#8 does."""
    end = len(der) if end is None else end
    offset = start
    while offset < end:
        tag, first = der[offset], der[offset + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            header = 2 + (first & 0x7F)
            length = int.from_bytes(der[offset + 2:offset + header], "big")
        yield offset, header, length
        content_start = offset + header
        if tag & 0x20 or (tag == 0x04 and der[content_start:content_start + 1] == b"\x30"):
            for item in _der_headers(der, content_start, content_start + length):
                yield item
        offset = content_start + length


def _corpus_truncated(names):
    for name in names:
        data = _KEY_FIXTURE_BYTES[name]
        for size in range(len(data)):
            yield data[:size]


def _corpus_bit_flips(names):
    for name in names:
        data = _KEY_FIXTURE_BYTES[name]
        bits = range(len(data) * 8)
        chosen = bits if CORPUS_FLIPS >= len(bits) else random.Random(name).sample(bits, CORPUS_FLIPS)
        for bit in chosen:
            yield _mutate(data, ("flip", bit // 8, bit % 8))


def _corpus_length_fields():
    """Every length field of both DER fixtures, replaced by each hostile length."""
    for name in ("jwt_key_pkcs1.der", "jwt_key_pkcs8.der"):
        der = _KEY_FIXTURE_BYTES[name]
        for offset, header, length in _der_headers(der):
            for style in _HOSTILE_LENGTH_STYLES + ["zero", "reserved 0xFF"]:
                if style == "zero":
                    field = b"\x00"
                elif style == "reserved 0xFF":
                    field = b"\xff"
                else:
                    field = _der_length(length, style)
                mutated = der[:offset + 1] + field + der[offset + header:]
                if mutated != der:  # a NULL's length of 0 stays 0 under "one less"
                    yield mutated


def _corpus_deep_nesting():
    nested = b""
    for _ in range(5000):
        nested = _der_tlv(0x30, nested)
    yield nested
    yield b"\x30\x80" * 50000
    yield b"\x30\x84\x7f\xff\xff\xff" * 10000
    pkcs8 = (TESTDATA / "jwt_key_pkcs1.der").read_bytes()
    for _ in range(100):
        pkcs8 = _pkcs8_wrap(pkcs8)
    yield pkcs8
    wrapped = KEY_PKCS1.read_bytes()
    for _ in range(20):
        wrapped = base64.b64encode(wrapped)
    yield wrapped
    yield _pem_armour("PRIVATE KEY", KEY_PKCS8.read_bytes())
    yield _pem_armour("CERTIFICATE", b"\x30\x00") * 15000
    yield b"-----BEGIN RSA PRIVATE KEY-----\n" * 20000


def _corpus_huge_integers():
    one_mib_integer = 2 ** (8 * MIB - 1) + 1
    for field in ("n", "e", "d", "p", "q", "dp", "dq", "qi"):
        numbers = dict(_FIXTURE_NUMBERS)
        numbers[field] = one_mib_integer
        yield _pkcs1_der(**numbers)
    yield _der_tlv(0x30, _der_integer(one_mib_integer) + _pkcs1_der(**_FIXTURE_NUMBERS)[4:])
    for bits in (511, 16385, 65536):
        numbers = dict(_FIXTURE_NUMBERS)
        numbers["n"] = 2 ** (bits - 1) + 1
        yield _pkcs1_der(**numbers)
    for field in ("d", "p", "q"):
        numbers = dict(_FIXTURE_NUMBERS)
        numbers[field] = numbers["n"]
        yield _pkcs1_der(**numbers)


KEY_CORPUS = {
    "truncated DER": lambda: _corpus_truncated(["jwt_key_pkcs1.der", "jwt_key_pkcs8.der"]),
    "truncated PEM": lambda: _corpus_truncated(["jwt_key_pkcs1.pem", "jwt_key_pkcs8.pem"]),
    "bit-flipped DER": lambda: _corpus_bit_flips(["jwt_key_pkcs1.der", "jwt_key_pkcs8.der"]),
    "bit-flipped PEM": lambda: _corpus_bit_flips(["jwt_key_pkcs1.pem", "jwt_key_pkcs8.pem"]),
    "hostile length fields": _corpus_length_fields,
    "deep nesting": _corpus_deep_nesting,
    "huge integers": _corpus_huge_integers,
}


@pytest.mark.parametrize("category", sorted(KEY_CORPUS))
def test_key_mutation_corpus(category):
    failures = []
    loaded = 0
    for index, data in enumerate(KEY_CORPUS[category]()):
        try:
            loaded += _assert_loads_fixture_or_rejects(data)
        except Exception as error:  # the test reports every input that escapes the documented errors
            failures.append("input {}: {}: {}".format(index, type(error).__name__, str(error)[:200]))

    assert failures == []
    # A damaged key may still load, as the fixture key itself: whitespace or text outside
    # the PEM block, the PKCS#8 version (0 or 1, RFC 5958) and the AlgorithmIdentifier
    # parameters are not part of the key. Numbers never change unnoticed.
    if category in ("hostile length fields", "huge integers"):
        assert loaded == 0


@pytest.mark.parametrize("length_field, name", [(b"\x84\x80\x00\x00\x00", "2**31 bytes"),
                                                (b"\x83\xa0\x00\x00", "10 MiB")])
def test_der_absurd_length_rejected_without_allocating(length_field, name):
    data = b"\x30" + length_field + bytes(range(10))

    tracemalloc.start()
    try:
        with pytest.raises(sf_jwt.InvalidKeyError) as caught:
            sf_jwt.load_private_key(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert "length" in str(caught.value)
    assert peak < MIB, "loading a {}-byte key that claims {} allocated {} bytes".format(len(data), name, peak)


def _key_file_of_size(path, size):
    """Write the fixture key padded with trailing newlines to exactly ``size`` bytes, mode 0600."""
    key = KEY_PKCS1.read_bytes()
    path.write_bytes(key + b"\n" * (size - len(key)))
    path.chmod(0o600)
    return path


def test_key_file_of_1_mib_loads(tmp_path):
    path = _key_file_of_size(tmp_path / "padded.pem", MIB)

    assert sf_jwt.load_private_key(str(path)).public_numbers == _FIXTURE_PUBLIC


def test_key_file_over_1_mib_rejected(tmp_path):
    path = _key_file_of_size(tmp_path / "padded.pem", MIB + 1)

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(str(path))

    assert "1 MiB" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero, an endless file")
def test_key_file_endless_rejected():
    tracemalloc.start()
    try:
        with pytest.raises(sf_jwt.InvalidKeyError) as caught:
            sf_jwt.load_private_key("/dev/zero")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert "1 MiB" in str(caught.value)
    assert peak < 4 * MIB


def test_key_path_with_nul_byte_rejected():
    with pytest.raises(sf_jwt.InvalidKeyError):
        sf_jwt.load_private_key("server\x00.key")


@pytest.mark.parametrize("cut", ["no begin line", "one line", "long"])
def test_key_text_not_echoed_as_path(cut):
    text = KEY_PKCS1.read_text()
    if cut == "no begin line":
        source = text.split("\n", 1)[1]
    elif cut == "one line":
        source = text.replace("\n", " ").split(" ", 1)[1]
    else:
        source = "x" * 300 + text.split("\n", 1)[1]

    with pytest.raises(sf_jwt.InvalidKeyError) as caught:
        sf_jwt.load_private_key(source)

    for line in _pem_body_lines(KEY_PKCS1):
        assert line not in str(caught.value)


# --- Hardening: base64url and the decode command ---

_BASE64URL_CHARACTERS = string.ascii_letters + string.digits + "-_"


@FUZZ
@given(st.one_of(
    st.text(max_size=120),
    st.text(alphabet=_BASE64URL_CHARACTERS + "=+/ \n.", max_size=120),
    st.binary(max_size=120),
    st.binary(max_size=90).map(_bytes_to_b64url),
))
def test_fuzz_base64url_decode(text):
    try:
        data = sf_jwt.base64url_decode(text)
    except sf_jwt.DecodeError as error:
        assert str(error)
        return

    raw = text if isinstance(text, bytes) else text.encode("ascii")
    unpadded = raw.rstrip(b"=")
    assert data == base64.b64decode(unpadded + b"=" * (-len(unpadded) % 4), altchars=b"-_", validate=True)


@pytest.mark.parametrize("value", [None, 12, 1.5, ["Zm9v"], memoryview(b"Zm9v")], ids=repr)
def test_base64url_decode_wrong_type(value):
    with pytest.raises(TypeError):
        sf_jwt.base64url_decode(value)


def _json_containers(children):
    return st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=6))


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=40))
_json_values = st.recursive(_json_scalars, _json_containers, max_leaves=25)


def _json_segment(value):
    return _bytes_to_b64url(json.dumps(value).encode("utf-8"))


_jwt_segments = st.one_of(
    st.text(alphabet=_BASE64URL_CHARACTERS + "=+/ ", max_size=80),
    _json_values.map(_json_segment),
    st.dictionaries(st.text(max_size=8), _json_values, max_size=5).map(_json_segment),
    st.binary(max_size=64).map(_bytes_to_b64url),
    st.text(max_size=20),
)


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(_jwt_segments, min_size=1, max_size=5).map(".".join)))
def test_fuzz_decode_jwt(text):
    try:
        header, claims, signing_input, signature = sf_jwt._decode_jwt(text)
    except sf_jwt.DecodeError as error:
        assert str(error)
        return

    segments = text.strip().split(".")
    assert len(segments) == 3
    assert json.dumps(header, sort_keys=True) == json.dumps(json.loads(_b64url_to_bytes(segments[0])), sort_keys=True)
    assert json.dumps(claims, sort_keys=True) == json.dumps(json.loads(_b64url_to_bytes(segments[1])), sort_keys=True)
    assert signing_input == (segments[0] + "." + segments[1]).encode("ascii")
    assert signature == _b64url_to_bytes(segments[2])


def _run_cli_bytes(args, stdin=b"", env=None):
    """Run the command line with binary standard input; return the completed process with text output."""
    completed = subprocess.run(
        [sys.executable, "-m", "sf_jwt"] + list(args), cwd=str(REPO), env=env if env is not None else _clean_env(),
        input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=SUBPROCESS_TIMEOUT,
    )
    completed.stdout = completed.stdout.decode("utf-8", "replace")
    completed.stderr = completed.stderr.decode("utf-8", "replace")
    return completed


def _deeply_nested_claims():
    return "eyJhbGciOiJSUzI1NiJ9." + _bytes_to_b64url(b"[" * 100000 + b"]" * 100000) + ".c2ln"


HOSTILE_DECODE_INPUTS = [
    ("2 MiB on stdin", ["decode", "-"], b"A" * (2 * MIB)),
    ("deeply nested claims", ["decode", "-"], _deeply_nested_claims().encode("ascii")),
    ("random text on stdin", ["decode", "-"], _random_bytes(4096, 7).decode("latin-1").encode("utf-8")),
    ("header is a list", ["decode", _json_segment(["RS256"]) + "." + _json_segment({}) + ".c2ln"], b""),
    ("100 KB argument", ["decode", "eyJhbGciOiJSUzI1NiJ9." + "A" * 100000 + ".c2ln"], b""),
    ("signature is not base64url", ["decode", _json_segment({"alg": "RS256"}) + ".e30.!!", "--cert", str(JWT_CERT)],
     b""),
]


@pytest.mark.parametrize("args, stdin", [row[1:] for row in HOSTILE_DECODE_INPUTS],
                         ids=[row[0] for row in HOSTILE_DECODE_INPUTS])
def test_cli_decode_hostile_input(args, stdin):
    completed = _run_cli_bytes(args, stdin)

    _assert_clean_failure(completed, 2)
    assert completed.stdout == ""


@pytest.mark.parametrize("exp", [10 ** 30, -5, "soon"])
def test_cli_decode_odd_exp(exp):
    claims = {"iss": CONSUMER_KEY, "exp": exp}

    completed = _run_cli(["decode", _json_segment({"alg": "RS256"}) + "." + _json_segment(claims) + ".c2ln"])

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["claims"] == claims
    assert "expires_at" not in document


def test_cli_decode_invalid_utf8_stdin():
    completed = _run_cli_bytes(["decode", "-"], b"eyJhbGciOiJSUzI1NiJ9.\xff\xfe.c2ln",
                               env=_clean_env(PYTHONIOENCODING="utf-8"))

    _assert_clean_failure(completed, 2)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero, an endless file")
def test_cli_decode_endless_certificate():
    completed = _run_cli(["decode", _signed_assertion(), "--cert", "/dev/zero"])

    _assert_clean_failure(completed, 2)
    assert "1 MiB" in completed.stderr


# --- Hardening: token responses ---

_TOKEN_FIELDS = ["access_token", "instance_url", "id", "token_type", "scope", "issued_at", "signature", "error",
                 "error_description"]
_HOSTILE_URLS = [
    "https://[oops", "https://[::1", "https://]x", 
    "https://127.0.0.1:8443", "https://acme.my.salesforce.com", "HTTPS://ACME.MY.SALESFORCE.COM/", "http://127.0.0.1:1",
    "http://[::1]:8080", "http://example.invalid", "https://user@example.invalid", "https://h?x=1", "https://h#f",
    "https://h:0", "https://h:99999", "https://h:-1", "javascript:alert(1)", "file:///etc/passwd", "//example.invalid",
    "", " ", "https://h/\r\nX-Injected: 1", "https://h\x00.example",
]
_STATUSES = st.one_of(st.sampled_from([200, 201, 204, 301, 302, 303, 307, 308, 400, 401, 403, 404, 429, 500, 502, 503,
                                       504]), st.integers(100, 599))
_HEADER_SAMPLES = ["application/json", "text/html; charset=utf-8", "120", "0", "-1", "1e9", "9" * 400,
                   "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
                   "Mon, 01 Jan 2024 00:00:00 +9999", "https://127.0.0.1:1" + TOKEN_PATH, "/relative", ""]
# http.client decodes header values as Latin-1, so any of these characters can arrive.
_header_values = st.one_of(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
                           st.sampled_from(_HEADER_SAMPLES))
_huge_strings = st.builds(lambda character, count: character * count, st.characters(), st.integers(0, 300000))
_token_field_values = st.one_of(_json_values, st.sampled_from(_HOSTILE_URLS), _huge_strings)


@st.composite
def _response_headers(draw):
    headers = http.client.HTTPMessage()
    for name in ("Content-Type", "Retry-After", "Location"):
        if draw(st.booleans()):
            headers[name] = draw(_header_values)
    return headers


@st.composite
def _token_documents(draw):
    """A successful token response with some fields replaced, or a dict of token fields with any values."""
    if draw(st.booleans()):
        document = {"access_token": "00D5g000004Ab1C!AQfuzz", "instance_url": "https://127.0.0.1:8443",
                    "id": "https://127.0.0.1:8443/id/00D/005", "token_type": "Bearer", "scope": "api",
                    "issued_at": "1700000000000"}
    else:
        document = {}
    changes = draw(st.dictionaries(st.one_of(st.sampled_from(_TOKEN_FIELDS), st.text(max_size=8)),
                                   _token_field_values, max_size=6))
    document.update(changes)
    return document


def _json_bytes(value):
    return json.dumps(value).encode("utf-8")


_response_bodies = st.one_of(st.binary(max_size=300), _json_values.map(_json_bytes), _token_documents().map(_json_bytes))


# Printable ASCII without spaces, the characters an HTTP header can carry (RFC 6750 section 2.1).
_BEARER_TOKEN = re.compile(r"\A[\x21-\x7e]+\Z")


def _control_characters(text):
    return [character for character in text if ord(character) < 0x20 or ord(character) == 0x7F]


def _is_safe_response_url(url):
    """Independent check of a URL the module accepted from a token response: https, or http to loopback."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "https":
        return bool(parts.hostname)
    return parts.scheme.lower() == "http" and _is_loopback_host(parts.hostname)


@FUZZ
@given(_STATUSES, _response_headers(), _response_bodies)
def test_fuzz_token_response(status, headers, body):
    try:
        token = sf_jwt._token_from_response(status, headers, body, FUZZ_TOKEN_URL)
    except sf_jwt.AuthenticationError as error:
        assert error.status == status
        assert not 200 <= status < 400
        assert str(error).strip()
        assert not _control_characters(str(error))
    except sf_jwt.TransportError as error:
        assert str(error).strip()
        assert not _control_characters(str(error))
        assert error.status == status
        assert error.retryable == (status in (429, 502, 503, 504))
    else:
        assert 200 <= status < 300
        assert _BEARER_TOKEN.match(token.access_token)
        assert _is_safe_response_url(token.instance_url)
        assert token.id is None or _is_safe_response_url(token.id)


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "5"}, {"Location": "https://127.0.0.1:1/"}])
@pytest.mark.parametrize("status", [200, 302, 400, 503])
def test_token_response_huge_strings(status, headers):
    document = {"access_token": "t" * 900000, "instance_url": "https://127.0.0.1:1", "id": "https://127.0.0.1:1/id",
                "error": "e" * 50000, "error_description": "\u2028\x00" * 50000, "scope": ["x"] * 10000}
    message = http.client.HTTPMessage()
    for name, value in headers.items():
        message[name] = value

    try:
        token = sf_jwt._token_from_response(status, message, _json_bytes(document), FUZZ_TOKEN_URL)
    except (sf_jwt.AuthenticationError, sf_jwt.TransportError) as error:
        assert len(str(error)) < 2000
        assert "\x00" not in str(error)
        assert "\u2028" not in str(error)
    else:
        assert status == 200
        assert len(token.access_token) == 900000
        assert len(repr(token)) < 500


_ESCAPES = "\x1b[31m\x00\x07\x1b(B"


def _response_with_escapes(where):
    """Return (status, headers, body) of a response that carries terminal escapes in one place."""
    headers = http.client.HTTPMessage()
    if where == "HTML title":
        return 503, headers, b"<html><title>Down" + _ESCAPES.encode("latin-1") + b"</title></html>"
    if where == "Content-Type":
        headers["Content-Type"] = "text/html" + _ESCAPES
        return 503, headers, b"maintenance"
    if where == "Location":
        headers["Location"] = "https://login" + _ESCAPES.replace("[", "").replace("(", "") + ".example.invalid/"
        return 302, headers, b""
    return 200, headers, _json_bytes({"field" + _ESCAPES: 1})


@pytest.mark.parametrize("where", ["HTML title", "Content-Type", "Location", "field name"])
def test_server_text_loses_control_characters(where):
    status, headers, body = _response_with_escapes(where)

    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt._token_from_response(status, headers, body, FUZZ_TOKEN_URL)

    assert not _control_characters(str(caught.value))


@pytest.mark.parametrize("value", ["\xb2", "\xb9\xb2"])
def test_retry_after_non_ascii_digit(value):
    headers = http.client.HTTPMessage()
    headers["Retry-After"] = value

    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt._token_from_response(503, headers, b"", FUZZ_TOKEN_URL)

    assert caught.value.retryable is True


def _call_with_url(where, url):
    """Put a URL with an unbalanced '[' where the module parses it."""
    if where in ("Location", "instance_url", "id"):
        headers = http.client.HTTPMessage()
        document = {"access_token": "00D!AQ", "instance_url": "https://127.0.0.1:1"}
        status = 200
        if where == "Location":
            headers["Location"] = url
            status = 302
        else:
            document[where] = url
        sf_jwt._token_from_response(status, headers, _json_bytes(document), FUZZ_TOKEN_URL)
    elif where == "login_url":
        sf_jwt.get_token(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=url)
    else:
        sf_jwt.get_token(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), audience=url)


@pytest.mark.parametrize("url", ["https://[oops", "https://[::1"])
@pytest.mark.parametrize("where, expected", [
    ("Location", sf_jwt.TransportError), ("instance_url", sf_jwt.TransportError), ("id", sf_jwt.TransportError),
    ("login_url", sf_jwt.ConfigurationError), ("audience", sf_jwt.ConfigurationError),
])
def test_unbalanced_bracket_url_rejected(where, expected, url):
    with pytest.raises(expected):
        _call_with_url(where, url)


@pytest.mark.parametrize("status", [201, 204])
def test_transport_error_keeps_2xx_status(status):
    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt._token_from_response(status, http.client.HTTPMessage(), b"{}", FUZZ_TOKEN_URL)

    assert caught.value.status == status


@pytest.mark.parametrize("code", ["", "\x00\x01", "   "])
def test_oauth_error_without_code_has_message(code):
    body = _json_bytes({"error": code, "error_description": ""})

    with pytest.raises((sf_jwt.AuthenticationError, sf_jwt.TransportError)) as caught:
        sf_jwt._token_from_response(400, http.client.HTTPMessage(), body, FUZZ_TOKEN_URL)

    assert str(caught.value).strip()


def test_token_response_huge_json_integer():
    document = b'{"access_token": "00D!AQ", "instance_url": "https://127.0.0.1:1", "issued_at": ' + b"7" * 5000 + b"}"

    with pytest.raises(sf_jwt.TransportError):
        sf_jwt._token_from_response(200, http.client.HTTPMessage(), document, FUZZ_TOKEN_URL)


# Values an attacker-controlled or broken token endpoint might send as id or instance_url.
HOSTILE_RESPONSE_URLS = [
    "http://example.invalid/id/00D/005", "http://login.salesforce.com/id/00D/005", "javascript:alert(1)",
    "file:///etc/passwd", "ftp://example.invalid/id", "https://user@example.invalid/id", "//example.invalid/id",
    "https://h/id?x=1", "", " ", 12345, ["https://example.invalid"], {"url": "https://example.invalid"}, True,
]


@pytest.mark.parametrize("field", ["id", "instance_url"])
@pytest.mark.parametrize("value", HOSTILE_RESPONSE_URLS, ids=repr)
def test_token_response_rejects_unsafe_url(field, value):
    document = {"access_token": "00D!AQsecretish", "instance_url": "https://127.0.0.1:1", "id": None}
    document[field] = value

    with pytest.raises(sf_jwt.TransportError) as caught:
        sf_jwt._token_from_response(200, http.client.HTTPMessage(), _json_bytes(document), FUZZ_TOKEN_URL)

    assert field in str(caught.value)
    assert "00D!AQsecretish" not in str(caught.value)


@pytest.mark.parametrize("value", [None, "http://127.0.0.1:1/id/00D/005", "http://[::1]:8080/id",
                                   "https://acme.my.salesforce.com/id/00D/005"])
def test_token_response_accepts_safe_id(value):
    document = {"access_token": "00D!AQ", "instance_url": "https://127.0.0.1:1"}
    if value is not None:
        document["id"] = value

    token = sf_jwt._token_from_response(200, http.client.HTTPMessage(), _json_bytes(document), FUZZ_TOKEN_URL)

    assert token.id == value


def _serve_body_changes(fake, **changes):
    """Make the fake's successful responses carry ``changes`` (a value of None deletes the field)."""
    original = fake.success_body

    def success_body():
        body = original()
        for name, value in changes.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        return body

    fake.success_body = success_body


def test_http_id_never_used(fake, outside_connections):
    _serve_body_changes(fake, id="http://example.invalid/id/00D/005")

    with pytest.raises(sf_jwt.TransportError) as caught:
        _get_token(fake)
    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=fake.base_url,
                                 ca_file=str(CA_CERT), timeout=10)

    assert "id" in str(caught.value)
    assert {result.name: result.status for result in results}["token request"] == "FAIL"
    assert "identity" not in {result.name for result in results}
    assert [request.path for request in fake.requests if request.path != "/"] == [TOKEN_PATH, TOKEN_PATH]
    assert outside_connections == []


@pytest.mark.parametrize("suffix", ["\r\nX-Injected: 1", "\x00", "\u20ac"], ids=["CRLF", "NUL", "euro sign"])
def test_access_token_with_control_character_rejected(fake, suffix):
    token = "00D5g000004Ab1C!AQ" + "k" * 40 + suffix
    _serve_body_changes(fake, access_token=token)

    with pytest.raises(sf_jwt.TransportError) as caught:
        _provider(fake).request("GET", API_PATH + "/v62.0/limits")

    assert "k" * 40 not in repr(caught.value)
    assert fake.api_calls == []


# --- Hardening: broken networks ---


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.fake.requests.append((self.command, self.path))
        try:
            self.server.fake.respond(self)
        except OSError as error:  # the client hung up, as several tests expect
            self.server.fake.write_errors.append(error)
        self.close_connection = True

    do_GET = do_HEAD = do_POST


class _ScriptedServer(object):
    """A loopback HTTPS server that writes whatever ``respond(handler)`` writes, for broken responses."""

    def __init__(self, respond, certificate=SERVER_CERT):
        self.respond = respond
        self.requests = []
        self.server_errors = []
        self.write_errors = []
        self.sent = 0
        self.release = threading.Event()
        self.finished = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _ScriptedHandler)
        self._server.fake = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate), str(SERVER_KEY))
        self._server.tls_context = context
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01})
        self._thread.daemon = True
        self._thread.start()

    @property
    def token_url(self):
        return "https://127.0.0.1:%d%s" % (self._server.server_address[1], TOKEN_PATH)

    def stop(self):
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def start_scripted():
    servers = []

    def start(respond, certificate=SERVER_CERT):
        server = _ScriptedServer(respond, certificate)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _raw_response(status_line, headers, body):
    """Return a respond function that writes one HTTP response exactly as given."""
    def respond(handler):
        lines = [status_line] + ["%s: %s" % pair for pair in headers] + ["", ""]
        handler.wfile.write("\r\n".join(lines).encode("latin-1") + body)
    return respond


def _json_response(body, status_line="HTTP/1.1 200 OK"):
    return _raw_response(status_line, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                     ("Connection", "close")], body)


def _token_body_of_size(size):
    document = {"access_token": "00D5g000004Ab1C!AQsized", "instance_url": "https://127.0.0.1:1", "pad": ""}
    document["pad"] = "x" * (size - len(_json_bytes(document)))
    body = _json_bytes(document)
    assert len(body) == size
    return body


def _request_scripted(server, signing_key, timeout=10):
    return sf_jwt.request_token(_assertion_for(signing_key), server.token_url, timeout=timeout, ca_file=str(CA_CERT))


def test_token_response_of_1_mib_accepted(start_scripted, signing_key):
    server = start_scripted(_json_response(_token_body_of_size(MIB)))

    token = _request_scripted(server, signing_key)

    assert token.access_token == "00D5g000004Ab1C!AQsized"


def test_token_response_over_1_mib_rejected(start_scripted, signing_key):
    server = start_scripted(_json_response(_token_body_of_size(MIB + 1)))

    with pytest.raises(sf_jwt.TransportError) as caught:
        _request_scripted(server, signing_key)

    assert str(MIB) in str(caught.value)
    assert "00D5g000004Ab1C!AQsized" not in str(caught.value)


def test_token_response_endless_body_stops_early(start_scripted, signing_key):
    limit = 64 * MIB

    def respond(handler):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        chunk = b" " * 65536
        try:
            while server.sent < limit and not server.release.is_set():
                handler.wfile.write(chunk)
                server.sent += len(chunk)
        finally:
            server.finished.set()

    server = start_scripted(respond)

    with pytest.raises(sf_jwt.TransportError) as caught:
        _request_scripted(server, signing_key)

    assert "larger than" in str(caught.value)
    assert server.finished.wait(10)
    assert server.sent < limit, "the client read the whole 64 MiB instead of stopping after 1 MiB"
    assert server.write_errors


@pytest.mark.parametrize("content_length", [str(2 ** 40), str(2 ** 64), "-1", "12abc"])
def test_token_response_lying_content_length(start_scripted, signing_key, content_length):
    server = start_scripted(_raw_response("HTTP/1.1 200 OK", [("Content-Type", "application/json"),
                                                             ("Content-Length", content_length),
                                                             ("Connection", "close")], b'{"access_token": "x"'))

    with pytest.raises(sf_jwt.TransportError) as caught:
        _request_scripted(server, signing_key)

    assert caught.value.status in (None, 200)


def test_token_response_stall_mid_body(start_scripted, signing_key):
    def respond(handler):
        _raw_response("HTTP/1.1 200 OK", [("Content-Type", "application/json"), ("Content-Length", "1000")],
                    b'{"access_token": ')(handler)
        server.release.wait(STALL_SECONDS)

    server = start_scripted(respond)

    with pytest.raises(sf_jwt.TransportError) as caught:
        _request_scripted(server, signing_key, timeout=1)

    assert "timed out" in str(caught.value)
    assert caught.value.retryable is True


def test_token_response_closed_mid_body(start_scripted, signing_key):
    server = start_scripted(_raw_response("HTTP/1.1 200 OK", [("Content-Type", "application/json"),
                                                             ("Content-Length", "1000"), ("Connection", "close")],
                                        b'{"access_token": '))

    with pytest.raises(sf_jwt.TransportError) as caught:
        _request_scripted(server, signing_key)

    assert "closed" in str(caught.value)
    assert caught.value.retryable is True
    if sys.version_info >= (3, 8):
        # Python 3.6 and 3.7 raise an SSL EOF error during the read, before the byte count is known.
        assert "after 17 of 1000 bytes" in str(caught.value)


@pytest.mark.parametrize("response", [
    _raw_response("SSH-2.0-OpenSSH_9.6", [], b""),
    _raw_response("HTTP/1.1 200 OK", [("X-Flood", str(number)) for number in range(200)], b""),
    _raw_response("HTTP/1.1 200 OK", [("X-Long", "a" * 70000)], b""),
    _raw_response("HTTP/1.1 999999999999 Whatever", [("Content-Length", "0")], b""),
], ids=["not HTTP", "200 headers", "70 KB header line", "absurd status"])
def test_token_response_malformed_http(start_scripted, signing_key, response):
    server = start_scripted(response)

    with pytest.raises(sf_jwt.TransportError) as caught:
        _request_scripted(server, signing_key)

    assert caught.value.retryable is False


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_never_followed(start_scripted, start_fake, signing_key, status):
    other = start_fake()
    server = start_scripted(_raw_response("HTTP/1.1 %d Moved" % status, [("Location", other.token_url),
                                                                       ("Content-Length", "0"),
                                                                       ("Connection", "close")], b""))

    with pytest.raises(sf_jwt.TransportError) as caught:
        _request_scripted(server, signing_key)

    assert caught.value.status == status
    assert "127.0.0.1:%d" % other.port in str(caught.value)
    assert len(server.requests) == 1
    assert other.requests == []


def _silent_listener(accept):
    """Start a loopback TCP listener that accepts a connection (or not) and never sends anything.

    Return the listener and a function that stops it.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0 if not accept else 4)
    release = threading.Event()
    connections = []

    def hold():
        listener.settimeout(STALL_SECONDS + 2)
        try:
            connections.append(listener.accept()[0])
        except OSError:
            return
        if accept == "close":
            connections[-1].close()
        release.wait(STALL_SECONDS)

    thread = threading.Thread(target=hold)
    thread.daemon = True
    if accept:
        thread.start()

    def stop():
        release.set()
        if accept:
            thread.join(STALL_SECONDS + 5)
        for connection in connections:
            connection.close()
        listener.close()

    return listener, stop


def test_transport_tls_handshake_stall(signing_key):
    listener, stop = _silent_listener(accept="hold")
    token_url = "https://127.0.0.1:%d%s" % (listener.getsockname()[1], TOKEN_PATH)
    try:
        with pytest.raises(sf_jwt.TransportError) as caught:
            sf_jwt.request_token(_assertion_for(signing_key), token_url, timeout=1, ca_file=str(CA_CERT))
    finally:
        stop()

    assert "timed out" in str(caught.value)
    assert caught.value.retryable is True


def test_transport_closed_before_tls(signing_key):
    listener, stop = _silent_listener(accept="close")
    token_url = "https://127.0.0.1:%d%s" % (listener.getsockname()[1], TOKEN_PATH)
    try:
        with pytest.raises(sf_jwt.TransportError) as caught:
            sf_jwt.request_token(_assertion_for(signing_key), token_url, timeout=5, ca_file=str(CA_CERT))
    finally:
        stop()

    assert "127.0.0.1" in str(caught.value)


def test_transport_connect_timeout(signing_key):
    # A listener that never accepts, with its backlog full: the kernel drops further
    # SYNs, so the client's connect() itself waits until the timeout.
    listener, stop = _silent_listener(accept=None)
    address = listener.getsockname()
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fillers.append(probe)
        probe.settimeout(0.5)
        try:
            probe.connect(address)
        except socket.timeout:
            pass
        else:
            pytest.skip("this kernel completed a connection to a listener with a full backlog")

        token_url = "https://127.0.0.1:%d%s" % (address[1], TOKEN_PATH)
        with pytest.raises(sf_jwt.TransportError) as caught:
            sf_jwt.request_token(_assertion_for(signing_key), token_url, timeout=1, ca_file=str(CA_CERT))
    finally:
        for filler in fillers:
            filler.close()
        stop()

    assert "timed out" in str(caught.value)
    assert caught.value.retryable is True
    assert caught.value.status is None


# --- Hardening: TLS ---


def _serve_certificate(fake, certificate):
    """Make a running fake present another certificate (with testdata/server.key) from its next handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate), str(SERVER_KEY))
    fake._server.tls_context = context


def _start_fake_on_127_0_0_2(start_fake):
    try:
        return start_fake(host="127.0.0.2")
    except OSError as error:
        pytest.skip("cannot listen on 127.0.0.2: %s" % error)


def test_tls_host_name_mismatch(start_fake):
    fake = _start_fake_on_127_0_0_2(start_fake)

    with pytest.raises(sf_jwt.TransportError) as caught:
        _get_token(fake)

    message = str(caught.value)
    assert "certificate verification failed" in message
    assert "127.0.0.2" in message
    assert "mismatch" in message or "match" in message
    assert "--ca-file" in message
    assert caught.value.retryable is False
    assert fake.requests == []


def test_tls_expired_certificate(fake):
    _serve_certificate(fake, SERVER_EXPIRED_CERT)

    with pytest.raises(sf_jwt.TransportError) as caught:
        _get_token(fake)

    message = str(caught.value)
    assert "certificate verification failed" in message
    assert "expired" in message
    assert "--ca-file" in message
    assert caught.value.retryable is False
    assert fake.requests == []


def test_expired_certificate_fixture_is_expired():
    certificate = x509.load_pem_x509_certificate(SERVER_EXPIRED_CERT.read_bytes())
    issuer = x509.load_pem_x509_certificate(CA_CERT.read_bytes())

    not_after = getattr(certificate, "not_valid_after_utc", None)  # cryptography 42 and newer
    if not_after is None:
        not_after = certificate.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    assert not_after < datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc)
    assert certificate.issuer == issuer.subject
    assert certificate.public_key().public_numbers() == _cert_public_key(SERVER_CERT).public_numbers()


@pytest.mark.parametrize("ca_file", [None, str(CA_CERT)], ids=["system store", "ca file"])
def test_tls_context_requires_tls_1_2(ca_file):
    context = sf_jwt._ssl_context(ca_file)

    if hasattr(ssl, "TLSVersion"):  # Python 3.7 and newer
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    else:
        assert context.options & ssl.OP_NO_TLSv1
        assert context.options & ssl.OP_NO_TLSv1_1
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_cli_shared_key_file_warns(fake, tmp_path):
    if os.name != "posix":
        pytest.skip("file modes are POSIX only")
    key_file = tmp_path / "shared.pem"
    key_file.write_bytes(KEY_PKCS1.read_bytes())
    key_file.chmod(0o644)

    completed = _run_cli(_token_args(fake, "--format", "token", key_file=key_file))

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.count("WARNING") == 1
    assert "chmod 600 %s" % key_file in completed.stderr
    assert completed.stdout.strip() == fake.issued_tokens[0]


# --- Hardening: no secret in logs, output, errors or reprs ---


class _SecretScan(object):
    """The secrets one test may leak, and a search for them in text.

    Fixed secrets are the private numbers (decimal and hex) and PEM body lines
    of the keys in use. Access tokens come from the fakes that issued them.
    Assertion signatures come from the requests the fakes received and from
    every assertion the test built or recorded.
    """

    def __init__(self):
        self.fixed = []
        for path in (KEY_PKCS1, OTHER_KEY):
            numbers = _private_numbers(path)
            for name in ("d", "p", "q", "dp", "dq", "qi"):
                self.fixed.append(("private number %s of %s (decimal)" % (name, path.name), str(numbers[name])))
                self.fixed.append(("private number %s of %s (hex)" % (name, path.name), "%x" % numbers[name]))
        for path in [KEY_PKCS1, KEY_PKCS8, OTHER_KEY] + [TESTDATA / name for name in _PRIVATE_PEM_FIXTURES]:
            self.fixed.extend(("PEM body of %s" % path.name, line) for line in _pem_body_lines(path))
        self.fixed.append(("key password", KEY_PASSWORD))
        self.fixed.append(("wrong key password", _WRONG_KEY_PASSWORD))
        self.fakes = []
        self.tokens = []
        self.assertions = []

    def secrets(self):
        pairs = list(self.fixed)
        tokens = list(self.tokens)
        assertions = list(self.assertions)
        for fake in self.fakes:
            tokens.extend(fake.issued_tokens)
            assertions.extend(request.assertion for request in fake.requests)
        pairs.extend(("access token", token) for token in tokens)
        pairs.extend(("assertion signature", assertion.split(".")[2]) for assertion in assertions
                     if assertion.count(".") == 2)
        return pairs

    def leaks(self, text):
        """Return the kinds of secret found in text. Hex numbers match in upper or lower case."""
        lowered = text.lower()
        return sorted({kind for kind, value in self.secrets() if value in (lowered if kind.endswith("(hex)") else text)})


def _exception_texts(error):
    """Return the traceback of an error with its chained causes, and str and repr of each error in the chain."""
    texts = ["".join(traceback.format_exception(type(error), error, error.__traceback__))]
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts.extend([str(error), repr(error)])
        error = error.__cause__ or error.__context__
    return texts


class _LeakRun(object):
    """What an API scenario may use: fakes and scripted servers it starts, a temporary folder and the scan."""

    def __init__(self, start_fake, start_scripted, tmp_path, scan):
        self.start_fake = start_fake
        self.start_scripted = start_scripted
        self.tmp_path = tmp_path
        self.scan = scan

    def fake(self, **options):
        fake = self.start_fake(**options)
        self.scan.fakes.append(fake)
        return fake


def _leak_login(run):
    return [_get_token(run.fake())]


def _leak_oauth_error(error, description):
    def scenario(run):
        fake = run.fake()
        fake.script_error(400, error, description)
        _get_token(fake, max_attempts=1)
    return scenario


def _leak_behaviour(behaviour, **options):
    def scenario(run):
        fake = run.fake()
        fake.behaviour = behaviour
        _get_token(fake, max_attempts=1, **options)
    return scenario


def _leak_connection_refused(run):
    login_url = "https://127.0.0.1:%d" % _closed_loopback_port()
    sf_jwt.get_token(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=login_url, ca_file=str(CA_CERT),
                     max_attempts=1)


def _leak_untrusted(run):
    _get_token(run.fake(), ca_file=str(OTHER_CA_CERT))


def _leak_host_mismatch(run):
    fake = _start_fake_on_127_0_0_2(run.start_fake)
    run.scan.fakes.append(fake)
    _get_token(fake)


def _leak_expired(run):
    fake = run.fake()
    _serve_certificate(fake, SERVER_EXPIRED_CERT)
    _get_token(fake)


def _leak_oversize(run):
    body = _token_body_of_size(MIB + 1)
    run.scan.tokens.append("00D5g000004Ab1C!AQsized")
    server = run.start_scripted(_json_response(body))
    sf_jwt.get_token(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=server.token_url[:-len(TOKEN_PATH)],
                     ca_file=str(CA_CERT))


def _leak_scripted(response):
    def scenario(run):
        server = run.start_scripted(response)
        sf_jwt.get_token(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=server.token_url[:-len(TOKEN_PATH)],
                         ca_file=str(CA_CERT), max_attempts=1)
    return scenario


def _leak_http_id(run):
    fake = run.fake()
    _serve_body_changes(fake, id="http://example.invalid/id/00D/005")
    _get_token(fake)


def _leak_wrong_key_file(name):
    def scenario(run):
        _get_token(run.fake(), private_key=str(TESTDATA / name))
    return scenario


def _leak_encrypted_key(name, password):
    def scenario(run):
        _get_token(run.fake(), private_key=sf_jwt.load_private_key(TESTDATA / name, password))
    return scenario


def _leak_damaged_key(damage):
    def scenario(run):
        text = KEY_PKCS1.read_text()
        if damage == "truncated":
            source = _truncated_pem(KEY_PKCS1, "tail cut")
        elif damage == "character changed":
            middle = len(text) // 2
            source = text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1:]
        elif damage == "inconsistent numbers":
            numbers = dict(_FIXTURE_NUMBERS)
            numbers["d"] += 2
            source = _pkcs1_der(**numbers)
        elif damage == "two keys":
            source = text + OTHER_KEY.read_text()
        else:
            source = text.split("\n", 1)[1]
        _get_token(run.fake(), private_key=source)
    return scenario


def _leak_key_as_ca_file(run):
    _get_token(run.fake(), ca_file=str(KEY_PKCS1))


def _leak_key_file_as_certificate(run):
    sf_jwt._load_certificate(str(KEY_PKCS1))


def _leak_key_in_certificate_block(run):
    path = run.tmp_path / "key_as_certificate.pem"
    path.write_bytes(_pem_armour("CERTIFICATE", (TESTDATA / "jwt_key_pkcs1.der").read_bytes()))
    sf_jwt._load_certificate(str(path))


def _leak_provider(run):
    fake = run.fake()
    provider = _provider(fake)
    token = provider.get()
    created = provider.request("POST", API_PATH + "/v62.0/sobjects/Account", data={"Name": "Acme"})
    fake.revoked.add(token.access_token)
    relogged = provider.request("GET", API_PATH + "/v62.0/limits")
    provider.invalidate(provider.get())
    fake.revoke_all = True
    refused = provider.request("GET", API_PATH + "/v62.0/limits")
    provider(_PreparedRequest())
    return [provider, token, created, relogged, refused, provider.get()]


class _PreparedRequest(object):
    """The part of a requests.PreparedRequest that an auth callable uses."""

    def __init__(self):
        self.headers = {}


def _leak_provider_login_error(run):
    fake = run.fake()
    fake.script_error(400, "invalid_grant", "invalid assertion")
    _provider(fake).request("GET", API_PATH + "/v62.0/limits")


def _leak_provider_other_host(run):
    fake = run.fake()
    _provider(fake).request("GET", "https://localhost:%d/services/data" % fake.port)


def _leak_cache_file(run):
    fake = run.fake()
    cache = run.tmp_path / "tokens.json"
    first = _provider(fake, cache_file=str(cache))
    token = first.get()
    second = _provider(fake, cache_file=str(cache))
    reused = second.get()
    second.invalidate(reused)
    cache.write_text("{not json")
    rewritten = _provider(fake, cache_file=str(cache)).get()
    document = json.loads(cache.read_text())
    for entry in document["entries"].values():
        entry["token"]["instance_url"] = "http://example.invalid"
    cache.write_text(json.dumps(document))
    malformed = _provider(fake, cache_file=str(cache)).get()
    unwritable = _provider(fake, cache_file=str(run.tmp_path / "missing" / "tokens.json")).get()
    return [first, token, second, reused, rewritten, malformed, unwritable]


def _leak_check_setup(run):
    fake = run.fake()
    offline = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=fake.base_url,
                                 cert_file=str(JWT_CERT), offline=True)
    online = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url=fake.base_url,
                                cert_file=str(OTHER_KEY), ca_file=str(CA_CERT), timeout=10)
    wrong_key = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, str(OTHER_KEY), login_url=fake.base_url,
                                   cert_file=str(JWT_CERT), ca_file=str(CA_CERT), timeout=10)
    return [offline, online, wrong_key]


def _leak_assertion_and_decode(run):
    key = sf_jwt.load_private_key(str(KEY_PKCS1))
    other = sf_jwt.load_private_key(OTHER_KEY.read_bytes())
    assertion = sf_jwt.create_assertion(CONSUMER_KEY, USERNAME, other)
    header, claims, signing_input, signature = sf_jwt._decode_jwt(assertion)
    assert not sf_jwt._verify_rs256(signing_input, signature, *key.public_numbers)
    return [key, other, header, claims]


LEAK_SCENARIOS = [
    ("login", _leak_login),
    ("retry then login", lambda run: [_get_token(_queued(run.fake(), ["bad_gateway"]))]),
    ("audience fallback", lambda run: [_get_token(_with_audience(run.fake()))]),
    ("stall", _leak_behaviour("stall", timeout=1)),
    ("connection refused", _leak_connection_refused),
    ("untrusted certificate", _leak_untrusted),
    ("host name mismatch", _leak_host_mismatch),
    ("expired certificate", _leak_expired),
    ("response over 1 MiB", _leak_oversize),
    ("response not HTTP", _leak_scripted(_raw_response("SSH-2.0-OpenSSH_9.6", [], b""))),
    ("response cut short", _leak_scripted(_raw_response("HTTP/1.1 200 OK", [("Content-Length", "1000")], b"{"))),
    ("http id", _leak_http_id),
    ("key as CA file", _leak_key_as_ca_file),
    ("key file as certificate", _leak_key_file_as_certificate),
    ("key in CERTIFICATE block", _leak_key_in_certificate_block),
    ("provider", _leak_provider),
    ("provider login error", _leak_provider_login_error),
    ("provider other host", _leak_provider_other_host),
    ("cache file", _leak_cache_file),
    ("check", _leak_check_setup),
    ("assertion and decode", _leak_assertion_and_decode),
]
LEAK_SCENARIOS += [("OAuth " + description, _leak_oauth_error(error, description))
                   for error, description, _ in OAUTH_ERRORS]
LEAK_SCENARIOS += [("behaviour " + behaviour, _leak_behaviour(behaviour))
                   for behaviour in ("maintenance", "bad_gateway", "rate_limited", "html_200", "no_access_token",
                                     "http_instance_url", "redirect", "reset")]
LEAK_SCENARIOS += [("key file " + name, _leak_wrong_key_file(name)) for name, _ in WRONG_KEY_FILES]
LEAK_SCENARIOS += [("{} with {} password".format(name, kind), _leak_encrypted_key(name, password))
                   for name in ENCRYPTED_FIXTURES
                   for kind, password in (("right", KEY_PASSWORD), ("wrong", _WRONG_KEY_PASSWORD), ("no", None))]
LEAK_SCENARIOS += [("key " + damage, _leak_damaged_key(damage))
                   for damage in ("truncated", "character changed", "inconsistent numbers", "two keys", "no begin line")]


def _queued(fake, behaviours):
    fake.queue = list(behaviours)
    return fake


def _with_audience(fake):
    fake.audience = fake.base_url
    return fake


@pytest.mark.parametrize("scenario", [function for _, function in LEAK_SCENARIOS],
                         ids=[name for name, _ in LEAK_SCENARIOS])
def test_api_path_leaks_no_secret(scenario, start_fake, start_scripted, tmp_path, caplog, capsys, monkeypatch):
    scan = _SecretScan()
    real_create_assertion = sf_jwt.create_assertion

    def recording_create_assertion(*args, **kwargs):
        assertion = real_create_assertion(*args, **kwargs)
        scan.assertions.append(assertion)
        return assertion

    monkeypatch.setattr(sf_jwt, "create_assertion", recording_create_assertion)
    caplog.set_level(logging.DEBUG)
    run = _LeakRun(start_fake, start_scripted, tmp_path, scan)

    texts = {}
    try:
        results = scenario(run) or []
    except Exception as error:  # every error is scanned, whatever its type
        texts["exception"] = "\n".join(_exception_texts(error))
        results = []
    texts["results"] = "\n".join(repr(result) for result in results)
    texts["logs"] = caplog.text
    captured = capsys.readouterr()
    texts["stdout"], texts["stderr"] = captured.out, captured.err

    for where, text in sorted(texts.items()):
        assert scan.leaks(text) == [], "{} contains a secret:\n{}".format(where, text[:3000])


def _possible_assertions(started, finished, audiences, key_path=KEY_PKCS1):
    """Every assertion a command run between the two times could have built for USERNAME.

    RS256 signatures are deterministic, so rebuilding the claims for each second
    of the run gives the signatures of assertions that never reached a fake.
    """
    key = _crypto_private_key(key_path)
    header = _bytes_to_b64url(b'{"alg":"RS256"}')
    assertions = []
    for audience in audiences:
        for exp in range(int(started) + 180, int(finished) + 181):
            claims = {"iss": CONSUMER_KEY, "sub": USERNAME, "aud": audience, "exp": exp}
            signing_input = header + "." + _bytes_to_b64url(json.dumps(claims, separators=(",", ":")).encode())
            signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
            assertions.append(signing_input + "." + _bytes_to_b64url(signature))
    return assertions


def _cli_env_key():
    return _clean_env(SF_JWT_KEY=KEY_PKCS8.read_text().replace("\n", "\\n"))


def _without_option(args, option):
    position = args.index(option)
    return args[:position] + args[position + 2:]


def _cli_leak_case(name, run):
    """Return (arguments, environment, expected exit code) of one command-line scenario."""
    fake = run.fake()
    token = _token_args(fake)

    # Successful logins: stdout contains the token, which is its job.
    if name == "token json":
        return token + ["--format", "json"], None, 0
    if name == "token env":
        return token + ["--format", "env"], None, 0
    if name == "token from SF_JWT_KEY":
        return _without_option(token, "--jwt-key-file") + ["--format", "token"], _cli_env_key(), 0
    if name == "token with cache":
        return token + ["--cache", str(run.tmp_path / "tokens.json")], None, 0
    if name == "token from PKCS#12, password file":
        password_file = run.tmp_path / "password"
        password_file.write_text(KEY_PASSWORD + "\n")
        password_file.chmod(0o600)
        return _token_args(fake, "--jwt-key-password-file", str(password_file), key_file=TESTDATA / "jwt_key.p12"), \
            None, 0
    if name == "token from encrypted SF_JWT_KEY":
        env = _clean_env(SF_JWT_KEY=(TESTDATA / "jwt_key_encrypted_pkcs8.pem").read_text(),
                         SF_JWT_KEY_PASSWORD=KEY_PASSWORD)
        return _without_option(token, "--jwt-key-file"), env, 0

    # Failures at the token endpoint and in TLS.
    if name == "OAuth error":
        fake.users[USERNAME] = ("invalid_grant", "inactive user")
        return token, None, 1
    if name in ("maintenance", "no_access_token"):
        fake.behaviour = name
        return token, None, 3
    if name == "untrusted certificate":
        return _without_option(token, "--ca-file") + ["--ca-file", str(OTHER_CA_CERT)], None, 3
    if name == "host name mismatch":
        other = _start_fake_on_127_0_0_2(run.start_fake)
        run.scan.fakes.append(other)
        return _token_args(other), None, 3
    if name == "expired certificate":
        _serve_certificate(fake, SERVER_EXPIRED_CERT)
        return token, None, 3
    if name == "connection refused":
        login_url = "https://127.0.0.1:%d" % _closed_loopback_port()
        return _without_option(token, "--login-url") + ["--login-url", login_url], None, 3

    # Unusable keys and CA files: nothing is sent.
    if name == "encrypted key":
        return _token_args(fake, key_file=TESTDATA / "jwt_key_encrypted_pkcs8.pem"), None, 2
    if name == "encrypted key, wrong password":
        env = _clean_env(SF_JWT_KEY_PASSWORD=_WRONG_KEY_PASSWORD)
        return _token_args(fake, key_file=TESTDATA / "jwt_key_encrypted_pkcs1.pem"), env, 2
    if name == "truncated key file":
        path = run.tmp_path / "truncated.pem"
        path.write_text(_truncated_pem(KEY_PKCS1, "tail cut"))
        path.chmod(0o600)
        return _token_args(fake, key_file=path), None, 2
    if name == "SF_JWT_KEY without BEGIN line":
        env = _clean_env(SF_JWT_KEY=KEY_PKCS1.read_text().split("\n", 1)[1])
        return _without_option(token, "--jwt-key-file"), env, 2
    if name == "key as CA file":
        return _without_option(token, "--ca-file") + ["--ca-file", str(KEY_PKCS1)], None, 2

    # The offline commands, and check, which also logs in and calls the identity URL.
    if name == "assertion":
        return _assertion_args(), None, 0
    if name.startswith("decode"):
        assertion = _signed_assertion(KEY_PKCS1 if name == "decode with key as certificate" else OTHER_KEY)
        run.scan.assertions.append(assertion)
        options = {"decode with wrong certificate": ["--cert", str(JWT_CERT)],
                   "decode with wrong key": ["--jwt-key-file", str(KEY_PKCS1)],
                   "decode with key as certificate": ["--cert", str(KEY_PKCS1)]}[name]
        return ["decode", assertion] + options, None, 1 if "wrong" in name else 2
    check = ["check", "-i", CONSUMER_KEY, "-o", USERNAME, "-f", str(KEY_PKCS1), "--cert", str(JWT_CERT)]
    if name == "check offline":
        return check + ["--offline"], None, 0
    if name == "check online":
        return check + ["-r", fake.base_url, "--ca-file", str(CA_CERT)], None, 0
    raise AssertionError(name)


CLI_LEAK_CASES = ["token json", "token env", "token from SF_JWT_KEY", "token with cache",
                  "token from PKCS#12, password file", "token from encrypted SF_JWT_KEY", "OAuth error", "maintenance",
                  "no_access_token", "untrusted certificate", "host name mismatch", "expired certificate",
                  "connection refused",
                  "encrypted key", "encrypted key, wrong password", "truncated key file", "SF_JWT_KEY without BEGIN line", "key as CA file",
                  "assertion", "decode with wrong certificate", "decode with wrong key",
                  "decode with key as certificate", "check offline", "check online"]


@pytest.mark.parametrize("name", CLI_LEAK_CASES)
def test_cli_run_leaks_no_secret(name, start_fake, tmp_path):
    scan = _SecretScan()
    run = _LeakRun(start_fake, None, tmp_path, scan)
    args, env, exit_code = _cli_leak_case(name, run)

    started = time.time()
    completed = _run_cli(["-v"] + args, env=env)
    finished = time.time()

    assert completed.returncode == exit_code, completed.stderr
    assert "Traceback" not in completed.stderr
    audiences = [LOGIN_AUDIENCE] + [fake.base_url for fake in scan.fakes]
    scan.assertions.extend(_possible_assertions(started, finished, audiences))
    for fake in scan.fakes:
        for request in fake.logins:
            assert request.assertion in scan.assertions, "the rebuilt assertions missed one that was sent"

    stdout = completed.stdout
    if exit_code == 0 and args[0] == "token":
        for token in scan.fakes[0].issued_tokens:
            stdout = stdout.replace(token, "")
    if args[0] == "assertion":
        assert completed.stdout.strip() in scan.assertions
        stdout = stdout.replace(completed.stdout.strip(), "")
    assert scan.leaks(stdout) == [], stdout
    assert scan.leaks(completed.stderr) == [], completed.stderr


# --- Setting up: keygen and check --------------------------------------------


@pytest.fixture(scope="module")
def generated_pair():
    key_pem, certificate_pem = sf_jwt.generate_key_and_certificate(days=30, subject="CN=sf_jwt test app,O=Acme,C=DE")
    return key_pem, certificate_pem


def test_keygen_key_matches_certificate(generated_pair):
    key_pem, certificate_pem = generated_pair
    key = sf_jwt.load_private_key(key_pem)
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    numbers = certificate.public_key().public_numbers()
    assert key.public_numbers == (numbers.n, numbers.e)
    assert key.bits == 2048
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert serialization.load_pem_private_key(key_pem, None).private_numbers().public_numbers == numbers


def test_keygen_certificate_fields(generated_pair):
    _, certificate_pem = generated_pair
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    assert certificate.version == x509.Version.v3
    assert certificate.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSA_WITH_SHA256
    assert certificate.subject.rfc4514_string() == "C=DE,O=Acme,CN=sf_jwt test app"
    assert certificate.issuer == certificate.subject
    assert certificate.serial_number > 0
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical is True
    assert constraints.value.ca is False
    identifier = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert identifier.digest == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    certificate.public_key().verify(
        certificate.signature, certificate.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256()
    )


def test_keygen_certificate_validity(generated_pair):
    certificate = sf_jwt._parse_certificate(x509.load_pem_x509_certificate(generated_pair[1]).public_bytes(
        serialization.Encoding.DER))
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((certificate.not_before - now).total_seconds()) < 600
    assert certificate.not_after - certificate.not_before == datetime.timedelta(days=30)
    assert certificate.size < 4096


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_keygen_openssl_accepts(generated_pair, tmp_path):
    key_path, certificate_path = tmp_path / "app.key", tmp_path / "app.crt"
    key_path.write_bytes(generated_pair[0])
    certificate_path.write_bytes(generated_pair[1])
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(certificate_path)],
                          stdout=subprocess.PIPE, universal_newlines=True, timeout=SUBPROCESS_TIMEOUT)
    assert text.returncode == 0
    assert "CA:FALSE" in text.stdout
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(certificate_path), str(certificate_path)],
                            stdout=subprocess.PIPE, universal_newlines=True, timeout=SUBPROCESS_TIMEOUT)
    assert verify.stdout.strip() == "{}: OK".format(certificate_path)
    check = subprocess.run(["openssl", "rsa", "-check", "-noout", "-in", str(key_path)],
                           stdout=subprocess.PIPE, universal_newlines=True, timeout=SUBPROCESS_TIMEOUT)
    assert check.stdout.strip() == "RSA key ok"


@pytest.mark.parametrize("subject, expected", [
    ("CN=app", "CN=app"),
    ("/CN=app/O=Acme Ltd/OU=Integrations", "OU=Integrations,O=Acme Ltd,CN=app"),
    ("cn=app, l=Berlin, st=Berlin, c=DE", "C=DE,ST=Berlin,L=Berlin,CN=app"),
])
def test_keygen_subject_forms(subject, expected):
    encoded = sf_jwt._encode_name(subject)
    name = x509.Name.from_rfc4514_string(expected)
    assert encoded == name.public_bytes()


@pytest.mark.parametrize("arguments, words", [
    ({"bits": 1024}, "bits must be 2048, 3072 or 4096"),
    ({"days": 0}, "days (--days) must be a whole number"),
    ({"subject": "X=1"}, "is not a list of NAME=value"),
    ({"subject": "CN=app,C=Germany"}, "two capital letters"),
    ({"common_name": "  "}, "common_name is empty"),
])
def test_keygen_rejects_argument(arguments, words):
    with pytest.raises(sf_jwt.ConfigurationError) as caught:
        sf_jwt.generate_key_and_certificate(**arguments)
    assert words in str(caught.value)


def test_cli_keygen_writes_files(tmp_path):
    name = str(tmp_path / "app")
    result = _run_cli(["keygen", "--out", name, "--days", "365"])
    assert result.returncode == 0
    assert "generating a 2048-bit RSA key in pure Python" in result.stderr
    assert "upload {}.crt".format(name) in result.stdout
    assert "--jwt-key-file {0}.key --cert {0}.crt".format(name) in result.stdout
    if os.name == "posix":
        assert os.stat(name + ".key").st_mode & 0o777 == 0o600
    key = sf_jwt.load_private_key(name + ".key")
    certificate = sf_jwt._load_certificate(name + ".crt")
    assert (certificate.n, certificate.e) == key.public_numbers
    assert x509.load_pem_x509_certificate(pathlib.Path(name + ".crt").read_bytes()).subject.rfc4514_string() \
        == "CN=app"


def test_cli_keygen_keeps_existing_files(tmp_path):
    name = str(tmp_path / "app")
    pathlib.Path(name + ".key").write_bytes(b"keep me")
    result = _run_cli(["keygen", "--out", name])
    assert result.returncode == 2
    assert result.stderr == "sf-jwt: error: {}.key already exists: pass --force to overwrite, or choose " \
        "another --out\n".format(name)
    assert pathlib.Path(name + ".key").read_bytes() == b"keep me"
    assert not os.path.exists(name + ".crt")


def test_cli_keygen_force_overwrites(tmp_path):
    name = str(tmp_path / "app")
    pathlib.Path(name + ".key").write_bytes(b"old")
    pathlib.Path(name + ".crt").write_bytes(b"old")
    result = _run_cli(["keygen", "--out", name, "--force"])
    assert result.returncode == 0
    assert sf_jwt.load_private_key(name + ".key").bits == 2048
    if os.name == "posix":
        assert os.stat(name + ".key").st_mode & 0o777 == 0o600


CHECK_NAMES = ["key", "key file mode", "certificate", "claims", "org kind", "proxy", "TLS", "clock",
               "token request", "identity"]


def _check(fake, **overrides):
    arguments = {
        "client_id": CONSUMER_KEY,
        "username": USERNAME,
        "private_key": str(KEY_PKCS1),
        "login_url": fake.base_url,
        "cert_file": str(JWT_CERT),
        "ca_file": str(CA_CERT),
        "timeout": 10,
    }
    arguments.update(overrides)
    return {result.name: result for result in sf_jwt.check_setup(**arguments)}


@pytest.fixture
def no_proxy_environment(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_check_good_setup_passes(fake, no_proxy_environment):
    results = _check(fake)
    assert list(results) == CHECK_NAMES
    assert {name: result.status for name, result in results.items()} == {name: "PASS" for name in CHECK_NAMES}
    assert results["identity"].message == "the token works: organization {}, user {}".format(ORG_ID, USERNAME)
    assert results["key"].message.startswith("RSA 2048 bits, PKCS#1 PEM, sha256:")
    assert results["certificate"].message == "{} matches the key and is valid until 2036-12-01".format(JWT_CERT)
    assert len(fake.logins) == 1


def test_check_certificate_of_other_key(fake, generated_pair, tmp_path):
    other_certificate = tmp_path / "other.crt"
    other_certificate.write_bytes(generated_pair[1])
    result = _check(fake, cert_file=str(other_certificate))["certificate"]
    assert result.status == "FAIL"
    assert result.message == "{} belongs to another key: upload the certificate made with this key, or use the " \
        "key that belongs to it".format(other_certificate)


def _expired_certificate(path):
    key = _crypto_private_key(KEY_PKCS1)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "expired")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(datetime.datetime(2020, 1, 1)).not_valid_after(datetime.datetime(2021, 1, 1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_check_expired_certificate_warns(fake, tmp_path):
    expired = tmp_path / "expired.crt"
    _expired_certificate(expired)
    result = _check(fake, cert_file=str(expired), offline=True)["certificate"]
    assert result.status == "WARN"
    assert result.message.startswith("{} expired on 2021-01-01: Salesforce still accepts it".format(expired))


@pytest.mark.parametrize("offset, status", [(0, "PASS"), (60, "WARN"), (-60, "WARN"), (300, "FAIL")])
def test_check_clock_skew(fake, offset, status):
    fake.date_offset = offset
    result = _check(fake)["clock"]
    assert result.status == status
    assert result.message.startswith("this host's clock is {:+d} s off".format(-offset)) \
        or result.message.startswith("this host's clock is {:+d} s off".format(-offset + 1)) \
        or result.message.startswith("this host's clock is {:+d} s off".format(-offset - 1))


def test_check_unapproved_user_fails_with_hint(fake):
    result = _check(fake, username=NOT_APPROVED_USER)["token request"]
    assert result.status == "FAIL"
    assert result.message.startswith("invalid_grant: user hasn't approved this consumer. ")
    assert "pre-authorized" in result.message


def test_check_shared_key_file_warns(fake, tmp_path):
    if os.name != "posix":
        pytest.skip("file modes are POSIX only")
    key_file = tmp_path / "shared.pem"
    key_file.write_bytes(KEY_PKCS1.read_bytes())
    key_file.chmod(0o644)
    result = _check(fake, private_key=str(key_file), offline=True)["key file mode"]
    assert result.status == "WARN"
    assert result.message == "{0} is accessible to other users (mode 644): restrict it with 'chmod 600 {0}'".format(
        key_file)


@pytest.mark.parametrize("username, login_url, audience, status, words", [
    ("integration@example.com.uat", LOGIN_AUDIENCE, None, "WARN", "the username integration@example.com.uat looks "
     "like a sandbox, but the audience is production"),
    (USERNAME, "https://acme--uat.sandbox.my.salesforce.com", LOGIN_AUDIENCE, "WARN", "the login URL "
     "https://acme--uat.sandbox.my.salesforce.com looks like a sandbox"),
    (USERNAME, LOGIN_AUDIENCE, TEST_AUDIENCE, "WARN", "but login URL and username look like production"),
    (USERNAME, LOGIN_AUDIENCE, "https://login.salesforce.com/", "WARN", "has a path or a trailing slash"),
    ("integration@example.com.uat", TEST_AUDIENCE, None, "PASS", "agree (sandbox)"),
    (USERNAME, LOGIN_AUDIENCE, None, "PASS", "agree (production or My Domain)"),
])
def test_check_org_kind(username, login_url, audience, status, words):
    results = sf_jwt.check_setup(CONSUMER_KEY, username, str(KEY_PKCS1), login_url=login_url, audience=audience,
                                 cert_file=str(JWT_CERT), offline=True)
    result = {result.name: result for result in results}["org kind"]
    assert result.status == status
    assert words in result.message


def test_check_offline_sends_nothing(fake):
    results = _check(fake, offline=True)
    assert list(results) == CHECK_NAMES[:5]
    assert fake.requests == []


def test_check_lightning_host_fails():
    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, str(KEY_PKCS1), login_url="https://acme.lightning.force.com",
                                 offline=True)
    result = results[-1]
    assert result.name == "login URL"
    assert result.status == "FAIL"
    assert "use https://acme.my.salesforce.com" in result.message


def test_check_bad_key_fails():
    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, str(JWT_CERT), offline=True)
    assert results[0].name == "key"
    assert results[0].status == "FAIL"
    assert "this is the certificate you upload to the Connected App" in results[0].message


def test_check_untrusted_tls_fails(fake):
    results = _check(fake, ca_file=str(OTHER_CA_CERT))
    assert results["TLS"].status == "FAIL"
    assert "TLS certificate verification failed" in results["TLS"].message
    assert "token request" not in results


def test_check_identity_refused_fails(fake):
    fake.revoke_all = True
    result = _check(fake)["identity"]
    assert result.status == "FAIL"
    assert result.message.startswith("the identity URL responded with HTTP 401 to the new token")


def test_cli_check_exit_codes(fake, tmp_path):
    base = ["check", "-i", CONSUMER_KEY, "-f", str(KEY_PKCS1), "--cert", str(JWT_CERT), "-r", fake.base_url,
            "--ca-file", str(CA_CERT)]
    good = _run_cli(base + ["-o", USERNAME])
    assert good.returncode == 0
    assert [line.split()[0] for line in good.stdout.splitlines()] == ["PASS"] * len(CHECK_NAMES)
    bad = _run_cli(base + ["-o", NOT_APPROVED_USER, "--format", "json"])
    assert bad.returncode == 1
    results = json.loads(bad.stdout)
    assert results[-1] == {
        "name": "token request",
        "status": "FAIL",
        "message": "invalid_grant: user hasn't approved this consumer. " + sf_jwt._ERROR_HINTS[
            ("invalid_grant", "user hasn't approved this consumer")],
    }


@pytest.mark.parametrize("name, container", [
    ("jwt_key_pkcs1.pem", "PKCS#1 PEM"), ("jwt_key_pkcs8.pem", "PKCS#8 PEM"),
    ("jwt_key_pkcs1.der", "PKCS#1 DER"), ("jwt_key_pkcs8.der", "PKCS#8 DER"),
])
def test_check_names_key_container(name, container):
    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, str(TESTDATA / name), offline=True)
    assert results[0].message.startswith("RSA 2048 bits, {}, sha256:".format(container))


# --- Encrypted keys on the command line and in check ---
#
# Every command-line run here gets a pipe as stdin, so sf-jwt prompts for a
# password only where a test gives it a pseudo-terminal on purpose.

# The container words that check writes in its "key" line for each encrypted fixture.
ENCRYPTED_CONTAINERS = {
    "jwt_key_encrypted_pkcs8.pem": "encrypted PKCS#8 PEM",
    "jwt_key_encrypted_pkcs1.pem": "PKCS#1 PEM encrypted by OpenSSL with AES-256-CBC",
    "jwt_key.p12": "PKCS#12",
}
# Seconds that one pseudo-terminal session may take in all, prompt and output included.
TERMINAL_TIMEOUT = 20

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
needs_pty = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX only")


def _write_password_file(tmp_path, content=b"fixture-password\n", name="key-password.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def _jwt_key_fingerprint():
    """Return the fingerprint check prints for the fixture key, computed from its certificate."""
    spki = _cert_public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _check_line(status, name, message):
    """Return one line of check's text output."""
    return "{:<5} {:<14} {}".format(status, name, message)


def _check_args(key_file, *extra):
    return ["check", "-i", CONSUMER_KEY, "-o", USERNAME, "-f", str(key_file), "--cert", str(JWT_CERT),
            "--offline"] + list(extra)


def _expected_offline_names(has_certificate):
    """Return the check names of an offline check with --cert, in order."""
    names = ["key"]
    if has_certificate:
        names.append("key file cert")
    if os.name == "posix":
        names.append("key file mode")
    return names + ["certificate", "claims", "org kind"]


def _run_in_terminal(args, typed, env=None):
    """Run the command line in a new pseudo-terminal, type ``typed`` at the password prompt, and return the result.

    The pseudo-terminal is the child's controlling terminal and its stdin,
    stdout and stderr, as in an interactive shell. ``typed`` is written only
    after "Password for " appears, because getpass (CPython 3.6 to 3.13) turns
    echo off before it writes the prompt. Returns (exit code or None after a
    timeout, the terminal output with CRLF turned into LF).
    """
    import fcntl
    import pty
    import select
    import termios

    def take_terminal():
        # start_new_session made the child a session leader, so it may take the terminal on its stdin.
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "sf_jwt"] + list(args), cwd=str(REPO), env=env if env is not None else _clean_env(),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=take_terminal,
    )
    os.close(slave)
    output = b""
    typed_yet = False
    deadline = time.monotonic() + TERMINAL_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not typed_yet and b"Password for " in output:
                os.write(master, typed)
                typed_yet = True
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # Linux raises EIO once the child has closed its side
                break
            if not chunk:
                break
            output += chunk
        try:
            exit_code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            exit_code = None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return exit_code, output.decode("utf-8", "replace").replace("\r\n", "\n")


# --- token and assertion with a password ---


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_cli_encrypted_key_password_file(fake, tmp_path, name):
    password_file = _write_password_file(tmp_path)
    args = _token_args(fake, "--format", "token", "--jwt-key-password-file", str(password_file),
                       key_file=TESTDATA / name)

    completed = _run_cli(args, stdin="")

    assert completed.returncode == 0, completed.stderr
    assert len(fake.issued_tokens) == 1
    assert completed.stdout == fake.issued_tokens[0] + "\n"
    assert completed.stderr == ""


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_cli_encrypted_key_password_env(fake, name):
    env = _clean_env(SF_JWT_KEY_PASSWORD=KEY_PASSWORD)

    completed = _run_cli(_token_args(fake, "--format", "token", key_file=TESTDATA / name), env=env, stdin="")

    assert completed.returncode == 0, completed.stderr
    assert len(fake.issued_tokens) == 1
    assert completed.stdout == fake.issued_tokens[0] + "\n"
    assert completed.stderr == ""


def test_cli_password_file_beats_env(fake, tmp_path):
    password_file = _write_password_file(tmp_path)
    env = _clean_env(SF_JWT_KEY_PASSWORD="not-the-fixture-password")
    args = _token_args(fake, "--format", "token", "--jwt-key-password-file", str(password_file),
                       key_file=TESTDATA / "jwt_key.p12")

    completed = _run_cli(args, env=env, stdin="")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == fake.issued_tokens[0] + "\n"


@pytest.mark.parametrize("content", [
    b"fixture-password\r\n",
    b"\xef\xbb\xbffixture-password\n",
    b"\xef\xbb\xbffixture-password\r\n",
    b"fixture-password\nsecond line is ignored\n",
    b"fixture-password",
], ids=["CRLF", "BOM", "BOM and CRLF", "second line", "no line end"])
@pytest.mark.parametrize("name", ["jwt_key_encrypted_pkcs8.pem", "jwt_key.p12"])
def test_cli_password_file_line_forms(fake, tmp_path, name, content):
    password_file = _write_password_file(tmp_path, content)
    args = _token_args(fake, "--format", "token", "--jwt-key-password-file", str(password_file),
                       key_file=TESTDATA / name)

    completed = _run_cli(args, stdin="")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == fake.issued_tokens[0] + "\n"


def test_cli_password_file_keeps_spaces(fake, tmp_path):
    # Only the line end is dropped: a trailing space is part of the password, so this one is wrong.
    password_file = _write_password_file(tmp_path, b"fixture-password \n")
    key_file = TESTDATA / "jwt_key_encrypted_pkcs8.pem"
    args = _token_args(fake, "--jwt-key-password-file", str(password_file), key_file=key_file)

    completed = _run_cli(args, stdin="")

    _assert_clean_failure(completed, 2)
    assert completed.stderr == "sf-jwt: error: {}. The password was read from the password file {}\n".format(
        WRONG_PASSWORD_MESSAGE.format("the key file {}".format(key_file)), password_file)
    assert fake.requests == []


@needs_openssl
@pytest.mark.parametrize("content", [b"\n", b""], ids=["empty line", "empty file"])
def test_cli_pkcs12_empty_password(fake, tmp_path, content):
    key_file = tmp_path / "no-password.p12"
    _openssl("pkcs12", "-export", "-inkey", KEY_PKCS1, "-in", JWT_CERT, "-passout", "pass:", "-out", key_file)
    key_file.chmod(0o600)
    password_file = _write_password_file(tmp_path, content)
    args = _token_args(fake, "--format", "token", "--jwt-key-password-file", str(password_file), key_file=key_file)

    completed = _run_cli(args, stdin="")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == fake.issued_tokens[0] + "\n"
    assert completed.stderr == ""


@pytest.mark.parametrize("name", ["jwt_key_encrypted_pkcs8.pem", "jwt_key_encrypted_pkcs1.pem"])
@pytest.mark.parametrize("escaped", [False, True], ids=["newlines", "escaped newlines"])
def test_cli_env_key_encrypted(fake, name, escaped):
    text = (TESTDATA / name).read_text()
    if escaped:
        text = text.replace("\n", "\\n")
    env = _clean_env(SF_JWT_KEY=text, SF_JWT_KEY_PASSWORD=KEY_PASSWORD)
    args = _without_option(_token_args(fake, "--format", "token"), "--jwt-key-file")

    completed = _run_cli(args, env=env, stdin="")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == fake.issued_tokens[0] + "\n"


def test_cli_env_key_missing_password(fake):
    env = _clean_env(SF_JWT_KEY=(TESTDATA / "jwt_key_encrypted_pkcs8.pem").read_text())
    args = _without_option(_token_args(fake), "--jwt-key-file")

    completed = _run_cli(args, env=env, stdin="")

    _assert_clean_failure(completed, 2)
    assert completed.stderr == "sf-jwt: error: {}\n".format(MISSING_PASSWORD_MESSAGE.format("the key in SF_JWT_KEY"))
    assert fake.requests == []


# --- Missing, wrong and unreadable passwords ---


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_cli_encrypted_key_without_password(fake, name):
    key_file = TESTDATA / name

    completed = _run_cli(_token_args(fake, key_file=key_file), stdin="")

    _assert_clean_failure(completed, 2)
    assert completed.stderr == "sf-jwt: error: {}\n".format(
        MISSING_PASSWORD_MESSAGE.format("the key file {}".format(key_file)))
    assert completed.stdout == ""
    assert fake.requests == []


@pytest.mark.parametrize("source", ["file", "env"])
@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_cli_encrypted_key_wrong_password(fake, tmp_path, name, source):
    wrong_password = "wrong-Password-8d41c7"
    key_file = TESTDATA / name
    args = ["-v"] + _token_args(fake, key_file=key_file)
    env = _clean_env()
    if source == "file":
        password_file = _write_password_file(tmp_path, wrong_password.encode("ascii"))
        args += ["--jwt-key-password-file", str(password_file)]
        read_from = "the password file {}".format(password_file)
    else:
        env["SF_JWT_KEY_PASSWORD"] = wrong_password
        read_from = "SF_JWT_KEY_PASSWORD"

    completed = _run_cli(args, env=env, stdin="")

    _assert_clean_failure(completed, 2)
    error_line = "sf-jwt: error: {}. The password was read from {}".format(
        WRONG_PASSWORD_MESSAGE.format("the key file {}".format(key_file)), read_from)
    assert completed.stderr.splitlines()[-1] == error_line
    assert wrong_password not in completed.stderr
    assert wrong_password not in completed.stdout
    assert fake.requests == []


def test_cli_password_file_not_found(fake, tmp_path):
    missing = tmp_path / "no-such-password.txt"
    args = _token_args(fake, "--jwt-key-password-file", str(missing), key_file=TESTDATA / "jwt_key.p12")

    completed = _run_cli(args, stdin="")

    _assert_clean_failure(completed, 2)
    assert "password file not found" in completed.stderr
    assert str(missing) in completed.stderr
    assert fake.requests == []


def test_cli_shared_password_file_warns(fake, tmp_path):
    if os.name != "posix":
        pytest.skip("file modes are POSIX only")
    password_file = _write_password_file(tmp_path)
    password_file.chmod(0o644)
    args = _token_args(fake, "--format", "token", "--jwt-key-password-file", str(password_file),
                       key_file=TESTDATA / "jwt_key.p12")

    completed = _run_cli(args, stdin="")

    assert completed.returncode == 0, completed.stderr
    warnings = [line for line in completed.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert "password file {}".format(password_file) in warnings[0]
    assert "chmod 600 {}".format(password_file) in warnings[0]
    assert KEY_PASSWORD not in completed.stderr
    assert completed.stdout == fake.issued_tokens[0] + "\n"


# --- The password prompt in a terminal ---


@needs_pty
@pytest.mark.parametrize("source", ENCRYPTED_FIXTURES + ["SF_JWT_KEY"])
def test_cli_prompt_reads_password(source):
    args = ["assertion", "--client-id", CONSUMER_KEY, "--username", USERNAME]
    if source == "SF_JWT_KEY":
        env = _clean_env(SF_JWT_KEY=(TESTDATA / "jwt_key_encrypted_pkcs8.pem").read_text())
        prompt = "Password for the key in SF_JWT_KEY: "
    else:
        env = _clean_env()
        args += ["--jwt-key-file", str(TESTDATA / source)]
        prompt = "Password for the key file {}: ".format(TESTDATA / source)

    exit_code, output = _run_in_terminal(args, KEY_PASSWORD.encode("ascii") + b"\n", env=env)

    assert exit_code == 0, output
    assert output.startswith(prompt + "\n"), output
    assert KEY_PASSWORD not in output
    assertion = output[len(prompt) + 1:].strip()
    claims = jwt.decode(assertion, _cert_public_key(), algorithms=["RS256"], audience=LOGIN_AUDIENCE)
    assert claims["iss"] == CONSUMER_KEY
    assert claims["sub"] == USERNAME


@needs_pty
def test_cli_prompt_ctrl_d_fails():
    key_file = TESTDATA / "jwt_key_encrypted_pkcs1.pem"
    args = _assertion_args()
    args[args.index(str(KEY_PKCS1))] = str(key_file)

    exit_code, output = _run_in_terminal(args, b"\x04")

    assert exit_code == 2, output
    assert output.startswith("Password for the key file {}: ".format(key_file)), output
    assert "sf-jwt: error: {}\n".format(MISSING_PASSWORD_MESSAGE.format("the key file {}".format(key_file))) in output
    assert "Traceback" not in output


@needs_pty
def test_cli_prompt_wrong_password_fails():
    key_file = TESTDATA / "jwt_key.p12"
    wrong_password = "wrong-Password-5e02ab"
    args = _assertion_args()
    args[args.index(str(KEY_PKCS1))] = str(key_file)

    exit_code, output = _run_in_terminal(args, wrong_password.encode("ascii") + b"\n")

    assert exit_code == 2, output
    assert "sf-jwt: error: {}. The password was read from the terminal prompt\n".format(
        WRONG_PASSWORD_MESSAGE.format("the key file {}".format(key_file))) in output
    assert wrong_password not in output


@needs_pty
def test_cli_check_prompts_for_password():
    key_file = TESTDATA / "jwt_key.p12"

    exit_code, output = _run_in_terminal(_check_args(key_file), KEY_PASSWORD.encode("ascii") + b"\n")

    assert exit_code == 0, output
    assert output.startswith("Password for the key file {}: \n".format(key_file)), output
    assert KEY_PASSWORD not in output
    key_line = _check_line("PASS", "key", "RSA 2048 bits, PKCS#12, " + _jwt_key_fingerprint())
    assert key_line in output.splitlines()


# --- check with encrypted keys and certificates in the key file ---


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_cli_check_encrypted_key_container(tmp_path, name):
    password_file = _write_password_file(tmp_path)

    completed = _run_cli(_check_args(TESTDATA / name, "--jwt-key-password-file", str(password_file)), stdin="")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    container = ENCRYPTED_CONTAINERS[name]
    assert lines[0] == _check_line("PASS", "key", "RSA 2048 bits, {}, {}".format(container, _jwt_key_fingerprint()))
    names = [line[6:20].strip() for line in lines]
    assert names == _expected_offline_names(name.endswith(".p12"))
    assert [line[:5].strip() for line in lines] == ["PASS"] * len(names)
    assert completed.stderr == ""


@pytest.mark.parametrize("name", ["jwt_key.p12", "jwt_cert_and_key.pem"])
def test_cli_check_key_file_cert_passes(tmp_path, name):
    password_file = _write_password_file(tmp_path)

    completed = _run_cli(_check_args(TESTDATA / name, "--jwt-key-password-file", str(password_file)), stdin="")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    expected = _check_line("PASS", "key file cert",
                           "the key file contains the certificate of this key, valid until 2036-12-01")
    assert lines[1] == expected


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_cli_check_without_password_fails(name):
    key_file = TESTDATA / name

    completed = _run_cli(_check_args(key_file), stdin="")

    assert completed.returncode == 1, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == _check_line("FAIL", "key", MISSING_PASSWORD_MESSAGE.format("the key file {}".format(key_file)))
    assert [line[6:20].strip() for line in lines] == ["key", "certificate", "claims", "org kind"]
    assert completed.stderr == ""


def test_cli_check_wrong_password_fails(tmp_path):
    key_file = TESTDATA / "jwt_key_encrypted_pkcs8.pem"
    password_file = _write_password_file(tmp_path, b"wrong-Password-0a7d19\n")

    completed = _run_cli(_check_args(key_file, "--jwt-key-password-file", str(password_file)), stdin="")

    assert completed.returncode == 1, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    message = "{}. The password was read from the password file {}".format(
        WRONG_PASSWORD_MESSAGE.format("the key file {}".format(key_file)), password_file)
    assert lines[0] == _check_line("FAIL", "key", message)
    assert "wrong-Password-0a7d19" not in completed.stdout + completed.stderr


@needs_openssl
@pytest.mark.parametrize("name", ["jwt_key_pkcs1.pem", "jwt_key_encrypted_pkcs8.pem"])
def test_cli_check_other_certificate_warns(tmp_path, name):
    other_certificate = tmp_path / "other.crt"
    _openssl("req", "-x509", "-new", "-key", OTHER_KEY, "-subj", "/CN=other", "-days", "1", "-out", other_certificate)
    key_file = tmp_path / "other-cert-and-jwt-key.pem"
    key_file.write_bytes(other_certificate.read_bytes() + (TESTDATA / name).read_bytes())
    key_file.chmod(0o600)
    password_file = _write_password_file(tmp_path)

    completed = _run_cli(_check_args(key_file, "--jwt-key-password-file", str(password_file)), stdin="")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith(_check_line("PASS", "key", "RSA 2048 bits, "))
    assert lines[1] == _check_line(
        "WARN", "key file cert", "the key file contains 1 certificate(s), and none of them is for this key: upload "
        "the certificate made with this key to the Connected App, not these")


def test_check_key_file_expired_cert_warns(tmp_path):
    expired = tmp_path / "expired.crt"
    _expired_certificate(expired)
    key_file = tmp_path / "expired-cert-and-key.pem"
    key_file.write_bytes(expired.read_bytes() + (TESTDATA / "jwt_key_encrypted_pkcs8.pem").read_bytes())
    key_file.chmod(0o600)

    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, private_key=str(key_file), key_password=KEY_PASSWORD,
                                 offline=True)

    result = {result.name: result for result in results}["key file cert"]
    assert result.status == "WARN"
    assert result.message == "the key file contains the certificate of this key, which expired on 2021-01-01"


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_check_setup_key_password(name, as_bytes):
    password = KEY_PASSWORD.encode("ascii") if as_bytes else KEY_PASSWORD

    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, private_key=str(TESTDATA / name), key_password=password,
                                 cert_file=str(JWT_CERT), offline=True)

    assert [result.name for result in results] == _expected_offline_names(name.endswith(".p12"))
    assert [result.status for result in results] == ["PASS"] * len(results)
    expected = "RSA 2048 bits, {}, {}".format(ENCRYPTED_CONTAINERS[name], _jwt_key_fingerprint())
    assert results[0].message == expected


@pytest.mark.parametrize("password, message", [(None, MISSING_PASSWORD_MESSAGE), ("wrong", WRONG_PASSWORD_MESSAGE)],
                         ids=["missing", "wrong"])
@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_check_setup_password_fails(name, password, message):
    path = TESTDATA / name

    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, private_key=str(path), key_password=password, offline=True)

    assert results[0].name == "key"
    assert results[0].status == "FAIL"
    assert results[0].message == message.format("the key file {}".format(path))


# --- decode with an encrypted key ---


@pytest.mark.parametrize("signer, signature, exit_code", [(KEY_PKCS1, "valid", 0), (OTHER_KEY, "invalid", 1)],
                         ids=["fixture key", "other key"])
def test_cli_decode_pkcs12_key(tmp_path, signer, signature, exit_code):
    password_file = _write_password_file(tmp_path)
    args = ["decode", _signed_assertion(signer), "--jwt-key-file", str(TESTDATA / "jwt_key.p12"),
            "--jwt-key-password-file", str(password_file)]

    completed = _run_cli(args, stdin="")

    assert completed.returncode == exit_code, completed.stderr
    assert json.loads(completed.stdout)["signature"] == signature


def test_cli_decode_encrypted_key_without_password():
    key_file = TESTDATA / "jwt_key.p12"

    completed = _run_cli(["decode", _signed_assertion(), "--jwt-key-file", str(key_file)], stdin="")

    _assert_clean_failure(completed, 2)
    assert completed.stderr == "sf-jwt: error: {}\n".format(
        MISSING_PASSWORD_MESSAGE.format("the key file {}".format(key_file)))


# --- Help text: the password comes from a file, the environment or a prompt ---


def test_cli_token_help_password_file():
    completed = _run_cli(["token", "--help"], stdin="")

    assert completed.returncode == 0, completed.stderr
    assert "--jwt-key-password-file FILE" in completed.stdout
    assert "SF_JWT_KEY_PASSWORD" in completed.stdout


@pytest.mark.parametrize("command, expected", [
    ([], set()),
    (["token"], {"--jwt-key-password-file"}),
    (["assertion"], {"--jwt-key-password-file"}),
    (["decode"], {"--jwt-key-password-file"}),
    (["check"], {"--jwt-key-password-file"}),
    (["keygen"], set()),
], ids=["sf-jwt", "token", "assertion", "decode", "check", "keygen"])
def test_cli_help_password_options(command, expected):
    completed = _run_cli(command + ["--help"], stdin="")

    assert completed.returncode == 0, completed.stderr
    assert set(re.findall(r"--[\w-]*pass[\w-]*", completed.stdout)) == expected
    assert "--password" not in completed.stdout
    assert "--jwt-key-password " not in completed.stdout


@pytest.mark.parametrize("password, line", [
    (None, _check_line("FAIL", "key", MISSING_PASSWORD_MESSAGE.format("the key in SF_JWT_KEY"))),
    (KEY_PASSWORD, _check_line("PASS", "key", "RSA 2048 bits, encrypted PKCS#8 PEM, {}".format(
        sf_jwt.load_private_key(KEY_PKCS1).fingerprint))),
])
def test_cli_check_env_key_encrypted(password, line):
    env = _clean_env(SF_JWT_KEY=(TESTDATA / "jwt_key_encrypted_pkcs8.pem").read_text())
    if password is not None:
        env["SF_JWT_KEY_PASSWORD"] = password
    args = _without_option(_check_args(KEY_PKCS1), "-f")

    completed = _run_cli(args, env=env)

    assert completed.returncode == (1 if password is None else 0), completed.stderr
    assert completed.stdout.splitlines()[0] == line


@pytest.mark.parametrize("extra, expected", [
    (["--jwt-key-password", KEY_PASSWORD], "--jwt-key-password and 1 value (not shown)"),
    (["--password=" + KEY_PASSWORD], "--password and 1 value (not shown)"),
    (["--password", KEY_PASSWORD, "more"], "--password and 2 values (not shown)"),
    ([KEY_PASSWORD], "1 value (not shown)"),
])
def test_cli_unknown_argument_value_hidden(extra, expected):
    if sys.version_info < (3, 8) and extra[0] == "--jwt-key-password":
        pytest.skip("Python 3.6 and 3.7 accept abbreviated options, so this is read as --jwt-key-password-file")

    completed = _run_cli(_assertion_args(*extra))

    _assert_clean_failure(completed, 2)
    assert completed.stderr.splitlines()[-1] == "sf-jwt: error: unrecognized arguments: " + expected
    assert KEY_PASSWORD not in completed.stderr


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_cli_password_file_utf16(tmp_path, encoding):
    # Windows PowerShell 5 writes "echo PASSWORD > FILE" as UTF-16 with a byte order mark and CRLF.
    # Python's "utf-16" codec writes the byte order mark itself; the other two need it in the text.
    text = KEY_PASSWORD + "\r\n" if encoding == "utf-16" else "\ufeff" + KEY_PASSWORD + "\r\n"
    content = text.encode(encoding)
    password_file = _write_password_file(tmp_path, content)
    args = _assertion_args("--jwt-key-password-file", str(password_file))
    args[args.index(str(KEY_PKCS1))] = str(TESTDATA / "jwt_key.p12")

    completed = _run_cli(args)

    assert completed.returncode == 0, completed.stderr
    assert _cert_public_key().verify(
        _b64url_to_bytes(completed.stdout.strip().split(".")[2]),
        completed.stdout.strip().rsplit(".", 1)[0].encode("ascii"),
        padding.PKCS1v15(), hashes.SHA256(),
    ) is None


def test_cli_password_file_bad_utf16(tmp_path):
    password_file = _write_password_file(tmp_path, b"\xff\xfe\x00\xd8")
    args = _assertion_args("--jwt-key-password-file", str(password_file))

    completed = _run_cli(args)

    _assert_clean_failure(completed, 2)
    assert completed.stderr == (
        "sf-jwt: error: the password file {} starts like UTF-16 but is not valid UTF-16: save it as "
        "UTF-8\n".format(password_file)
    )


_PKCS12_AS_CERTIFICATE = (
    "{0} is a PKCS#12 file, not a certificate: pass it with --jwt-key-file instead, or write its certificate "
    "with 'openssl pkcs12 -in {0} -nokeys -clcerts -out cert.crt'"
)


def test_cli_decode_pkcs12_as_certificate():
    path = TESTDATA / "jwt_key.p12"

    completed = _run_cli(["decode", _signed_assertion(KEY_PKCS1), "--cert", str(path)])

    _assert_clean_failure(completed, 2)
    assert completed.stderr == "sf-jwt: error: {}\n".format(_PKCS12_AS_CERTIFICATE.format(path))


def test_cli_check_pkcs12_as_certificate():
    path = TESTDATA / "jwt_key.p12"
    args = _check_args(KEY_PKCS1)
    args[args.index("--cert") + 1] = str(path)

    completed = _run_cli(args)

    assert completed.returncode == 1, completed.stderr
    assert _check_line("FAIL", "certificate", _PKCS12_AS_CERTIFICATE.format(path)) in completed.stdout.splitlines()


@needs_openssl3
def test_pkcs12_without_certificate_described(tmp_path):
    path = tmp_path / "key-only.p12"
    _openssl("pkcs12", "-export", "-nocerts", "-inkey", KEY_PKCS1, "-passout", "pass:x", "-out", path)

    container, certificates = sf_jwt._describe_key_container(path.read_bytes(), "x", _TEST_ORIGIN)

    assert container == "PKCS#12 with no certificate"
    assert certificates == []


def test_check_certificate_without_loaded_key():
    results = sf_jwt.check_setup(CONSUMER_KEY, USERNAME, TESTDATA / "jwt_key.p12", cert_file=str(JWT_CERT),
                                 offline=True)

    by_name = {result.name: result for result in results}
    assert by_name["key"].status == "FAIL"
    assert by_name["certificate"].status == "PASS"
    assert by_name["certificate"].message == (
        "{} is valid until 2036-12-01, but it was not compared with the key, which did not load".format(JWT_CERT)
    )
