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
from hypothesis import given
from hypothesis import strategies as st

import sf_jwt

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
        # Seconds each token request waits before its answer, so concurrent logins overlap.
        self.login_delay = 0.0
        self.revoked = set()
        self.revoke_all = False
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

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _handle(self):
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        request = RecordedRequest(self.command, self.path, self.headers, self.rfile.read(length))
        fake.requests.append(request)

        if self.path.startswith(API_PATH):
            self._handle_api(fake, request)
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
    ("jwt_key_encrypted_pkcs8.pem", ["encrypted", "openssl pkcs8"]),
    ("jwt_key_encrypted_pkcs1.pem", ["encrypted", "openssl rsa"]),
    ("jwt_key.p12", ["pkcs#12", "openssl pkcs12"]),
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
        command + list(args), cwd=str(REPO), env=env if env is not None else _clean_env(), input=stdin,
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
