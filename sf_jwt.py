# MIT License
#
# Copyright (c) 2026 The sf_jwt authors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in all
# copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
"""Log in to Salesforce with the OAuth 2.0 JWT bearer flow.

The flow, in the order this file implements it:

1. Load the Connected App's RSA private key (PKCS#1 or PKCS#8, PEM or DER,
   or PKCS#12), decrypting it with its password if it is encrypted.
2. Build the claims: ``iss`` = consumer key, ``sub`` = username, ``aud`` =
   authorization server, ``exp`` = now + 180 s, in seconds since the epoch (UTC).
3. Sign them as a compact JWS with RS256 (RSASSA-PKCS1-v1_5 with SHA-256): the
   assertion.
4. POST the assertion to ``{login URL}/services/oauth2/token`` and return the
   access token and instance URL, or raise an error that names the fix.

Standards: RFC 7523 (JWT bearer grant), RFC 7515 (JWS), RFC 7519 (JWT),
RFC 4648 section 5 (base64url), RFC 8017 (RSASSA-PKCS1-v1_5), RFC 5208 and
RFC 5958 (PKCS#8), RFC 5280 (X.509), RFC 7292 (PKCS#12), RFC 8018 (PBES2 and
PBKDF2), FIPS-197 (AES) and SP 800-67 (TDEA).

Example::

    import sf_jwt

    token = sf_jwt.get_token(
        client_id="3MVG9...",                 # the Connected App's consumer key
        username="integration@example.com",
        private_key="server.key",             # a path, PEM text or DER bytes
        login_url="https://test.salesforce.com",
    )
    print(token.instance_url, token.access_token)

Requirements: CPython 3.6 or newer and the pure-Python ``rsa`` package
(4.7 or newer, below 5). Nothing else: no compiler, no OpenSSL bindings, no
openssl command. DER is parsed by a small strict reader in this file, so
``rsa``'s own dependency pyasn1 is never imported.

Salesforce returns no expiry and no refresh token for this flow, and limits
logins to about 3,600 per user per hour. ``TokenProvider`` reuses a token
across threads and processes and logs in again when the REST API responds
with HTTP 401 (INVALID_SESSION_ID).

Limitations: multi-prime RSA keys are rejected. Encrypted keys are decrypted
with AES-CBC or DES-EDE3-CBC only; RC2, RC4, single DES and scrypt are rejected
with the openssl command that re-encrypts the key with AES. The private-key
operation is blinded, but pure-Python arithmetic is not constant time. The
decryption of key files is not constant time either, and does not try to be:
it reads a file on the machine that already stores the key.
"""

import base64
import binascii
import contextlib
import datetime
import hashlib
import math
import os
import re
import sys
import time
import typing

import rsa

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CheckResult",
    "ConfigurationError",
    "DecodeError",
    "InvalidKeyError",
    "SalesforceJWTError",
    "SigningKey",
    "Response",
    "Token",
    "TokenProvider",
    "TransportError",
    "base64url_decode",
    "base64url_encode",
    "build_claims",
    "check_setup",
    "create_assertion",
    "generate_key_and_certificate",
    "get_token",
    "load_private_key",
    "main",
    "request_token",
    "sign_rs256",
]



class _Logger(object):
    """The module's logger, created on first use.

    Importing logging takes longer than importing the rest of this module.
    While nothing has imported logging, nothing can have configured it, and its
    default level (WARNING) drops debug and info records, so those calls return
    at once. Warnings always go through logging.
    """

    def __getattr__(self, name: str) -> typing.Any:
        if name in ("debug", "info") and "logging" not in sys.modules:
            return _ignore_log_record
        import logging

        return getattr(logging.getLogger(__name__), name)


def _ignore_log_record(*args: typing.Any, **kwargs: typing.Any) -> None:
    return None


_logger = _Logger()  # type: typing.Any

# --- Constants -------------------------------------------------------------

_PRODUCTION_LOGIN_URL = "https://login.salesforce.com"
_SANDBOX_LOGIN_URL = "https://test.salesforce.com"
_TOKEN_PATH = "/services/oauth2/token"
_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"

# Salesforce documents an expiry "within 3 minutes", and 300 s is the maximum accepted here.
_DEFAULT_LIFETIME = 180
_MAX_LIFETIME = 300
_DEFAULT_TIMEOUT = 30

# Retries of transient failures: attempts, total time, and the backoff
# (full jitter: a random wait from 0 to base * 2**(attempt - 1), at most the cap).
_DEFAULT_MAX_ATTEMPTS = 3
_DEFAULT_DEADLINE = 60
_RETRY_BASE_WAIT = 0.5
_MAX_RETRY_WAIT = 30.0

# TokenProvider reuses a token this long by default: the shortest session
# timeout a Salesforce admin can set is 15 minutes.
_DEFAULT_MAX_AGE = 900
_CACHE_FORMAT = "sf_jwt token cache 1"

# A key file is a few kilobytes and a token response is under one. These caps
# keep a wrong file or a misbehaving server from filling memory.
_MAX_KEY_FILE_BYTES = 1024 * 1024
_MAX_RESPONSE_BYTES = 1024 * 1024

# Key sizes outside this range are rejected: below 512 bits an RS256 signature
# does not fit, above 16384 bits the pure-Python arithmetic takes minutes.
_MIN_KEY_BITS = 512
_MAX_KEY_BITS = 16384

# The JOSE header is fixed: Salesforce accepts RS256 only.
_JWS_HEADER = b'{"alg":"RS256"}'

# DER encoding of the DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

_USER_AGENT = "sf-jwt/{} (Python {}.{})".format(__version__, *sys.version_info[:2])


# --- Exceptions ------------------------------------------------------------


class SalesforceJWTError(Exception):
    """Root of every error this module raises on purpose."""


class ConfigurationError(SalesforceJWTError, ValueError):
    """An argument, option or setting is invalid; fix it and try again."""


class InvalidKeyError(ConfigurationError):
    """The private key is missing, unreadable, in an unsupported form or not RSA."""


class DecodeError(SalesforceJWTError, ValueError):
    """A value is not valid base64url, or a JWT is not well formed."""


class AuthenticationError(SalesforceJWTError):
    """Salesforce rejected the token request with an OAuth error.

    Retrying the same request gets the same error, so fix what ``hint`` names.

    Attributes:
        status: The HTTP status code, usually 400.
        error: The OAuth ``error`` code, for example ``invalid_grant``.
        error_description: Salesforce's ``error_description``.
        hint: The usual cause and fix, or an empty string.
    """

    def __init__(self, status: int, error: str, error_description: str, hint: str) -> None:
        self.status = status
        self.error = error
        self.error_description = error_description
        self.hint = hint
        name = error or "an OAuth error without an error code (HTTP {})".format(status)
        message = "{}: {}".format(name, error_description) if error_description else name
        if hint:
            message = "{}. {}".format(message, hint)
        super().__init__(message)


class TransportError(SalesforceJWTError):
    """No usable response from the token endpoint.

    Examples are a DNS failure, a refused or reset connection, a timeout, a
    failed TLS verification, HTTP 5xx, or a body that is not JSON.

    Attributes:
        retryable: True when the same request may succeed later (refused or
            reset connections, timeouts, HTTP 429, 502, 503 and 504).
        status: The HTTP status code, or None when no HTTP answer arrived.
        retry_after: Seconds the server asked to wait (``Retry-After``), or None.
    """

    def __init__(
        self,
        message: str,
        retryable: bool = False,
        status: typing.Optional[int] = None,
        retry_after: typing.Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


# --- base64url (RFC 4648 section 5) ----------------------------------------

_BASE64URL_ALPHABET = re.compile(rb"\A[A-Za-z0-9_-]*={0,2}\Z")
_BASE64URL_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def base64url_encode(data: bytes) -> str:
    """Encode bytes as base64url text without padding, as JWS requires."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("base64url_encode takes bytes, not {}".format(type(data).__name__))
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def base64url_decode(text: typing.Union[str, bytes]) -> bytes:
    """Decode base64url text, with or without ``=`` padding.

    Raises:
        DecodeError: The text contains a character outside the base64url
            alphabet (``+`` and ``/`` of plain base64 included), or has an
            impossible length.
    """
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise DecodeError("base64url text contains a non-ASCII character") from None
    elif isinstance(text, (bytes, bytearray)):
        raw = bytes(text)
    else:
        raise TypeError("base64url_decode takes str or bytes, not {}".format(type(text).__name__))

    if not _BASE64URL_ALPHABET.match(raw):
        raise DecodeError(_describe_bad_base64url(raw))
    unpadded = raw.rstrip(b"=")
    if len(unpadded) % 4 == 1:
        raise DecodeError("not base64url: {} characters cannot encode whole bytes".format(len(unpadded)))
    if raw != unpadded and len(raw) % 4 != 0:
        raise DecodeError("not base64url: wrong amount of '=' padding")

    padding = b"=" * (-len(unpadded) % 4)
    try:
        return base64.urlsafe_b64decode(unpadded + padding)
    except (binascii.Error, ValueError) as error:
        raise DecodeError("not base64url: {}".format(error)) from None


def _describe_bad_base64url(raw: bytes) -> str:
    """Name the first character that is not base64url, or the excess padding."""
    padding_starts = len(raw.rstrip(b"="))
    for position, byte in enumerate(raw[:padding_starts]):
        if byte not in _BASE64URL_BYTES:
            plain = " ('+' and '/' mean plain base64, which JWS does not use)" if byte in b"+/" else ""
            return "not base64url: {!r} at position {} is not one of A-Z, a-z, 0-9, '-' and '_'{}".format(
                chr(byte), position, plain)
    return "not base64url: more than two '=' of padding"


# --- DER reader and writer (X.690) ------------------------------------------
#
# Just enough ASN.1 for RSA keys, PKCS#8 and X.509: a strict reader that
# rejects indefinite and non-minimal lengths and any length that runs past the
# data it is in, so a corrupt length field fails at once instead of allocating.

_TAG_INTEGER = 0x02
_TAG_BIT_STRING = 0x03
_TAG_OCTET_STRING = 0x04
_TAG_NULL = 0x05
_TAG_OID = 0x06
_TAG_UTF8_STRING = 0x0C
_TAG_PRINTABLE_STRING = 0x13
_TAG_UTC_TIME = 0x17
_TAG_GENERALIZED_TIME = 0x18
_TAG_SEQUENCE = 0x30
_TAG_SET = 0x31
_TAG_CONTEXT_0 = 0xA0
_TAG_CONTEXT_1 = 0xA1
_TAG_CONTEXT_0_PRIMITIVE = 0x80

_OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_OID_NAMES = {
    "1.2.840.113549.1.1.10": "RSASSA-PSS (RSA restricted to PSS signatures, not RS256)",
    "1.2.840.10045.2.1": "EC",
    "1.2.840.10040.4.1": "DSA",
    "1.3.101.110": "X25519",
    "1.3.101.111": "X448",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
    "1.2.840.113549.1.3.1": "Diffie-Hellman",
}


class _DERError(Exception):
    """Malformed DER. Never leaves the module: callers wrap it."""


def _der_read(data: bytes, offset: int, limit: int) -> typing.Tuple[int, int, int]:
    """Read the element at ``offset``; return its tag and the bounds of its content.

    The element must end at or before ``limit``.
    """
    if offset + 2 > limit:
        raise _DERError("truncated element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise _DERError("multi-byte tags are not used in keys")
    length = data[offset + 1]
    start = offset + 2

    if length == 0x80:
        raise _DERError("indefinite length is not DER")
    if length > 0x80:
        size = length & 0x7F
        if size > 4 or start + size > limit:
            raise _DERError("length field too long")
        length = int.from_bytes(data[start:start + size], "big")
        if length < 0x80 or data[start] == 0:
            raise _DERError("length is not minimally encoded")
        start += size

    end = start + length
    if end > limit:
        raise _DERError("length runs past the end of the data")
    return tag, start, end


def _der_children(data: bytes, start: int, end: int) -> typing.List[typing.Tuple[int, bytes]]:
    """Split the content of a constructed element into (tag, content) pairs."""
    children = []
    offset = start
    while offset < end:
        tag, child_start, child_end = _der_read(data, offset, end)
        children.append((tag, data[child_start:child_end]))
        offset = child_end
    return children


def _der_sequence(data: bytes) -> typing.List[typing.Tuple[int, bytes]]:
    """Return the children of the SEQUENCE that ``data`` consists of, exactly."""
    tag, start, end = _der_read(data, 0, len(data))
    if tag != _TAG_SEQUENCE:
        raise _DERError("expected a SEQUENCE")
    if end != len(data):
        raise _DERError("unexpected data after the SEQUENCE")
    return _der_children(data, start, end)


def _der_integer(element: typing.Tuple[int, bytes]) -> int:
    """Decode a non-negative INTEGER."""
    tag, content = element
    if tag != _TAG_INTEGER or not content:
        raise _DERError("expected an INTEGER")
    if content[0] & 0x80:
        raise _DERError("negative INTEGER")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise _DERError("INTEGER is not minimally encoded")
    return int.from_bytes(content, "big")


def _der_oid(element: typing.Tuple[int, bytes]) -> str:
    """Decode an OBJECT IDENTIFIER into dotted form."""
    tag, content = element
    if tag != _TAG_OID or not content or content[-1] & 0x80:
        raise _DERError("expected an OBJECT IDENTIFIER")
    arcs = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first] + arcs[1:])


def _der_encode(tag: int, content: bytes) -> bytes:
    """Encode one element with a minimal DER length."""
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = (len(content).bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + len(content).to_bytes(size, "big") + content


def _der_encode_integer(value: int) -> bytes:
    """Encode a non-negative INTEGER, with a leading zero byte where the sign needs one."""
    return _der_encode(_TAG_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_encode_rsa_public_key_info(n: int, e: int) -> bytes:
    """Encode an RSA SubjectPublicKeyInfo (RFC 5280 and RFC 8017 appendix A.1.1)."""
    rsa_encryption = _der_encode(_TAG_OID, bytes.fromhex("2a864886f70d010101"))
    algorithm = _der_encode(_TAG_SEQUENCE, rsa_encryption + _der_encode(_TAG_NULL, b""))
    public_key = _der_encode(_TAG_SEQUENCE, _der_encode_integer(n) + _der_encode_integer(e))
    return _der_encode(_TAG_SEQUENCE, algorithm + _der_encode(_TAG_BIT_STRING, b"\x00" + public_key))


# --- Private keys -----------------------------------------------------------


class SigningKey(object):
    """An RSA private key, checked and ready to sign.

    Its ``repr`` and ``str`` show the size and the fingerprint, never the
    private numbers (a bare ``rsa.PrivateKey`` prints d, p and q).

    Attributes:
        bits: The size of the modulus in bits.
        fingerprint: ``sha256:`` and the hex SHA-256 of the DER
            SubjectPublicKeyInfo, the value that
            ``openssl pkey -in KEY -pubout -outform DER | openssl dgst -sha256``
            prints.
    """

    __slots__ = ("_key", "_size", "bits", "fingerprint")

    def __init__(self, key: rsa.PrivateKey) -> None:
        self._key = key
        self.bits = key.n.bit_length()
        self._size = (self.bits + 7) // 8
        public_key_info = _der_encode_rsa_public_key_info(key.n, key.e)
        self.fingerprint = "sha256:" + hashlib.sha256(public_key_info).hexdigest()

    @property
    def public_numbers(self) -> typing.Tuple[int, int]:
        """The public modulus n and exponent e."""
        return self._key.n, self._key.e

    @property
    def rsa_key(self) -> rsa.PrivateKey:
        """The underlying ``rsa.PrivateKey``. Its ``repr`` prints the private numbers."""
        return self._key

    def __repr__(self) -> str:
        return "<SigningKey RSA {} bits {}>".format(self.bits, self.fingerprint)

    __str__ = __repr__

    def __reduce__(self) -> typing.NoReturn:
        raise TypeError("a SigningKey is not pickled, so the private key cannot leak into a file or cache")


_KeySource = typing.Union[str, bytes, "os.PathLike[str]", SigningKey, rsa.PrivateKey]


_KeyPassword = typing.Optional[typing.Union[str, bytes]]


def load_private_key(source: typing.Any, password: _KeyPassword = None) -> SigningKey:
    """Load and check an RSA private key, decrypting it if it is encrypted.

    Args:
        source: A path (str or ``os.PathLike``), PEM text (str or bytes) or DER
            bytes. PKCS#1 (``BEGIN RSA PRIVATE KEY``) and PKCS#8 (``BEGIN PRIVATE
            KEY``) are accepted, with CRLF or CR line ends, a UTF-8 byte order
            mark, surrounding whitespace, line breaks flattened into the two
            characters backslash and n (as in environment variables and CI
            secrets), the whole file encoded once more in base64, or a
            certificate before the key. A ``SigningKey`` is returned as it is;
            an ``rsa.PrivateKey`` is checked and wrapped. Encrypted keys are
            decrypted with ``password``: encrypted PKCS#8 (``BEGIN ENCRYPTED
            PRIVATE KEY``, PBES2 with AES-CBC or DES-EDE3-CBC, or the PKCS#12
            scheme pbeWithSHAAnd3-KeyTripleDES-CBC), traditional OpenSSL PEM with
            ``Proc-Type: 4,ENCRYPTED``, and PKCS#12 (.p12, .pfx) in DER or
            base64. In a PKCS#12 file with several keys, the key whose
            certificate the file contains is used.
        password: The password of an encrypted key or PKCS#12 file: a str, or
            bytes (UTF-8, or any bytes for formats that take bytes). Ignored
            for a key that is not encrypted. A PKCS#12 file without a password
            is tried with the empty password.

    Returns:
        The checked key.

    Raises:
        InvalidKeyError: The input is not a usable RSA private key, or it is
            encrypted and the password is missing or wrong. The message names
            what was found and how to fix it.
    """
    if isinstance(source, SigningKey):
        return source
    if isinstance(source, rsa.PrivateKey):
        return SigningKey(_checked_rsa_key(source.n, source.e, source.d, source.p, source.q))

    _check_password_type(password)
    data, origin = _read_key_source(source)
    key = _key_from_bytes(data, origin, False, password)
    if origin.path is not None:
        _warn_if_shared(origin.path)
    return key


class _KeyOrigin(typing.NamedTuple("_KeyOrigin", [("description", str), ("path", typing.Optional[str])])):
    """The origin of key data: a phrase for messages, and the file path if any."""

    def command_path(self) -> str:
        """Return the path to put in a suggested command, quoted if it has spaces."""
        path = self.path or "KEY_FILE"
        return '"{}"'.format(path) if " " in path else path


class _EnvironmentKeyText(str):
    """Key text from SF_JWT_KEY, which load_private_key names as such in its messages."""


def _read_key_source(source: typing.Any) -> typing.Tuple[bytes, _KeyOrigin]:
    """Return the key data and where it came from."""
    if isinstance(source, _EnvironmentKeyText):
        return source.encode("utf-8"), _KeyOrigin("the key in SF_JWT_KEY", None)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), _KeyOrigin("the key data", None)
    if isinstance(source, str) and not source.strip():
        raise InvalidKeyError("the key is empty: pass a key file path or the PEM text of the private key")
    if isinstance(source, str) and _looks_like_key_text(source):
        return source.encode("utf-8"), _KeyOrigin("the key text", None)
    if isinstance(source, str) and _looks_like_base64(source) and not os.path.exists(source):
        return source.encode("ascii"), _KeyOrigin("the key text", None)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return _read_key_file(path), _KeyOrigin("the key file {}".format(path), path)
    raise InvalidKeyError(
        "cannot load a private key from a {}: pass a file path, PEM text or DER bytes".format(type(source).__name__)
    )


def _looks_like_key_text(text: str) -> bool:
    """Tell key text from a path: PEM markers or line breaks never appear in a key file's path."""
    return "-----" in text or "\n" in text or "\r" in text or "\\n" in text or len(text) > 1024


def _looks_like_base64(text: str) -> bool:
    """Tell whether text is long base64 (a key file encoded for a CI secret), not a path."""
    compact = "".join(text.split())
    return len(compact) >= 64 and re.match(r"\A[A-Za-z0-9+/]+={0,2}\Z", compact) is not None


def _read_key_file(path: str) -> bytes:
    """Read a key file, at most 1 MiB, turning OS errors into InvalidKeyError."""
    return _read_small_file(path, "key file", InvalidKeyError)


_shared_key_files_warned = set()  # type: typing.Set[str]


def _warn_if_shared(path: str, file_kind: str = "key file") -> None:
    """Log a warning, once per path, when other users may read a key or password file (POSIX only)."""
    mode = _shared_mode(path)
    if mode is not None and path not in _shared_key_files_warned:
        _shared_key_files_warned.add(path)
        _logger.warning(
            "the %s %s is accessible to other users (mode %03o): restrict it with 'chmod 600 %s'",
            file_kind, path, mode, path,
        )


def _shared_mode(path: str) -> typing.Optional[int]:
    """Return the permission bits of a file that group or others may access, else None."""
    if os.name != "posix":
        return None
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    return mode if mode & 0o077 else None


def _read_small_file(path: str, what: str, error_class: typing.Type[ConfigurationError]) -> bytes:
    """Read a file of at most 1 MiB; raise error_class with the path and the fix otherwise."""
    try:
        with open(path, "rb") as small_file:
            data = small_file.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise error_class(
            "{} not found: {} (check the path and the working directory)".format(what, path)
        ) from None
    except IsADirectoryError:
        raise error_class("{} is a directory, not a {}".format(path, what)) from None
    except PermissionError:
        raise error_class(
            "permission denied reading the {} {}: run as a user who can read it".format(what, path)
        ) from None
    except OSError as error:
        raise error_class("cannot read the {} {}: {}".format(what, path, error.strerror or error)) from None
    except ValueError:  # open() rejects a path with a NUL character
        raise error_class("the {} path contains a NUL character: pass the path of the file".format(what)) from None

    if len(data) > _MAX_KEY_FILE_BYTES:
        raise error_class(
            "{} is larger than 1 MiB, so it is not a {} (a 4096-bit key is about 3 KB)".format(path, what)
        )
    return data


def _key_from_bytes(data: bytes, origin: _KeyOrigin, nested: bool, password: _KeyPassword) -> SigningKey:
    """Find the private key in PEM, DER or base64-wrapped data."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise InvalidKeyError(
            "{} is empty: pass the private key, which starts with -----BEGIN".format(origin.description)
        )

    if data[:1] == b"\x30":
        return _key_from_der(data, origin, password)
    if data.startswith(b"PuTTY-User-Key-File-"):
        raise InvalidKeyError(
            "{} is a PuTTY key (.ppk): export it as PEM with "
            "'puttygen {} -O private-openssh -o key.pem' and pass key.pem".format(
                origin.description, origin.command_path()
            )
        )

    text = _decode_text(data)
    if text is not None and "-----BEGIN" in text:
        return _key_from_pem(text, origin, password)
    if text is not None and "-----END" in text:
        raise InvalidKeyError(
            "{} has an -----END line but no -----BEGIN line: copy the whole key, from its "
            "-----BEGIN line to its -----END line".format(origin.description)
        )
    if text is not None and not nested and _looks_like_base64(text):
        try:
            decoded = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded:
            described = origin._replace(description=origin.description + " (decoded from base64)")
            return _key_from_bytes(decoded, described, True, password)

    raise InvalidKeyError(
        "{} is neither PEM nor DER: pass the private key file, whose first line is "
        "-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----".format(origin.description)
    )


def _decode_text(data: bytes) -> typing.Optional[str]:
    """Decode key text, or return None for binary data."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# PEM (RFC 7468) as OpenSSL writes it, plus RFC 1421 headers for the
# "Proc-Type: 4,ENCRYPTED" keys of older OpenSSL versions.
_PEM_MARKER = re.compile(r"-----(BEGIN|END) ([A-Z0-9 #]+?)-----")

_PEMBlock = typing.NamedTuple("_PEMBlock", [("label", str), ("headers", typing.Dict[str, str]), ("body", str)])


def _pem_blocks(text: str, origin: _KeyOrigin) -> typing.List[_PEMBlock]:
    """Split PEM text into its blocks, ignoring text between them.

    Line breaks may be LF, CRLF, CR or the two characters backslash and n.
    """
    text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\\r", "\n")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _PEM_MARKER.sub(lambda marker: "\n" + marker.group(0) + "\n", text)

    blocks = []
    current = None  # type: typing.Optional[_PEMBlock]
    body_lines = []  # type: typing.List[str]
    for line in text.split("\n"):
        line = line.strip()
        marker = _PEM_MARKER.fullmatch(line)
        if current is None:
            if marker and marker.group(1) == "BEGIN":
                current = _PEMBlock(marker.group(2), {}, "")
                body_lines = []
        elif marker is None:
            if ":" in line and not body_lines:
                name, _, value = line.partition(":")
                current.headers[name.strip()] = value.strip()
            elif line:
                body_lines.append(line)
        elif marker.group(1) == "END" and marker.group(2) == current.label:
            blocks.append(current._replace(body="".join("".join(body_lines).split())))
            current = None
        else:
            raise InvalidKeyError(
                "{} is corrupt: the PEM block {} ends with {}; copy the key file again".format(
                    origin.description, current.label, line
                )
            )

    if current is not None:
        raise InvalidKeyError(
            "{} is truncated: the PEM block {} has no -----END line; copy the key file again".format(
                origin.description, current.label
            )
        )
    return blocks


def _pem_block_der(block: _PEMBlock, origin: _KeyOrigin) -> bytes:
    """Decode the base64 body of a PEM block."""
    try:
        der = base64.b64decode(block.body, validate=True)
    except (binascii.Error, ValueError):
        der = b""
    if not der:
        raise InvalidKeyError(
            "{} is corrupt: the base64 body of its {} block is invalid; copy the key file again".format(
                origin.description, block.label
            )
        )
    return der


def _key_from_pem(text: str, origin: _KeyOrigin, password: _KeyPassword) -> SigningKey:
    """Find the one private key among the PEM blocks and load it."""
    blocks = _pem_blocks(text, origin)
    private_blocks = [block for block in blocks if block.label.endswith("PRIVATE KEY")]
    if len(private_blocks) > 1:
        raise InvalidKeyError(
            "{} contains {} private keys: keep only the one whose certificate is uploaded "
            "to the Connected App".format(origin.description, len(private_blocks))
        )
    if not private_blocks:
        _raise_for_pem_without_key(blocks, origin)

    block = private_blocks[0]
    if block.label == "OPENSSH PRIVATE KEY":
        raise InvalidKeyError(
            "{} is in OpenSSH's own format (BEGIN OPENSSH PRIVATE KEY): convert a copy to PEM with "
            "'cp {} key.pem' and 'ssh-keygen -p -m PEM -f key.pem', then pass key.pem".format(
                origin.description, origin.command_path()
            )
        )
    if block.label in ("EC PRIVATE KEY", "DSA PRIVATE KEY"):
        _raise_not_rsa(block.label.split()[0], origin)
    if block.label == "ENCRYPTED PRIVATE KEY":
        return _key_from_der(_pem_block_der(block, origin), origin, password)
    if block.label not in ("RSA PRIVATE KEY", "PRIVATE KEY"):
        raise InvalidKeyError(
            "{} contains a '{}' block, which is not a PKCS#1 or PKCS#8 RSA private key".format(
                origin.description, block.label
            )
        )

    if "ENCRYPTED" in block.headers.get("Proc-Type", ""):
        return _key_from_der(_decrypt_traditional_pem(block, password, origin), origin, None)
    return _key_from_der(_pem_block_der(block, origin), origin, password)


def _raise_for_pem_without_key(blocks: typing.List[_PEMBlock], origin: _KeyOrigin) -> typing.NoReturn:
    """Explain what a PEM file without a private key contains instead."""
    labels = [block.label for block in blocks]
    if any(label.endswith("CERTIFICATE") for label in labels):
        _raise_certificate(origin)
    if any(label.endswith("PUBLIC KEY") for label in labels):
        _raise_public_key(origin)
    if any(label.endswith("CERTIFICATE REQUEST") for label in labels):
        raise InvalidKeyError(
            "{} is a certificate signing request: pass the private key it was made from".format(origin.description)
        )
    found = ", ".join(labels) if labels else "no complete PEM block"
    raise InvalidKeyError("{} contains no private key (found: {})".format(origin.description, found))


def _raise_certificate(origin: _KeyOrigin) -> typing.NoReturn:
    raise InvalidKeyError(
        "{} is a certificate: this is the certificate you upload to the Connected App; pass the private "
        "key that belongs to it (the file that starts with -----BEGIN PRIVATE KEY----- or "
        "-----BEGIN RSA PRIVATE KEY-----)".format(origin.description)
    )


def _raise_public_key(origin: _KeyOrigin) -> typing.NoReturn:
    raise InvalidKeyError(
        "{} is a public key: signing the assertion needs the private key; pass the private key "
        "file, which starts with -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----".format(
            origin.description
        )
    )


def _raise_not_rsa(algorithm: str, origin: _KeyOrigin) -> typing.NoReturn:
    raise InvalidKeyError(
        "{} is a key of type {}, but Salesforce requires an RSA key for the JWT bearer flow (RS256): make one "
        "with 'sf-jwt keygen --out server' and upload its certificate to the Connected App".format(
            origin.description, algorithm
        )
    )


def _key_from_der(der: bytes, origin: _KeyOrigin, password: _KeyPassword) -> SigningKey:
    """Identify the DER structure and load the RSA key in it."""
    try:
        return _key_from_der_structure(der, origin, password)
    except _DERError as error:
        raise InvalidKeyError(
            "{} is corrupt or not a private key ({}): copy the key file again".format(origin.description, error)
        ) from None


def _key_from_der_structure(der: bytes, origin: _KeyOrigin, password: _KeyPassword) -> SigningKey:
    """Tell the key containers apart by the shape of their outer SEQUENCE."""
    items = _der_sequence(der)
    tags = [tag for tag, _ in items]

    if len(tags) >= 3 and tags[:3] == [_TAG_INTEGER] * 3:
        _note_unused_password(password, origin)
        return _key_from_pkcs1(items, origin)
    if tags[:3] == [_TAG_INTEGER, _TAG_SEQUENCE, _TAG_OCTET_STRING]:
        _note_unused_password(password, origin)
        return _key_from_pkcs8(items, origin)
    if tags[:2] == [_TAG_INTEGER, _TAG_SEQUENCE] and _der_integer(items[0]) == 3:
        return _key_from_pkcs12(der, password, origin)
    if tags == [_TAG_SEQUENCE, _TAG_OCTET_STRING]:
        return _key_from_der_structure(_decrypt_pkcs8(der, password, origin), origin, None)
    if tags == [_TAG_SEQUENCE, _TAG_BIT_STRING] or tags == [_TAG_INTEGER, _TAG_INTEGER]:
        _raise_public_key(origin)
    if tags[:3] == [_TAG_SEQUENCE, _TAG_SEQUENCE, _TAG_BIT_STRING]:
        _raise_certificate(origin)
    if tags[:2] == [_TAG_INTEGER, _TAG_OCTET_STRING]:
        _raise_not_rsa("EC", origin)
    raise _DERError("not a PKCS#1 or PKCS#8 structure")


def _note_unused_password(password: _KeyPassword, origin: _KeyOrigin) -> None:
    if password is not None:
        _logger.debug("%s is not encrypted, so the password given is not used", origin.description)


def _key_from_pkcs12(der: bytes, password: _KeyPassword, origin: _KeyOrigin) -> SigningKey:
    """Load the private key of a PKCS#12 file; of several keys, the one whose certificate is in the file."""
    contents = _keys_from_pkcs12(der, password, origin)
    keys = [_key_from_der_structure(key_der, origin, None) for key_der in contents.keys]
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise InvalidKeyError(
            "{} is a PKCS#12 file with no private key (it contains {} certificate{}): export the certificate "
            "together with its private key, and pass that file".format(
                origin.description, len(contents.certificates), "" if len(contents.certificates) == 1 else "s"
            )
        )

    certified_numbers = _certificate_public_numbers(contents.certificates)
    certified = [key for key in keys if key.public_numbers in certified_numbers]
    if len(certified) != 1:
        raise InvalidKeyError(
            "{} contains {} private keys, and {} of them have a readable certificate in the file, so the key "
            "to use is unclear: export only the key whose certificate is uploaded to the Connected App".format(
                origin.description, len(keys), len(certified)
            )
        )
    _logger.info(
        "%s contains %d private keys: using %s, the one whose certificate is in the file",
        origin.description, len(keys), certified[0].fingerprint,
    )
    return certified[0]


def _certificate_public_numbers(certificate_ders: typing.List[bytes]) -> typing.List[typing.Tuple[int, int]]:
    """Return (n, e) of each certificate with an RSA key."""
    return [(certificate.n, certificate.e) for certificate in _rsa_certificates(certificate_ders)]


def _rsa_certificates(certificate_ders: typing.List[bytes]) -> typing.List["_Certificate"]:
    """Parse the certificates that have an RSA key; other certificates are skipped."""
    certificates = []
    for der in certificate_ders:
        try:
            certificates.append(_parse_certificate(der))
        except _DERError:
            continue
    return certificates


def _key_from_pkcs8(items: typing.List[typing.Tuple[int, bytes]], origin: _KeyOrigin) -> SigningKey:
    """Load a PKCS#8 PrivateKeyInfo (RFC 5208) or OneAsymmetricKey (RFC 5958)."""
    if _der_integer(items[0]) not in (0, 1):
        raise _DERError("unknown PKCS#8 version")

    algorithm = _der_children(items[1][1], 0, len(items[1][1]))
    if not algorithm:
        raise _DERError("empty AlgorithmIdentifier")
    oid = _der_oid(algorithm[0])
    if oid != _OID_RSA_ENCRYPTION:
        _raise_not_rsa(_OID_NAMES.get(oid, "unknown ({})".format(oid)), origin)

    return _key_from_pkcs1(_der_sequence(items[2][1]), origin)


def _key_from_pkcs1(items: typing.List[typing.Tuple[int, bytes]], origin: _KeyOrigin) -> SigningKey:
    """Load a PKCS#1 RSAPrivateKey (RFC 8017 appendix A.1.2)."""
    version = _der_integer(items[0])
    if version == 1:
        raise InvalidKeyError(
            "{} is a multi-prime RSA key (more than two primes), which the rsa package cannot sign "
            "with: make a two-prime key with 'sf-jwt keygen --out server'".format(origin.description)
        )
    if version != 0 or len(items) != 9:
        raise _DERError("not a two-prime RSAPrivateKey")

    n, e, d, p, q, exponent1, exponent2, coefficient = [_der_integer(item) for item in items[1:]]
    key = _checked_rsa_key(n, e, d, p, q, origin)
    if (exponent1 - d) % (p - 1) or (exponent2 - d) % (q - 1) or coefficient * q % p != 1:
        raise InvalidKeyError(
            "{} is not a valid RSA key (its CRT values do not match d, p and q): the file was "
            "altered; copy it again or make a new key".format(origin.description)
        )
    return SigningKey(key)


def _checked_rsa_key(
    n: int, e: int, d: int, p: int, q: int, origin: typing.Optional[_KeyOrigin] = None
) -> rsa.PrivateKey:
    """Check that the numbers form an RSA key, then build the ``rsa.PrivateKey``.

    The primality of p and q is not tested: that costs more than a login, and
    n = p * q with e * d = 1 mod lcm(p - 1, q - 1) already catches corruption.
    """
    origin = origin or _KeyOrigin("the key", None)
    bits = n.bit_length()
    problem = None
    if bits < _MIN_KEY_BITS or bits > _MAX_KEY_BITS:
        problem = "a {}-bit modulus; use a key of 2048 to {} bits".format(bits, _MAX_KEY_BITS)
    elif not (3 <= e < n and e % 2 == 1 and 0 < d < n and 1 < p < n and 1 < q < n):
        problem = "a number is out of range"
    elif p * q != n or p == q or math.gcd(p, q) != 1:
        problem = "n is not the product of the primes p and q"
    else:
        lambda_n = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        if e * d % lambda_n != 1:
            problem = "d is not the inverse of e"

    if problem:
        raise InvalidKeyError(
            "{} is not a valid RSA key ({}): the file was altered or truncated; copy it again "
            "or make a new key".format(origin.description, problem)
        )
    return rsa.PrivateKey(n, e, d, p, q)


def _as_signing_key(key: typing.Any) -> SigningKey:
    """Accept a SigningKey or anything load_private_key takes."""
    return key if isinstance(key, SigningKey) else load_private_key(key)


# --- Decrypting keys (decryption only) ----------------------------------------
#
# Encrypted PKCS#8 (RFC 5958 section 3), traditional OpenSSL PEM with a
# DEK-Info header (RFC 1421 headers) and PKCS#12 files (RFC 7292). The ciphers
# run only in the decrypting direction: the AES inverse cipher (FIPS-197) and
# DES/3DES (FIPS 46-3, SP 800-67), in pure Python. Their tables are built on
# first use, so importing the module costs nothing.

# The ways to pass a password, named in the missing-password message.
_PASSWORD_HOW_TO = (
    "--jwt-key-password-file FILE or the SF_JWT_KEY_PASSWORD variable (sf-jwt), or the password argument "
    "(load_private_key)"
)

# Iteration counts above these fail at once, so that a corrupt count cannot
# hang the program. OpenSSL 3.0 writes 2048. PBKDF2 runs in hashlib's C code,
# where 1 million HMAC-SHA256 rounds took 0.35 s on a shared server. The
# PKCS#12 KDF runs in Python, where 1 million SHA-1 rounds took 0.6 s per
# 20 bytes of derived key on the same server.
_MAX_PBKDF2_ITERATIONS = 10000000
_MAX_PKCS12_KDF_ITERATIONS = 1000000

_OID_DATA = "1.2.840.113549.1.7.1"
_OID_ENCRYPTED_DATA = "1.2.840.113549.1.7.6"
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_PBE_SHA1_3DES = "1.2.840.113549.1.12.1.3"
_OID_PBE_SHA1_2DES = "1.2.840.113549.1.12.1.4"
_OID_KEY_BAG = "1.2.840.113549.1.12.10.1.1"
_OID_SHROUDED_KEY_BAG = "1.2.840.113549.1.12.10.1.2"
_OID_CERT_BAG = "1.2.840.113549.1.12.10.1.3"
_OID_SAFE_CONTENTS_BAG = "1.2.840.113549.1.12.10.1.6"
_OID_X509_CERTIFICATE = "1.2.840.113549.1.9.22.1"

# PBKDF2 pseudorandom functions (RFC 8018 appendix B.1) by hashlib name.
_PBKDF2_PRFS = {
    "1.2.840.113549.2.7": "sha1",
    "1.2.840.113549.2.8": "sha224",
    "1.2.840.113549.2.9": "sha256",
    "1.2.840.113549.2.10": "sha384",
    "1.2.840.113549.2.11": "sha512",
}

# MacData digest algorithms (RFC 7292 section 4, RFC 8017 appendix B.1) by hashlib name.
_MAC_DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}

# PBES2 encryption schemes (RFC 8018 appendix B.2, RFC 3565 section 4.1) by
# the cipher names that OpenSSL writes in DEK-Info headers.
_PBES2_CIPHERS = {
    "2.16.840.1.101.3.4.1.2": "AES-128-CBC",
    "2.16.840.1.101.3.4.1.22": "AES-192-CBC",
    "2.16.840.1.101.3.4.1.42": "AES-256-CBC",
    "1.2.840.113549.3.7": "DES-EDE3-CBC",
}

_CBC_KEY_SIZES = {"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32, "DES-EDE3-CBC": 24}

# Names, for the error message, of the algorithms and PKCS#12 modes that are
# recognised but not implemented here.
_UNSUPPORTED_ENCRYPTION_NAMES = {
    "1.2.840.113549.3.2": "RC2-CBC",
    "1.3.14.3.2.7": "DES-CBC",
    "1.2.840.113549.3.9": "RC5-CBC",
    "1.3.6.1.4.1.11591.4.11": "scrypt",
    "1.2.840.113549.1.5.1": "pbeWithMD2AndDES-CBC",
    "1.2.840.113549.1.5.3": "pbeWithMD5AndDES-CBC",
    "1.2.840.113549.1.5.4": "pbeWithMD2AndRC2-CBC",
    "1.2.840.113549.1.5.6": "pbeWithMD5AndRC2-CBC",
    "1.2.840.113549.1.5.10": "pbeWithSHA1AndDES-CBC",
    "1.2.840.113549.1.5.11": "pbeWithSHA1AndRC2-CBC",
    "1.2.840.113549.1.5.14": "PBMAC1",
    "1.2.840.113549.1.12.1.1": "pbeWithSHAAnd128BitRC4",
    "1.2.840.113549.1.12.1.2": "pbeWithSHAAnd40BitRC4",
    "1.2.840.113549.1.12.1.5": "pbeWithSHAAnd128BitRC2-CBC",
    "1.2.840.113549.1.12.1.6": "pbeWithSHAAnd40BitRC2-CBC",
    "1.2.840.113549.1.7.2": "public-key integrity mode (signedData)",
    "1.2.840.113549.1.7.3": "public-key encryption (envelopedData)",
}

_cipher_tables = {}  # type: typing.Dict[str, typing.Any]


class _PasswordError(Exception):
    """A padding, MAC or structure check after decryption failed, so the password is wrong or missing."""


class _UnsupportedEncryptionError(Exception):
    """The data is encrypted with an algorithm or parameter that this module does not implement."""

    def __init__(self, algorithm: str) -> None:
        Exception.__init__(self, algorithm)
        self.algorithm = algorithm


class _MissingPasswordError(InvalidKeyError):
    """The key is encrypted and no password was given. The command line then prompts for one in a terminal."""

    def __init__(self, message: str, description: str) -> None:
        InvalidKeyError.__init__(self, message)
        self.description = description


class _WrongPasswordError(InvalidKeyError):
    """The key did not decrypt with the password given. The command line adds where the password came from."""


_WRONG_PASSWORD_TEXT = "the password is wrong (or the file was altered after it was encrypted)"

_Password = typing.NamedTuple("_Password", [("utf8", bytes), ("bmp", bytes)])
_Password.__doc__ = """A password encoded for PBKDF2 and EVP_BytesToKey (``utf8``) and for the PKCS#12 KDF (``bmp``)."""


def _check_password_type(password: typing.Any) -> None:
    if password is not None and not isinstance(password, (str, bytes, bytearray)):
        raise InvalidKeyError("the password must be a str or bytes, not a {}".format(type(password).__name__))


def _password_forms(password: typing.Union[str, bytes]) -> _Password:
    """Encode a password as bytes (PBKDF2, EVP_BytesToKey) and as a BMPString (PKCS#12 KDF).

    A str becomes UTF-8. Its surrogate escapes, which os.environ uses on POSIX
    for bytes that are not UTF-8, become those bytes again. The BMPString is
    UTF-16-BE with two zero bytes at the end (RFC 7292 appendix B.1). For
    bytes that are not UTF-8 it contains one character per byte, which is what
    OpenSSL 3.0 does with such a password.
    """
    if isinstance(password, str):
        try:
            password = password.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise InvalidKeyError("the password contains an unpaired surrogate character") from None
    password = bytes(password)  # a bytearray is accepted too

    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        text = password.decode("latin-1")
    return _Password(password, text.encode("utf-16-be") + b"\x00\x00")


def _raise_password(origin: _KeyOrigin, password: typing.Any) -> typing.NoReturn:
    """Raise the error for a missing or wrong password, without saying which check failed."""
    if password is None:
        raise _MissingPasswordError(
            "{} is encrypted: pass its password with {}".format(origin.description, _PASSWORD_HOW_TO),
            origin.description,
        )
    raise _WrongPasswordError("{} cannot be decrypted: {}".format(origin.description, _WRONG_PASSWORD_TEXT))


def _raise_unsupported_encryption(algorithm: str, origin: _KeyOrigin, command: str) -> typing.NoReturn:
    raise InvalidKeyError(
        "{} is protected with {}, which sf_jwt cannot decrypt: re-encrypt it with AES by running "
        "'{}' (it prompts for the old and a new password) and pass the new file".format(
            origin.description, algorithm, command
        )
    )


# --- AES inverse cipher (FIPS-197) ---


def _xtime(value: int) -> int:
    """Multiply by x in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (FIPS-197 section 4.2.1)."""
    value <<= 1
    return value ^ 0x11B if value & 0x100 else value


def _gf_multiply(a: int, b: int) -> int:
    """Multiply two bytes in GF(2^8) (FIPS-197 section 4.2)."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a = _xtime(a)
        b >>= 1
    return product


def _aes_tables() -> typing.Tuple[typing.List[int], ...]:
    """Build the S-box, the inverse S-box and the four decryption tables, once.

    Each decryption table entry combines InvSubBytes and InvMixColumns for one
    byte of a column (FIPS-197 sections 5.3.2 and 5.3.3).
    """
    tables = _cipher_tables.get("aes")
    if tables is not None:
        return tables

    sbox, inverse_sbox = _aes_sboxes()
    column0 = []
    for byte in inverse_sbox:
        column0.append(
            _gf_multiply(byte, 14) << 24 | _gf_multiply(byte, 9) << 16 | _gf_multiply(byte, 13) << 8
            | _gf_multiply(byte, 11)
        )
    column1 = [(word >> 8) | ((word & 0xFF) << 24) for word in column0]
    column2 = [(word >> 8) | ((word & 0xFF) << 24) for word in column1]
    column3 = [(word >> 8) | ((word & 0xFF) << 24) for word in column2]
    tables = (sbox, inverse_sbox, column0, column1, column2, column3)
    _cipher_tables["aes"] = tables
    return tables


def _aes_sboxes() -> typing.Tuple[typing.List[int], typing.List[int]]:
    """Compute the S-box and its inverse.

    S(b) is the multiplicative inverse of b in GF(2^8), or 0 for 0, followed by
    the affine transformation (FIPS-197 section 5.1.1).
    """
    powers = []  # powers[i] is 3**i in GF(2^8), because 3 generates its multiplicative group
    logarithms = [0] * 256
    value = 1
    for exponent in range(255):
        powers.append(value)
        logarithms[value] = exponent
        value ^= _xtime(value)

    sbox = [0] * 256
    inverse_sbox = [0] * 256
    for byte in range(256):
        inverse = powers[(255 - logarithms[byte]) % 255] if byte else 0
        rotations = [((inverse << shift) | (inverse >> (8 - shift))) & 0xFF for shift in range(1, 5)]
        substituted = inverse ^ rotations[0] ^ rotations[1] ^ rotations[2] ^ rotations[3] ^ 0x63
        sbox[byte] = substituted
        inverse_sbox[substituted] = byte
    return sbox, inverse_sbox


def _aes_key_expansion(key: bytes, sbox: typing.List[int]) -> typing.List[int]:
    """Expand a 16, 24 or 32-byte key into the round-key words w[i] (FIPS-197 section 5.2)."""
    key_words = len(key) // 4
    rounds = key_words + 6
    words = [int.from_bytes(key[4 * i:4 * i + 4], "big") for i in range(key_words)]
    round_constant = 1
    for i in range(key_words, 4 * (rounds + 1)):
        temp = words[i - 1]
        if i % key_words == 0:
            temp = ((temp << 8) & 0xFFFFFFFF) | (temp >> 24)
            temp = _aes_sub_word(temp, sbox) ^ (round_constant << 24)
            round_constant = _xtime(round_constant)
        elif key_words > 6 and i % key_words == 4:
            temp = _aes_sub_word(temp, sbox)
        words.append(words[i - key_words] ^ temp)
    return words


def _aes_sub_word(word: int, sbox: typing.List[int]) -> int:
    return (
        sbox[word >> 24] << 24 | sbox[(word >> 16) & 0xFF] << 16 | sbox[(word >> 8) & 0xFF] << 8
        | sbox[word & 0xFF]
    )


def _aes_decryption_round_keys(key: bytes) -> typing.List[typing.Tuple[int, int, int, int]]:
    """Return the round keys of the equivalent inverse cipher, in the order it uses them.

    The middle round keys go through InvMixColumns (FIPS-197 section 5.3.5).
    Looking up S[b] in a decryption table applies InvSubBytes to it, which
    undoes S, so only InvMixColumns remains.
    """
    sbox, _, column0, column1, column2, column3 = _aes_tables()
    words = _aes_key_expansion(key, sbox)
    rounds = len(words) // 4 - 1
    round_keys = []
    for number in range(rounds, -1, -1):
        round_key = words[4 * number:4 * number + 4]
        if 0 < number < rounds:
            round_key = [
                column0[sbox[word >> 24]] ^ column1[sbox[(word >> 16) & 0xFF]]
                ^ column2[sbox[(word >> 8) & 0xFF]] ^ column3[sbox[word & 0xFF]]
                for word in round_key
            ]
        round_keys.append((round_key[0], round_key[1], round_key[2], round_key[3]))
    return round_keys


def _aes_decrypt_block(block: int, round_keys: typing.List[typing.Tuple[int, int, int, int]]) -> int:
    """Decrypt one 128-bit block with the equivalent inverse cipher (FIPS-197 section 5.3.5).

    State words are the columns. Output column c takes row r from column c - r,
    which is InvShiftRows (FIPS-197 section 5.3.1).
    """
    _, inverse_sbox, column0, column1, column2, column3 = _aes_tables()
    key0, key1, key2, key3 = round_keys[0]
    s0 = (block >> 96) ^ key0
    s1 = ((block >> 64) & 0xFFFFFFFF) ^ key1
    s2 = ((block >> 32) & 0xFFFFFFFF) ^ key2
    s3 = (block & 0xFFFFFFFF) ^ key3

    for key0, key1, key2, key3 in round_keys[1:-1]:
        t0 = column0[s0 >> 24] ^ column1[s3 >> 16 & 0xFF] ^ column2[s2 >> 8 & 0xFF] ^ column3[s1 & 0xFF] ^ key0
        t1 = column0[s1 >> 24] ^ column1[s0 >> 16 & 0xFF] ^ column2[s3 >> 8 & 0xFF] ^ column3[s2 & 0xFF] ^ key1
        t2 = column0[s2 >> 24] ^ column1[s1 >> 16 & 0xFF] ^ column2[s0 >> 8 & 0xFF] ^ column3[s3 & 0xFF] ^ key2
        t3 = column0[s3 >> 24] ^ column1[s2 >> 16 & 0xFF] ^ column2[s1 >> 8 & 0xFF] ^ column3[s0 & 0xFF] ^ key3
        s0, s1, s2, s3 = t0, t1, t2, t3

    key0, key1, key2, key3 = round_keys[-1]
    columns = []
    for a, b, c, d in ((s0, s3, s2, s1), (s1, s0, s3, s2), (s2, s1, s0, s3), (s3, s2, s1, s0)):
        columns.append(
            inverse_sbox[a >> 24] << 24 | inverse_sbox[(b >> 16) & 0xFF] << 16
            | inverse_sbox[(c >> 8) & 0xFF] << 8 | inverse_sbox[d & 0xFF]
        )
    return (columns[0] ^ key0) << 96 | (columns[1] ^ key1) << 64 | (columns[2] ^ key2) << 32 | columns[3] ^ key3


# --- DES and TDEA, decrypting (FIPS 46-3, SP 800-67) ---

# The tables of FIPS 46-3 appendix 1, with bits numbered from 1 at the left.
_DES_INITIAL_PERMUTATION = (
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4,
    62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8,
    57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3,
    61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
)
_DES_P = (
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10,
    2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25,
)
_DES_PC1 = (
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18,
    10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36,
    63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22,
    14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4,
)
_DES_PC2 = (
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4,
    26, 8, 16, 7, 27, 20, 13, 2, 41, 52, 31, 37, 47, 55, 30, 40,
    51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
)
_DES_KEY_SHIFTS = (1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1)
# S1 to S8, each as its four rows of 16 entries.
_DES_S_BOXES = (
    "14 4 13 1 2 15 11 8 3 10 6 12 5 9 0 7  0 15 7 4 14 2 13 1 10 6 12 11 9 5 3 8 "
    "4 1 14 8 13 6 2 11 15 12 9 7 3 10 5 0  15 12 8 2 4 9 1 7 5 11 3 14 10 0 6 13",
    "15 1 8 14 6 11 3 4 9 7 2 13 12 0 5 10  3 13 4 7 15 2 8 14 12 0 1 10 6 9 11 5 "
    "0 14 7 11 10 4 13 1 5 8 12 6 9 3 2 15  13 8 10 1 3 15 4 2 11 6 7 12 0 5 14 9",
    "10 0 9 14 6 3 15 5 1 13 12 7 11 4 2 8  13 7 0 9 3 4 6 10 2 8 5 14 12 11 15 1 "
    "13 6 4 9 8 15 3 0 11 1 2 12 5 10 14 7  1 10 13 0 6 9 8 7 4 15 14 3 11 5 2 12",
    "7 13 14 3 0 6 9 10 1 2 8 5 11 12 4 15  13 8 11 5 6 15 0 3 4 7 2 12 1 10 14 9 "
    "10 6 9 0 12 11 7 13 15 1 3 14 5 2 8 4  3 15 0 6 10 1 13 8 9 4 5 11 12 7 2 14",
    "2 12 4 1 7 10 11 6 8 5 3 15 13 0 14 9  14 11 2 12 4 7 13 1 5 0 15 10 3 9 8 6 "
    "4 2 1 11 10 13 7 8 15 9 12 5 6 3 0 14  11 8 12 7 1 14 2 13 6 15 0 9 10 4 5 3",
    "12 1 10 15 9 2 6 8 0 13 3 4 14 7 5 11  10 15 4 2 7 12 9 5 6 1 13 14 0 11 3 8 "
    "9 14 15 5 2 8 12 3 7 0 4 10 1 13 11 6  4 3 2 12 9 5 15 10 11 14 1 7 6 0 8 13",
    "4 11 2 14 15 0 8 13 3 12 9 7 5 10 6 1  13 0 11 7 4 9 1 10 14 3 5 12 2 15 8 6 "
    "1 4 11 13 12 3 7 14 10 15 6 8 0 5 9 2  6 11 13 8 1 4 10 7 9 5 0 15 14 2 3 12",
    "13 2 8 4 6 15 11 1 10 9 3 14 5 0 12 7  1 15 13 8 10 3 7 4 12 5 6 11 0 14 9 2 "
    "7 11 4 1 9 12 14 2 0 6 10 13 15 3 5 8  2 1 14 7 4 10 8 13 15 12 9 0 3 5 6 11",
)


def _permute_bits(value: int, table: typing.Sequence[int], input_bits: int) -> int:
    """Apply a FIPS 46-3 permutation: output bit i is input bit table[i], counting from 1 at the left."""
    result = 0
    for position in table:
        result = (result << 1) | ((value >> (input_bits - position)) & 1)
    return result


def _byte_permutation_tables(table: typing.Sequence[int]) -> typing.List[typing.List[int]]:
    """Split a 64-bit permutation into 8 tables, one per input byte, whose entries are ORed."""
    byte_tables = []
    for byte_index in range(8):
        bit_outputs = [_permute_bits(1 << (63 - 8 * byte_index - bit), table, 64) for bit in range(8)]
        entries = [0] * 256
        for value in range(1, 256):
            lowest_bit = (value & -value).bit_length() - 1  # bit 0 is the rightmost
            entries[value] = entries[value & (value - 1)] | bit_outputs[7 - lowest_bit]
        byte_tables.append(entries)
    return byte_tables


def _des_tables() -> typing.Tuple[typing.List[typing.List[int]], ...]:
    """Build, once, the S-boxes combined with P and the byte tables for IP and its inverse.

    Entry v of combined table i is P applied to S_i(v) in its place in the
    32-bit output of the S-boxes (FIPS 46-3, "The cipher function f").
    """
    tables = _cipher_tables.get("des")
    if tables is not None:
        return tables

    combined = []
    for box_index, box_text in enumerate(_DES_S_BOXES):
        box = [int(entry) for entry in box_text.split()]
        entries = []
        for value in range(64):
            row = (value >> 4 & 2) | (value & 1)
            column = (value >> 1) & 15
            entries.append(_permute_bits(box[16 * row + column] << (28 - 4 * box_index), _DES_P, 32))
        combined.append(entries)

    final_permutation = [0] * 64
    for output_position, input_position in enumerate(_DES_INITIAL_PERMUTATION, 1):
        final_permutation[input_position - 1] = output_position
    tables = (
        combined,
        _byte_permutation_tables(_DES_INITIAL_PERMUTATION),
        _byte_permutation_tables(final_permutation),
    )
    _cipher_tables["des"] = tables
    return tables


def _des_round_keys(key: bytes) -> typing.List[typing.Tuple[int, ...]]:
    """Compute K1 to K16, each as eight 6-bit groups (FIPS 46-3, "Key schedule calculation").

    The parity bits are ignored, as PC-1 drops them.
    """
    permuted = _permute_bits(int.from_bytes(key, "big"), _DES_PC1, 64)
    c, d = permuted >> 28, permuted & 0x0FFFFFFF
    round_keys = []
    for shift in _DES_KEY_SHIFTS:
        c = ((c << shift) | (c >> (28 - shift))) & 0x0FFFFFFF
        d = ((d << shift) | (d >> (28 - shift))) & 0x0FFFFFFF
        round_key = _permute_bits((c << 28) | d, _DES_PC2, 56)
        round_keys.append(tuple((round_key >> (42 - 6 * group)) & 63 for group in range(8)))
    return round_keys


def _permute_by_bytes(value: int, byte_tables: typing.List[typing.List[int]]) -> int:
    result = 0
    for byte_index in range(8):
        result |= byte_tables[byte_index][(value >> (56 - 8 * byte_index)) & 0xFF]
    return result


def _des_block(block: int, key_schedules: typing.Sequence[typing.Sequence[typing.Tuple[int, ...]]]) -> int:
    """Run a 64-bit block through DES once per key schedule (FIPS 46-3 and SP 800-67).

    Decrypting is DES with K16 to K1. Between passes the inverse IP and the next
    IP cancel, so only the swap of L and R that ends each pass remains.
    """
    combined, initial, final = _des_tables()
    s0, s1, s2, s3, s4, s5, s6, s7 = combined
    permuted = _permute_by_bytes(block, initial)
    left, right = permuted >> 32, permuted & 0xFFFFFFFF
    for schedule in key_schedules:
        for k0, k1, k2, k3, k4, k5, k6, k7 in schedule:
            # E: bits 32, 1, 2, ..., 32, 1 of R, so 6-bit group g starts at bit 4g of this 34-bit value.
            expanded = (right & 1) << 33 | right << 1 | right >> 31
            f = (
                s0[(expanded >> 28 & 63) ^ k0] | s1[(expanded >> 24 & 63) ^ k1]
                | s2[(expanded >> 20 & 63) ^ k2] | s3[(expanded >> 16 & 63) ^ k3]
                | s4[(expanded >> 12 & 63) ^ k4] | s5[(expanded >> 8 & 63) ^ k5]
                | s6[(expanded >> 4 & 63) ^ k6] | s7[(expanded & 63) ^ k7]
            )
            left, right = right, left ^ f
        left, right = right, left
    return _permute_by_bytes(left << 32 | right, final)


def _tdea_decryption_schedules(key: bytes) -> typing.List[typing.List[typing.Tuple[int, ...]]]:
    """Return the key schedules for TDEA decryption, which is D_K1(E_K2(D_K3(C))) (SP 800-67)."""
    first, second, third = (_des_round_keys(key[i:i + 8]) for i in (0, 8, 16))
    return [third[::-1], second, first[::-1]]


# --- CBC, padding and key derivation ---


def _cbc_decrypt(cipher: str, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Decrypt in CBC mode and remove the PKCS#7 padding (RFC 5652 section 6.3).

    Bad padding raises _PasswordError, because a wrong key is its usual cause.
    """
    return _remove_padding(_cbc_decrypt_blocks(cipher, key, iv, ciphertext), len(iv))


def _cbc_decrypt_blocks(cipher: str, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Decrypt whole blocks in CBC mode (SP 800-38A section 6.2) with AES or DES-EDE3."""
    block_size = 8 if cipher == "DES-EDE3-CBC" else 16
    if len(iv) != block_size:
        raise _DERError("the IV of {} is {} bytes, not {}".format(cipher, len(iv), block_size))
    if not ciphertext or len(ciphertext) % block_size:
        raise _DERError("the encrypted data is not a whole number of {} blocks".format(cipher))

    schedules = _tdea_decryption_schedules(key) if block_size == 8 else []
    round_keys = _aes_decryption_round_keys(key) if block_size == 16 else []

    previous = int.from_bytes(iv, "big")
    plaintext = []
    for offset in range(0, len(ciphertext), block_size):
        block = int.from_bytes(ciphertext[offset:offset + block_size], "big")
        if schedules:
            decrypted = _des_block(block, schedules)
        else:
            decrypted = _aes_decrypt_block(block, round_keys)
        plaintext.append((decrypted ^ previous).to_bytes(block_size, "big"))
        previous = block
    return b"".join(plaintext)


def _remove_padding(data: bytes, block_size: int) -> bytes:
    padding = data[-1]
    if not 1 <= padding <= block_size or data[-padding:] != bytes([padding]) * padding:
        raise _PasswordError()
    return data[:-padding]


def _evp_bytes_to_key(password: bytes, salt: bytes, size: int) -> bytes:
    """Derive a PEM encryption key as OpenSSL's EVP_BytesToKey does with MD5 and one iteration.

    D_1 = MD5(password + salt), D_i = MD5(D_(i-1) + password + salt), and the
    key is the start of D_1 + D_2 + ... (OpenSSL's PEM_do_header).
    """
    derived = b""
    block = b""
    while len(derived) < size:
        if sys.version_info >= (3, 9):
            # MD5 derives a key here, which Python builds in FIPS mode allow only with this flag.
            block = hashlib.md5(block + password + salt, usedforsecurity=False).digest()
        else:
            block = hashlib.md5(block + password + salt).digest()
        derived += block
    return derived[:size]


def _pkcs12_kdf(hash_name: str, password: bytes, salt: bytes, iterations: int, purpose: int, size: int) -> bytes:
    """Derive key material with the PKCS#12 KDF (RFC 7292 appendix B.2).

    ``password`` is the BMPString, ``purpose`` the ID byte: 1 for a key, 2 for
    an IV and 3 for a MAC key.
    """
    hash_function = getattr(hashlib, hash_name)
    block_size = hash_function().block_size  # v in RFC 7292
    modulus = 1 << (8 * block_size)
    diversifier = bytes([purpose]) * block_size
    data = _repeat_to_block_multiple(salt, block_size) + _repeat_to_block_multiple(password, block_size)  # I

    derived = b""
    while True:
        digest = hash_function(diversifier + data).digest()
        for _ in range(iterations - 1):
            digest = hash_function(digest).digest()
        derived += digest
        if len(derived) >= size:
            return derived[:size]
        # Step 6: add B + 1, where B is the digest repeated to v bytes, to each v-byte block of I.
        increment = int.from_bytes(_repeat_to_length(digest, block_size), "big") + 1
        blocks = []
        for offset in range(0, len(data), block_size):
            value = (int.from_bytes(data[offset:offset + block_size], "big") + increment) % modulus
            blocks.append(value.to_bytes(block_size, "big"))
        data = b"".join(blocks)


def _repeat_to_block_multiple(data: bytes, block_size: int) -> bytes:
    """Repeat data up to the next multiple of block_size, so empty data stays empty (RFC 7292 appendix B.2)."""
    blocks = (len(data) + block_size - 1) // block_size
    return _repeat_to_length(data, blocks * block_size)


def _repeat_to_length(data: bytes, length: int) -> bytes:
    if not data:
        return b""
    return (data * (length // len(data) + 1))[:length]


# --- Parsing the encryption parameters ---


def _der_fields(
    element: typing.Tuple[int, bytes], tags: typing.Sequence[int], optional: int = 0
) -> typing.List[typing.Tuple[int, bytes]]:
    """Return the children of a SEQUENCE element after checking their tags.

    The last ``optional`` tags may be absent. Anything after the listed fields
    is an error.
    """
    tag, content = element
    if tag != _TAG_SEQUENCE:
        raise _DERError("expected a SEQUENCE")
    fields = _der_children(content, 0, len(content))
    if not len(tags) - optional <= len(fields) <= len(tags):
        raise _DERError("a SEQUENCE has {} fields, expected {}".format(len(fields), len(tags)))
    for (field_tag, _), expected in zip(fields, tags):
        if field_tag != expected:
            raise _DERError("unexpected tag 0x{:02x}, expected 0x{:02x}".format(field_tag, expected))
    return fields


def _der_algorithm(
    element: typing.Tuple[int, bytes]
) -> typing.Tuple[str, typing.Optional[typing.Tuple[int, bytes]]]:
    """Read an AlgorithmIdentifier (RFC 5280 section 4.1.1.2): the OID and the parameters, if any."""
    tag, content = element
    if tag != _TAG_SEQUENCE:
        raise _DERError("expected an AlgorithmIdentifier")
    fields = _der_children(content, 0, len(content))
    if not 1 <= len(fields) <= 2:
        raise _DERError("an AlgorithmIdentifier has {} fields".format(len(fields)))
    return _der_oid(fields[0]), fields[1] if len(fields) == 2 else None


def _checked_iterations(element: typing.Tuple[int, bytes], maximum: int) -> int:
    iterations = _der_integer(element)
    if iterations < 1:
        raise _DERError("iteration count {} is not positive".format(iterations))
    if iterations > maximum:
        raise _UnsupportedEncryptionError(
            "{} iterations (sf_jwt stops at {}, so that a corrupt count cannot hang it)".format(iterations, maximum)
        )
    return iterations


def _unsupported(oid: str) -> _UnsupportedEncryptionError:
    return _UnsupportedEncryptionError(_UNSUPPORTED_ENCRYPTION_NAMES.get(oid, "the algorithm {}".format(oid)))


def _pbkdf2_parameters(
    element: typing.Optional[typing.Tuple[int, bytes]]
) -> typing.Tuple[bytes, int, typing.Optional[int], str]:
    """Read PBKDF2-params (RFC 8018 appendix A.2): salt, iteration count, key length and PRF.

    The PRF defaults to HMAC-SHA1 when absent. A salt from otherSource is rejected.
    """
    if element is None or element[0] != _TAG_SEQUENCE:
        raise _DERError("the PBKDF2 parameters are missing")
    fields = _der_children(element[1], 0, len(element[1]))
    if len(fields) < 2 or fields[0][0] != _TAG_OCTET_STRING:
        raise _DERError("invalid PBKDF2-params")
    salt = fields[0][1]
    iterations = _checked_iterations(fields[1], _MAX_PBKDF2_ITERATIONS)

    rest = fields[2:]
    key_length = None
    if rest and rest[0][0] == _TAG_INTEGER:
        key_length = _der_integer(rest[0])
        rest = rest[1:]
    prf = "sha1"
    if rest:
        prf_oid, _ = _der_algorithm(rest[0])
        if prf_oid not in _PBKDF2_PRFS:
            raise _UnsupportedEncryptionError("PBKDF2 with the PRF {}".format(prf_oid))
        prf = _PBKDF2_PRFS[prf_oid]
        rest = rest[1:]
    if rest:
        raise _DERError("unexpected field after the PBKDF2 PRF")
    return salt, iterations, key_length, prf


def _pbes2_decrypt(
    parameters: typing.Optional[typing.Tuple[int, bytes]], ciphertext: bytes, password: typing.Optional[_Password]
) -> bytes:
    """Decrypt with PBES2, that is PBKDF2 and a CBC cipher (RFC 8018 sections 6.2.2 and A.4)."""
    if parameters is None:
        raise _DERError("the PBES2 parameters are missing")
    kdf, scheme = _der_fields(parameters, [_TAG_SEQUENCE, _TAG_SEQUENCE])
    kdf_oid, kdf_parameters = _der_algorithm(kdf)
    if kdf_oid != _OID_PBKDF2:
        raise _unsupported(kdf_oid)
    scheme_oid, iv = _der_algorithm(scheme)
    cipher = _PBES2_CIPHERS.get(scheme_oid)
    if cipher is None:
        raise _unsupported(scheme_oid)
    if iv is None or iv[0] != _TAG_OCTET_STRING:
        raise _DERError("the IV of {} is missing".format(cipher))

    salt, iterations, key_length, prf = _pbkdf2_parameters(kdf_parameters)
    key_size = _CBC_KEY_SIZES[cipher]
    if key_length is not None and key_length != key_size:
        raise _DERError("the PBKDF2 key length {} does not match {}".format(key_length, cipher))
    if password is None:
        raise _PasswordError()
    key = hashlib.pbkdf2_hmac(prf, password.utf8, salt, iterations, key_size)
    return _cbc_decrypt(cipher, key, iv[1], ciphertext)


def _pkcs12_pbe_decrypt(
    oid: str, parameters: typing.Optional[typing.Tuple[int, bytes]], ciphertext: bytes,
    password: typing.Optional[_Password],
) -> bytes:
    """Decrypt with pbeWithSHAAnd3-KeyTripleDES-CBC or pbeWithSHAAnd2-KeyTripleDES-CBC (RFC 7292 appendix C)."""
    if parameters is None:
        raise _DERError("the PKCS#12 PBE parameters are missing")
    salt, iterations_element = _der_fields(parameters, [_TAG_OCTET_STRING, _TAG_INTEGER])
    iterations = _checked_iterations(iterations_element, _MAX_PKCS12_KDF_ITERATIONS)
    if password is None:
        raise _PasswordError()

    key_size = 24 if oid == _OID_PBE_SHA1_3DES else 16
    key = _pkcs12_kdf("sha1", password.bmp, salt[1], iterations, 1, key_size)
    if key_size == 16:
        key += key[:8]  # two-key TDEA: K3 is K1
    iv = _pkcs12_kdf("sha1", password.bmp, salt[1], iterations, 2, 8)
    return _cbc_decrypt("DES-EDE3-CBC", key, iv, ciphertext)


def _decrypt_with_algorithm(
    algorithm: typing.Tuple[int, bytes], ciphertext: bytes, password: typing.Optional[_Password]
) -> bytes:
    """Decrypt with a password-based encryption AlgorithmIdentifier; None as password raises _PasswordError."""
    oid, parameters = _der_algorithm(algorithm)
    if oid == _OID_PBES2:
        return _pbes2_decrypt(parameters, ciphertext, password)
    if oid in (_OID_PBE_SHA1_3DES, _OID_PBE_SHA1_2DES):
        return _pkcs12_pbe_decrypt(oid, parameters, ciphertext, password)
    raise _unsupported(oid)


def _check_decrypted(plaintext: bytes, tags: typing.Sequence[int]) -> None:
    """Raise _PasswordError unless the plaintext is one DER SEQUENCE whose first fields have these tags.

    A wrong key passes the padding check about once in 256 tries, and this check catches it.
    """
    try:
        fields = _der_sequence(plaintext)
    except _DERError:
        raise _PasswordError() from None
    if [tag for tag, _ in fields[:len(tags)]] != list(tags):
        raise _PasswordError()


def _decrypt_private_key_info(element: typing.Tuple[int, bytes], password: typing.Optional[_Password]) -> bytes:
    """Decrypt an EncryptedPrivateKeyInfo (RFC 5958 section 3) into PrivateKeyInfo DER."""
    algorithm, encrypted = _der_fields(element, [_TAG_SEQUENCE, _TAG_OCTET_STRING])
    plaintext = _decrypt_with_algorithm(algorithm, encrypted[1], password)
    _check_decrypted(plaintext, [_TAG_INTEGER, _TAG_SEQUENCE, _TAG_OCTET_STRING])
    return plaintext


def _der_element(der: bytes) -> typing.Tuple[int, bytes]:
    """Read the one element that ``der`` consists of, exactly."""
    tag, start, end = _der_read(der, 0, len(der))
    if end != len(der):
        raise _DERError("unexpected data after the outer element")
    return tag, der[start:end]


# --- Encrypted PKCS#8 and traditional PEM ---


def _decrypt_pkcs8(der: bytes, password: typing.Optional[typing.Union[str, bytes]], origin: _KeyOrigin) -> bytes:
    """Decrypt an encrypted PKCS#8 key (BEGIN ENCRYPTED PRIVATE KEY) and return the PrivateKeyInfo DER.

    Raises:
        InvalidKeyError: The password is wrong or missing, or the algorithm is
            not PBES2 with AES or 3DES or PKCS#12 PBE with 3DES.
        _DERError: The DER is malformed.
    """
    forms = None if password is None else _password_forms(password)
    try:
        return _decrypt_private_key_info(_der_element(der), forms)
    except _PasswordError:
        _raise_password(origin, password)
    except _UnsupportedEncryptionError as error:
        command = "openssl pkcs8 -topk8 -v2 aes-256-cbc -provider legacy -provider default -in {} -out key-aes.pem"
        _raise_unsupported_encryption(error.algorithm, origin, command.format(origin.command_path()))


def _decrypt_traditional_pem(
    block: _PEMBlock, password: typing.Optional[typing.Union[str, bytes]], origin: _KeyOrigin
) -> bytes:
    """Decrypt a PEM block with the header "Proc-Type: 4,ENCRYPTED" and return the DER inside.

    The key is EVP_BytesToKey of the password and the first 8 bytes of the IV
    from the DEK-Info header, as OpenSSL's PEM_do_header derives it.

    Raises:
        InvalidKeyError: The password is wrong or missing, the cipher is not
            AES-CBC or DES-EDE3-CBC, or the block is corrupt.
    """
    cipher, iv = _dek_info(block, origin)
    if cipher not in _CBC_KEY_SIZES:
        command = "openssl rsa -aes256 -provider legacy -provider default -in {} -out key-aes.pem"
        _raise_unsupported_encryption(cipher, origin, command.format(origin.command_path()))
    ciphertext = _pem_block_der(block, origin)
    if password is None:
        _raise_password(origin, password)

    try:
        key = _evp_bytes_to_key(_password_forms(password).utf8, iv[:8], _CBC_KEY_SIZES[cipher])
    except ValueError:  # MD5 blocked, as in FIPS mode before Python 3.9
        command = "openssl pkcs8 -topk8 -v2 aes-256-cbc -in {} -out key-pkcs8.pem".format(origin.command_path())
        raise InvalidKeyError(
            "{} is encrypted with an MD5-derived key, and this Python blocks MD5: convert it to encrypted "
            "PKCS#8 by running '{}' and pass the new file".format(origin.description, command)
        ) from None

    try:
        plaintext = _cbc_decrypt(cipher, key, iv, ciphertext)
        _check_decrypted(plaintext, [_TAG_INTEGER])
    except _PasswordError:
        _raise_password(origin, password)
    except _DERError as error:
        raise InvalidKeyError(
            "{} is corrupt ({}): copy the key file again".format(origin.description, error)
        ) from None
    return plaintext


def _dek_info(block: _PEMBlock, origin: _KeyOrigin) -> typing.Tuple[str, bytes]:
    """Read the cipher name and the IV from the DEK-Info header (RFC 1421 section 4.6.1.3)."""
    value = block.headers.get("DEK-Info", "")
    cipher, _, iv_hex = value.partition(",")
    try:
        iv = bytes.fromhex(iv_hex.strip())
    except ValueError:
        iv = b""
    if not cipher.strip() or len(iv) < 8:
        raise InvalidKeyError(
            "{} is corrupt: its DEK-Info header '{}' is not a cipher name and a hexadecimal IV; copy the "
            "key file again".format(origin.description, value)
        )
    return cipher.strip().upper(), iv


# --- PKCS#12 (RFC 7292) ---


_PKCS12Contents = typing.NamedTuple("_PKCS12Contents", [
    ("keys", typing.List[bytes]), ("certificates", typing.List[bytes]), ("skipped_parts", int),
])
_PKCS12Contents.__doc__ = """The PrivateKeyInfo DER of each key and the DER of each X.509 certificate of a PKCS#12 file,
and the number of parts skipped because their encryption is not implemented here."""


def _keys_from_pkcs12(
    der: bytes, password: typing.Optional[typing.Union[str, bytes]], origin: _KeyOrigin
) -> _PKCS12Contents:
    """Read the private keys and the certificates of a PKCS#12 file (a PFX).

    Returns the PrivateKeyInfo DER of every keyBag and pkcs8ShroudedKeyBag and
    the DER of every X.509 certBag, in file order. The MAC is checked before
    anything is decrypted. Without a password the empty password is tried, as
    OpenSSL's PKCS12_parse does.

    Raises:
        InvalidKeyError: The password is wrong or missing, or the keys are
            encrypted with an algorithm that is not implemented here.
        _DERError: The DER is malformed.
    """
    try:
        return _read_pfx(der, password, origin)
    except _PasswordError:
        _raise_password(origin, password)
    except _UnsupportedEncryptionError as error:
        command = "openssl pkcs12 -legacy -in {} -nocerts -out key-aes.pem".format(origin.command_path())
        _raise_unsupported_encryption(error.algorithm, origin, command)


def _pkcs12_passwords(password: typing.Optional[typing.Union[str, bytes]]) -> typing.List[_Password]:
    """Return the password encodings to try against the MAC.

    The empty password has two encodings: the BMPString of "" (two zero bytes),
    which OpenSSL 3.0 and cryptography write, and no bytes at all. OpenSSL's
    PKCS12_parse tries both, and so does this module.
    """
    if password is None or password in ("", b""):
        return [_Password(b"", b"\x00\x00"), _Password(b"", b"")]
    return [_password_forms(password)]


def _read_pfx(
    der: bytes, password: typing.Optional[typing.Union[str, bytes]], origin: _KeyOrigin
) -> _PKCS12Contents:
    """Check the PFX (RFC 7292 section 4), then read the bags of each part of its AuthenticatedSafe."""
    fields = _der_fields(_der_element(der), [_TAG_INTEGER, _TAG_SEQUENCE, _TAG_SEQUENCE], optional=1)
    if _der_integer(fields[0]) != 3:
        raise _DERError("the PFX version is not 3")
    content_type, content = _content_info(fields[1])
    if content_type != _OID_DATA:
        raise _unsupported(content_type)
    authenticated_safe = _octet_string(content)

    candidates = _pkcs12_passwords(password)
    # NOTE: only the password that matches the MAC decrypts, so a file made with
    # 'openssl pkcs12 -twopass' (another password for the MAC) reports a wrong password.
    chosen = _verify_pfx_mac(fields[2], authenticated_safe, candidates) if len(fields) == 3 else candidates[0]

    keys = []  # type: typing.List[bytes]
    certificates = []  # type: typing.List[bytes]
    skipped = []  # type: typing.List[_UnsupportedEncryptionError]
    for part in _der_sequence(authenticated_safe):
        try:
            safe_contents = _authenticated_safe_part(part, chosen)
        except _UnsupportedEncryptionError as error:
            # OpenSSL's legacy files encrypt only the certificates with RC2, so the key may still be found.
            _logger.info(
                "skipped a part of %s that is encrypted with %s, which sf_jwt cannot decrypt",
                origin.description, error.algorithm,
            )
            skipped.append(error)
            continue
        _read_safe_bags(safe_contents, chosen, keys, certificates, 0)

    if not keys and skipped:
        raise skipped[0]
    return _PKCS12Contents(keys, certificates, len(skipped))


def _verify_pfx_mac(
    mac_data: typing.Tuple[int, bytes], authenticated_safe: bytes, candidates: typing.List[_Password]
) -> _Password:
    """Check the MacData HMAC and return the password encoding that matches (RFC 7292 section 4 and appendix B).

    The MAC key comes from the PKCS#12 KDF with ID 3 and the MAC's own hash:
    SHA-1 in legacy files, SHA-256 in OpenSSL 3.0's default files.
    """
    fields = _der_fields(mac_data, [_TAG_SEQUENCE, _TAG_OCTET_STRING, _TAG_INTEGER], optional=1)
    algorithm, digest = _der_fields(fields[0], [_TAG_SEQUENCE, _TAG_OCTET_STRING])
    oid, _ = _der_algorithm(algorithm)
    hash_name = _MAC_DIGESTS.get(oid)
    if hash_name is None:
        raise _unsupported(oid)
    iterations = _checked_iterations(fields[2], _MAX_PKCS12_KDF_ITERATIONS) if len(fields) == 3 else 1
    size = hashlib.new(hash_name).digest_size

    import hmac

    for candidate in candidates:
        key = _pkcs12_kdf(hash_name, candidate.bmp, fields[1][1], iterations, 3, size)
        if hmac.compare_digest(hmac.new(key, authenticated_safe, hash_name).digest(), digest[1]):
            return candidate
    raise _PasswordError()


def _content_info(element: typing.Tuple[int, bytes]) -> typing.Tuple[str, typing.Tuple[int, bytes]]:
    """Read a ContentInfo (RFC 5652 section 3): the content type and the element inside [0] EXPLICIT."""
    content_type, wrapper = _der_fields(element, [_TAG_OID, _TAG_CONTEXT_0])
    return _der_oid(content_type), _explicit_content(wrapper)


def _explicit_content(wrapper: typing.Tuple[int, bytes]) -> typing.Tuple[int, bytes]:
    inner = _der_children(wrapper[1], 0, len(wrapper[1]))
    if len(inner) != 1:
        raise _DERError("an explicitly tagged value has {} elements, not 1".format(len(inner)))
    return inner[0]


def _octet_string(element: typing.Tuple[int, bytes]) -> bytes:
    if element[0] != _TAG_OCTET_STRING:
        raise _DERError("expected an OCTET STRING")
    return element[1]


def _authenticated_safe_part(part: typing.Tuple[int, bytes], password: _Password) -> bytes:
    """Return the SafeContents DER of one ContentInfo of the AuthenticatedSafe (RFC 7292 section 4.1).

    An encryptedData part (RFC 5652 section 8) is decrypted first.
    """
    content_type, content = _content_info(part)
    if content_type == _OID_DATA:
        return _octet_string(content)
    if content_type != _OID_ENCRYPTED_DATA:
        raise _unsupported(content_type)

    fields = _der_fields(content, [_TAG_INTEGER, _TAG_SEQUENCE, _TAG_CONTEXT_1], optional=1)
    inner_type, algorithm, encrypted = _der_fields(fields[1], [_TAG_OID, _TAG_SEQUENCE, _TAG_CONTEXT_0_PRIMITIVE])
    if _der_oid(inner_type) != _OID_DATA:
        raise _DERError("the encrypted content is not data")
    plaintext = _decrypt_with_algorithm(algorithm, encrypted[1], password)
    _check_decrypted(plaintext, [])
    return plaintext


def _read_safe_bags(
    safe_contents: bytes, password: _Password, keys: typing.List[bytes], certificates: typing.List[bytes], depth: int
) -> None:
    """Append the keys and the X.509 certificates of a SafeContents to the lists (RFC 7292 section 4.2).

    Other bags (CRLs, secrets) are skipped. A safeContentsBag is read as nested SafeContents.
    """
    for bag in _der_sequence(safe_contents):
        fields = _der_fields(bag, [_TAG_OID, _TAG_CONTEXT_0, _TAG_SET], optional=1)
        bag_type = _der_oid(fields[0])
        value = _explicit_content(fields[1])
        if bag_type == _OID_KEY_BAG:
            if value[0] != _TAG_SEQUENCE:
                raise _DERError("a keyBag is not a PrivateKeyInfo")
            keys.append(_der_encode(value[0], value[1]))
        elif bag_type == _OID_SHROUDED_KEY_BAG:
            keys.append(_decrypt_private_key_info(value, password))
        elif bag_type == _OID_CERT_BAG:
            certificate_type, wrapper = _der_fields(value, [_TAG_OID, _TAG_CONTEXT_0])
            if _der_oid(certificate_type) == _OID_X509_CERTIFICATE:
                certificates.append(_octet_string(_explicit_content(wrapper)))
        elif bag_type == _OID_SAFE_CONTENTS_BAG:
            if depth >= 4:
                raise _DERError("SafeContents nested more than 4 levels deep")
            _read_safe_bags(_der_encode(value[0], value[1]), password, keys, certificates, depth + 1)


# --- Claims and assertion (RFC 7523, RFC 7515) ------------------------------


def build_claims(
    client_id: str,
    username: str,
    audience: str = _PRODUCTION_LOGIN_URL,
    lifetime: int = _DEFAULT_LIFETIME,
    now: typing.Optional[float] = None,
) -> typing.Dict[str, typing.Any]:
    """Build the claims of the assertion.

    Args:
        client_id: The Connected App's consumer key, sent as ``iss``.
        username: The Salesforce username, sent as ``sub`` exactly as given
            (sandbox suffixes, ``+`` and ``&`` included).
        audience: The authorization server, sent as ``aud``:
            https://login.salesforce.com for production,
            https://test.salesforce.com for sandboxes, or a My Domain URL.
        lifetime: Seconds until ``exp``, 1 to 300. Salesforce documents at most 180.
        now: The current time in seconds since the epoch; the system clock if None.

    Returns:
        ``{"iss", "sub", "aud", "exp"}``; ``exp`` is an integer in seconds since
        1970-01-01T00:00:00Z, so the host's time zone does not matter.

    Raises:
        ConfigurationError: A value is empty or invalid.
    """
    issuer = _checked_text("client_id (the consumer key)", client_id)
    subject = _checked_text("username", username)
    if any(character.isspace() for character in issuer):
        raise ConfigurationError(
            "client_id (the consumer key) contains whitespace: copy the consumer key from the "
            "Connected App again, without line breaks"
        )

    audience = _checked_https_url("audience", audience)
    lifetime = _checked_lifetime(lifetime)
    if now is None:
        now = time.time()
    elif isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ConfigurationError("now must be seconds since the epoch, got {!r}".format(now))

    return {"iss": issuer, "sub": subject, "aud": audience, "exp": int(now) + lifetime}


def _checked_text(name: str, value: typing.Any) -> str:
    """Strip surrounding whitespace and reject empty or non-text values."""
    if not isinstance(value, str):
        raise ConfigurationError("{} must be a string, got {}".format(name, type(value).__name__))
    value = value.strip()
    if not value:
        raise ConfigurationError("{} is empty".format(name))
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in value):
        raise ConfigurationError("{} contains a control character such as a line break".format(name))
    return value


def _checked_https_url(name: str, url: typing.Any) -> str:
    """Require an absolute https URL without query or fragment; drop a trailing slash."""
    url = _checked_text(name, url)
    parts = _split_url(url)
    if parts is None or parts.scheme.lower() != "https" or not parts.netloc:
        raise ConfigurationError(
            "{} must be an https URL such as https://login.salesforce.com, got {!r}".format(name, url)
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigurationError("{} must not contain a query, fragment or user name, got {!r}".format(name, url))
    return url.rstrip("/")


def _checked_lifetime(lifetime: typing.Any) -> int:
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 1 <= lifetime <= _MAX_LIFETIME:
        raise ConfigurationError(
            "lifetime must be whole seconds from 1 to {}, got {!r} (Salesforce asks for "
            "at most 180)".format(_MAX_LIFETIME, lifetime)
        )
    return lifetime


def sign_rs256(signing_input: bytes, key: typing.Any) -> bytes:
    """Sign with RSASSA-PKCS1-v1_5 and SHA-256 (RFC 8017 section 8.2), the JWS "RS256".

    The private-key operation is blinded with ``rsa``'s own blinding factor and
    computed here with the Chinese Remainder Theorem, which rsa 4.7 does not use
    and which is about three times faster than the full exponent. The result is
    checked with the public exponent before it is returned, because a faulty
    CRT result would reveal the key.

    Args:
        signing_input: The bytes to sign, for JWS ``header.claims`` in base64url.
        key: A SigningKey or anything load_private_key takes.

    Returns:
        The signature, as many bytes as the modulus.
    """
    if not isinstance(signing_input, (bytes, bytearray)):
        raise TypeError("sign_rs256 signs bytes, not {}".format(type(signing_input).__name__))
    key = _as_signing_key(key)
    private = key.rsa_key

    encoded = _emsa_pkcs1_v15_sha256(bytes(signing_input), key._size)
    message = int.from_bytes(encoded, "big")

    blinded, unblinding_factor = private.blind(message)
    mod_p = pow(blinded, private.exp1, private.p)
    mod_q = pow(blinded, private.exp2, private.q)
    signature = private.unblind(mod_q + private.q * ((mod_p - mod_q) * private.coef % private.p), unblinding_factor)

    if pow(signature, private.e, private.n) != message:
        raise SalesforceJWTError("the RSA signature failed its check and was discarded; try again")
    return signature.to_bytes(key._size, "big")


def _emsa_pkcs1_v15_sha256(message: bytes, size: int) -> bytes:
    """Encode per EMSA-PKCS1-v1_5 (RFC 8017 section 9.2): 00 01 FF..FF 00 DigestInfo."""
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info


def _verify_rs256(signing_input: bytes, signature: bytes, n: int, e: int) -> bool:
    """Tell whether an RS256 signature is valid for the public key (n, e)."""
    size = (n.bit_length() + 7) // 8
    value = int.from_bytes(signature, "big")
    if len(signature) != size or value >= n:
        return False
    return pow(value, e, n).to_bytes(size, "big") == _emsa_pkcs1_v15_sha256(signing_input, size)


def create_assertion(
    client_id: str,
    username: str,
    key: typing.Any,
    audience: str = _PRODUCTION_LOGIN_URL,
    lifetime: int = _DEFAULT_LIFETIME,
    now: typing.Optional[float] = None,
) -> str:
    """Build and sign the JWT assertion for the token request.

    Args:
        client_id, username, audience, lifetime, now: As for build_claims.
        key: A SigningKey or anything load_private_key takes.

    Returns:
        The compact JWS ``header.claims.signature``, each part base64url. The
        header is exactly ``{"alg":"RS256"}``.
    """
    import json

    claims = build_claims(client_id, username, audience=audience, lifetime=lifetime, now=now)
    key = _as_signing_key(key)

    claims_json = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    signing_input = "{}.{}".format(base64url_encode(_JWS_HEADER), base64url_encode(claims_json))

    signature = sign_rs256(signing_input.encode("ascii"), key)
    _logger.debug(
        "signed an assertion with claims iss, sub, aud=%s, exp=%d using key %s",
        claims["aud"], claims["exp"], key.fingerprint,
    )
    return "{}.{}".format(signing_input, base64url_encode(signature))


# --- Token endpoint -----------------------------------------------------------
#
# urllib, ssl and the HTTP modules are imported inside the functions that use
# them, so that signing an assertion does not pay for loading them.


class Token(object):
    """The answer to a successful token request.

    Salesforce sends no expiry: the token lasts as long as the org's session
    timeout. When an API call answers HTTP 401, request a new one.

    Attributes:
        access_token: The bearer token for ``Authorization: Bearer ...``.
        instance_url: The org's URL, where the REST API is.
        id: The identity URL of the user, or None.
        token_type: Usually ``Bearer``.
        scope: The granted scopes, separated by spaces, or None.
        issued_at: When the token was issued, as an aware UTC datetime, or None.
        raw: A copy of the whole JSON answer.
    """

    __slots__ = ("access_token", "instance_url", "id", "token_type", "scope", "issued_at", "raw")

    def __init__(
        self,
        access_token: str,
        instance_url: str,
        id: typing.Optional[str] = None,
        token_type: typing.Optional[str] = None,
        scope: typing.Optional[str] = None,
        issued_at: typing.Optional[datetime.datetime] = None,
        raw: typing.Optional[typing.Dict[str, typing.Any]] = None,
    ) -> None:
        self.access_token = access_token
        self.instance_url = instance_url
        self.id = id
        self.token_type = token_type
        self.scope = scope
        self.issued_at = issued_at
        self.raw = dict(raw) if raw is not None else {}

    def __repr__(self) -> str:
        return "Token(access_token=<{} characters, hidden>, instance_url={!r}, id={!r}, token_type={!r}, " \
            "scope={!r}, issued_at={!r})".format(
                len(self.access_token), self.instance_url, self.id, self.token_type, self.scope, self.issued_at
            )


# The usual cause and fix of each OAuth error Salesforce returns for this flow,
# keyed by (error, error_description in lower case). An empty description marks
# the fallback for the error code alone.
_ERROR_HINTS = {
    ("invalid_grant", "user hasn't approved this consumer"): (
        "The user is not pre-authorized for the Connected App: in the app's policies set Permitted Users "
        "to 'Admin approved users are pre-authorized', then add the user's profile or a permission set "
        "to the app. A sandbox user sent to login.salesforce.com gets this answer too (use --sandbox), "
        "and a new app or sandbox can need a few minutes before logins work."
    ),
    ("invalid_grant", "audience is invalid"): (
        "The aud claim does not match the org: use https://test.salesforce.com for a sandbox "
        "(--sandbox), https://login.salesforce.com for production, or the My Domain URL for an "
        "External Client App (--audience)."
    ),
    ("invalid_grant", "invalid assertion"): (
        "The signature did not verify: the private key does not belong to the certificate uploaded to "
        "the Connected App ('Use digital signatures'). Check the pair with "
        "'sf-jwt assertion ... | sf-jwt decode - --cert CERT_FILE'."
    ),
    ("invalid_grant", "expired authorization code"): (
        "Salesforce found exp in the past: this host's clock is probably wrong, so synchronise it "
        "(NTP). sf_jwt computes exp in UTC, so the time zone does not matter."
    ),
    ("invalid_grant", "login rate exceeded"): (
        "Too many logins for this user (about 3,600 an hour): reuse the access token until an API call "
        "answers HTTP 401 instead of logging in for every request."
    ),
    ("invalid_grant", "inactive user"): "The user is deactivated: activate it or use another user.",
    ("invalid_client_id", ""): (
        "The iss claim is not a known consumer key: copy the consumer key from the Connected App "
        "(Manage Consumer Details), check that the app belongs to this org, and allow about 10 minutes "
        "after creating an app."
    ),
    ("invalid_client", ""): (
        "Salesforce could not read the assertion: each part must be base64url without '=' padding and "
        "the header must say RS256. An assertion built by sf_jwt has this form, so check assertions "
        "built elsewhere, and any proxy that rewrites requests."
    ),
    ("invalid_app_access", ""): (
        "The user may not use this Connected App: add the user's profile or a permission set to the app."
    ),
    ("app_not_found", ""): (
        "An External Client App needs the org's My Domain URL as both the login URL and the audience: "
        "pass --login-url https://MYDOMAIN.my.salesforce.com --audience https://MYDOMAIN.my.salesforce.com."
    ),
    ("unsupported_grant_type", ""): (
        "The token endpoint did not receive a form-encoded jwt-bearer grant: check that the login URL "
        "points at Salesforce and that no proxy rewrites the request."
    ),
}


def _is_loopback_host(host: str) -> bool:
    """Tell whether a host is localhost, 127.0.0.0/8 or ::1."""
    import ipaddress

    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_endpoint_url(name: str, url: typing.Any) -> str:
    """Require https, or http to a loopback host (test servers only)."""
    url = _checked_text(name, url)
    parts = _split_url(url)
    if parts is None:
        raise ConfigurationError("{} is not a valid URL: {!r}".format(name, url))
    try:
        host = parts.hostname
        port_is_valid = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number from 0 to 65535
        host, port_is_valid = None, False
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host or not port_is_valid:
        raise ConfigurationError(
            "{} must be an https URL such as https://login.salesforce.com, got {!r}".format(name, url)
        )
    if scheme == "http" and not _is_loopback_host(host):
        raise ConfigurationError(
            "{} uses plain http, which would send the assertion unencrypted: use https:// "
            "(http is accepted only for loopback test servers), got {!r}".format(name, url)
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigurationError("{} must not contain a query, fragment or user name, got {!r}".format(name, url))
    return url


def _response_url_is_safe(url: typing.Any) -> bool:
    """Tell whether a URL from the token response may be used later: https, or loopback http."""
    try:
        _checked_endpoint_url("url", url)
    except ConfigurationError:
        return False
    return True


def _ssl_context(ca_file: typing.Optional[str]) -> typing.Any:
    """Create a verifying TLS context with TLS 1.2 or newer, trusting ca_file if given."""
    import ssl

    if ca_file is not None:
        ca_file = os.fspath(ca_file)
        if not os.path.isfile(ca_file):
            raise ConfigurationError("CA file not found: {}".format(ca_file))
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, OSError, ValueError) as error:
        raise ConfigurationError(
            "cannot load the CA file {}: it must contain PEM certificates "
            "(-----BEGIN CERTIFICATE-----) ({})".format(ca_file, error)
        ) from None

    if hasattr(ssl, "TLSVersion"):
        if context.minimum_version < ssl.TLSVersion.TLSv1_2:
            context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:
        # Python 3.6 has no ssl.TLSVersion: disable the older versions by flag.
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    return context


def _http_request(
    method: str,
    url: str,
    body: typing.Optional[bytes],
    headers: typing.Dict[str, str],
    timeout: float,
    context: typing.Any,
    max_bytes: typing.Optional[int] = _MAX_RESPONSE_BYTES,
    ca_file: typing.Optional[str] = None,
) -> typing.Tuple[int, typing.Any, bytes]:
    """Send one request and return the status, headers and body of whatever HTTP answer came.

    Redirects are returned, not followed, so the request goes only to ``url``.
    Proxies from the environment apply, as in urllib.
    """
    import http.client
    import ssl
    import urllib.request
    from urllib.error import HTTPError, URLError

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: typing.Any, **kwargs: typing.Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect())
    all_headers = dict(headers, **{"User-Agent": _USER_AGENT})
    request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    try:
        try:
            response = opener.open(request, timeout=timeout)
        except HTTPError as error:
            response = error
        with response:
            body = _read_capped(response, url, max_bytes)
            _check_complete(method, response.headers, body, url)
            return response.getcode(), response.headers, body
    except (URLError, OSError, http.client.HTTPException, ssl.CertificateError) as error:
        raise _transport_error(error, url, timeout, ca_file) from error


def _check_complete(method: str, headers: typing.Any, body: bytes, url: str) -> None:
    """Raise a retryable TransportError when a body is shorter than its Content-Length.

    A read of a set number of bytes returns what arrived when the server closes
    early, without the IncompleteRead that a plain read() raises.
    """
    declared = headers.get("Content-Length") or ""
    if method != "HEAD" and _ASCII_DIGITS.match(declared.strip()) and len(body) < int(declared):
        raise TransportError(
            "the connection to {} closed after {} of {} bytes of the answer".format(_host_of(url), len(body), declared),
            retryable=True,
        )


def _read_capped(response: typing.Any, url: str, max_bytes: typing.Optional[int]) -> bytes:
    """Read a response body, at most max_bytes when that is not None."""
    if max_bytes is None:
        return response.read()
    body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise TransportError(
            "the response from {} is larger than {} bytes, so it is not a token response: check the "
            "login URL".format(_host_of(url), max_bytes)
        )
    return body


def _host_of(url: str) -> str:
    parts = _split_url(url)
    return (parts.netloc if parts is not None else "") or url


def _split_url(url: str) -> typing.Any:
    """Split a URL, or return None for one that urlsplit rejects (an unbalanced '[', for example)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url)
    except ValueError:
        return None


def _transport_error(
    error: BaseException, url: str, timeout: float, ca_file: typing.Optional[str] = None
) -> TransportError:
    """Describe a failure that left no HTTP answer, and whether a retry may help."""
    import http.client
    import socket
    import ssl

    from urllib.error import URLError

    # URLError wraps the cause in .reason; ssl.SSLError has a .reason too, but it is an OpenSSL code.
    reason = error.reason if isinstance(error, URLError) else error
    host = _host_of(url)
    verification_error = getattr(ssl, "SSLCertVerificationError", ssl.CertificateError)  # Python 3.6 lacks it

    if isinstance(reason, socket.timeout) or "timed out" in str(reason):
        return TransportError(
            "no response from {} within {} s (timed out): check the network path and proxy settings, "
            "or raise --timeout".format(host, timeout), retryable=True
        )
    if isinstance(reason, (verification_error, ssl.CertificateError)) or "CERTIFICATE_VERIFY_FAILED" in str(reason):
        detail = (getattr(reason, "verify_message", None) or str(reason)).rstrip(".")
        if "CERTIFICATE_VERIFY_FAILED" in detail:  # Python 3.6 gives no verify_message
            detail = "certificate verify failed, for a reason this Python does not report (the certificate may " \
                "have expired, or its issuing authority is not trusted)"
        return TransportError("TLS certificate verification failed for {}: {}. {}".format(
            host, detail, _tls_remedy(detail, ca_file)))
    if isinstance(reason, ssl.SSLEOFError) or (isinstance(reason, ssl.SSLError) and "EOF" in str(reason).upper()):
        return TransportError(
            "the connection to {} closed before a complete answer arrived (TLS EOF)".format(host), retryable=True
        )
    if isinstance(reason, ssl.SSLError):
        return TransportError("the TLS handshake with {} failed: {}".format(host, reason))
    if isinstance(reason, socket.gaierror):
        return TransportError("cannot resolve the host name in {}: check the login URL and DNS".format(url))
    if isinstance(reason, ConnectionRefusedError):
        return TransportError("connection refused by {}: check the login URL and port".format(host), retryable=True)
    if isinstance(reason, (ConnectionError, http.client.IncompleteRead)):
        return TransportError(
            "the connection to {} closed before a complete answer arrived ({})".format(host, type(reason).__name__),
            retryable=True,
        )
    if isinstance(reason, http.client.HTTPException):
        return TransportError("the response from {} is not valid HTTP ({})".format(host, type(reason).__name__))
    return TransportError("network error talking to {}: {}".format(host, reason))


def _tls_remedy(detail: str, ca_file: typing.Optional[str]) -> str:
    """Suggest the fix for a failed certificate verification, from OpenSSL's description of it."""
    proxy_hint = "if a proxy or a company CA re-signs TLS traffic, pass its CA bundle with --ca-file " \
        "(ca_file= in Python)"
    if "does not report" in detail:
        return "Check this host's clock and the certificate's dates; " + proxy_hint
    if "expired" in detail or "not yet valid" in detail:
        return "Check this host's clock; " + proxy_hint
    if "mismatch" in detail or "doesn't match" in detail:
        return "Check the host name in the login URL; " + proxy_hint
    if ca_file:
        return "The CA file {} does not contain the authority that issued the server's certificate: pass the " \
            "right bundle with --ca-file (ca_file= in Python)".format(ca_file)
    return proxy_hint[0].upper() + proxy_hint[1:]


def _json_object(body: bytes) -> typing.Optional[typing.Dict[str, typing.Any]]:
    """Parse a JSON object, or return None for anything else."""
    import json

    try:
        value = json.loads(body.decode("utf-8"), parse_int=_bounded_int)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _bounded_int(digits: str) -> int:
    """Parse a JSON integer of at most 4300 digits, the limit Python 3.11 sets, on every Python.

    Python 3.6 to 3.10 convert longer numbers in quadratic time.
    """
    if len(digits) > 4300:
        raise ValueError("integer too long")
    return int(digits)


def _describe_body(headers: typing.Any, body: bytes) -> str:
    """Name what a non-JSON answer was, for example 'an HTML page titled "Maintenance"'."""
    content_type = _clean_server_text((headers.get("Content-Type") or "").split(";")[0]) or "no content type"
    if not body:
        return "an empty body"
    title = re.search(rb"<title[^>]*>([^<]{1,200})</title>", body[:65536], re.IGNORECASE)
    if title:
        text = _clean_server_text(" ".join(title.group(1).decode("utf-8", "replace").split()))
        return 'an HTML page titled "{}"'.format(text[:100])
    return "{} bytes of {}".format(len(body), content_type[:100])


def _clean_server_text(value: typing.Any) -> str:
    """Make a server-sent string safe to print: no control characters, at most 300 characters."""
    text = value if isinstance(value, str) else ""
    text = "".join(character if character.isprintable() else " " for character in text).strip()
    return text[:300]


def _authentication_error(status: int, data: typing.Dict[str, typing.Any]) -> AuthenticationError:
    error = _clean_server_text(data.get("error"))
    description = _clean_server_text(data.get("error_description"))
    hint = _ERROR_HINTS.get((error, description.lower())) or _ERROR_HINTS.get((error, ""), "")
    return AuthenticationError(status, error, description, hint)


def _token_from_response(status: int, headers: typing.Any, body: bytes, url: str) -> Token:
    """Turn the token endpoint's answer into a Token or the matching error."""
    host = _host_of(url)
    if 300 <= status < 400:
        location_host = _clean_server_text(_host_of(headers.get("Location") or ""))[:100] or "an unnamed location"
        raise TransportError(
            "the token endpoint {} responded with HTTP {} (a redirect to {}); redirects are not followed, "
            "so the assertion goes only to the host you named: if you trust {}, use it as the "
            "login URL".format(host, status, location_host, location_host),
            status=status,
        )

    data = _json_object(body)
    if 200 <= status < 300 and data is not None:
        return _token_from_json(data, host, status)
    if data is not None and isinstance(data.get("error"), str):
        raise _authentication_error(status, data)

    what = _describe_body(headers, body)
    if 200 <= status < 300:
        raise TransportError(
            "the token endpoint {} responded with HTTP {} and {} instead of JSON: a proxy, a captive portal "
            "or a wrong login URL may have answered".format(host, status, what), status=status
        )
    retryable = status in (429, 502, 503, 504)
    if status == 429:
        advice = "Salesforce or a proxy is limiting the request rate; try again later"
    elif retryable or status >= 500:
        advice = "Salesforce or a proxy failed or is in maintenance; try again later"
    else:
        advice = "check the login URL and any proxy in between"
    raise TransportError(
        "the token endpoint {} responded with HTTP {} and {}: {}".format(host, status, what, advice),
        retryable=retryable,
        status=status,
        retry_after=_parse_retry_after(headers.get("Retry-After")) if retryable else None,
    )


_ASCII_DIGITS = re.compile(r"\A[0-9]{1,20}\Z")


def _parse_retry_after(value: typing.Optional[str]) -> typing.Optional[float]:
    """Read a Retry-After header: seconds, or an HTTP date (RFC 9110 section 10.2.3)."""
    import email.utils

    if not value:
        return None
    value = value.strip()
    if _ASCII_DIGITS.match(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


# A bearer token is sent in an HTTP header, so printable ASCII without spaces (RFC 6750 section 2.1).
_TOKEN_CHARACTERS = re.compile(r"\A[\x21-\x7e]+\Z")


def _token_from_json(data: typing.Dict[str, typing.Any], host: str, status: int = 200) -> Token:
    """Check the fields of a successful answer and build the Token."""
    access_token = data.get("access_token")
    if isinstance(access_token, str) and access_token and not _TOKEN_CHARACTERS.match(access_token):
        raise TransportError(
            "the access_token from {} contains spaces or characters outside printable ASCII, which an HTTP "
            "header cannot carry: it is not a Salesforce token".format(host),
            status=status,
        )
    if not isinstance(access_token, str) or not access_token:
        raise TransportError(
            "the response from {} has no access_token (fields: {}): it is not a Salesforce token "
            "response".format(host, ", ".join(sorted(_clean_server_text(name)[:40] for name in data)[:20]) or "none"),
            status=status,
        )
    for field in ("instance_url", "id"):
        value = data.get(field)
        if (field == "instance_url" or value is not None) and not _response_url_is_safe(value):
            raise TransportError(
                "the response from {} has an {} that is not an https URL ({!r}); it is not used, so the "
                "token is never sent there".format(host, field, _clean_server_text(value)[:100]),
                status=status,
            )

    optional = {name: data.get(name) if isinstance(data.get(name), str) else None for name in ("token_type", "scope")}
    return Token(
        access_token=access_token,
        instance_url=data["instance_url"].rstrip("/"),
        id=data.get("id"),
        token_type=optional["token_type"],
        scope=optional["scope"],
        issued_at=_parse_issued_at(data.get("issued_at")),
        raw=data,
    )


def _parse_issued_at(value: typing.Any) -> typing.Optional[datetime.datetime]:
    """Convert Salesforce's issued_at (milliseconds since the epoch, as a string) to UTC."""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not _ASCII_DIGITS.match(str(value)):
        return None
    try:
        return datetime.datetime.fromtimestamp(int(value) / 1000, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def request_token(
    assertion: str,
    token_url: str,
    timeout: float = _DEFAULT_TIMEOUT,
    ca_file: typing.Optional[str] = None,
    ssl_context: typing.Any = None,
) -> Token:
    """POST a signed assertion to the token endpoint (RFC 7523 section 2.1).

    Args:
        assertion: The compact JWS from create_assertion.
        token_url: For example https://login.salesforce.com/services/oauth2/token.
            Plain http is rejected before anything is sent, except to loopback
            hosts (test servers).
        timeout: Seconds to wait to connect and for each read.
        ca_file: A PEM bundle of CA certificates to trust instead of the
            system store, for example a company proxy's CA.
        ssl_context: An ``ssl.SSLContext`` to use as it is. It takes the place of
            ca_file, which then only names the CA file in error messages.

    Returns:
        The Token.

    Raises:
        AuthenticationError: Salesforce answered with an OAuth error.
        TransportError: No usable answer; ``retryable`` says whether to try again.
        ConfigurationError: An argument is invalid.
    """
    from urllib.parse import urlencode

    token_url = _checked_endpoint_url("token_url", token_url)
    _check_assertion_shape(assertion)
    timeout = _checked_timeout(timeout)
    context = ssl_context if ssl_context is not None else _ssl_context(ca_file)

    form = urlencode({"grant_type": _GRANT_TYPE, "assertion": assertion}).encode("ascii")
    form_headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}

    started = time.monotonic()
    _logger.debug("POST %s (timeout %s s)", token_url, timeout)
    status, headers, body = _http_request("POST", token_url, form, form_headers, timeout, context, ca_file=ca_file)
    _logger.debug("HTTP %d from %s in %.0f ms", status, token_url, (time.monotonic() - started) * 1000)

    return _token_from_response(status, headers, body, token_url)


def _check_assertion_shape(assertion: typing.Any) -> None:
    segments = assertion.split(".") if isinstance(assertion, str) else []
    if len(segments) != 3 or not all(segment and _BASE64URL_ALPHABET.match(segment.encode("ascii", "replace"))
                                     for segment in segments):
        raise ConfigurationError("assertion must be a compact JWS: three base64url parts joined by '.'")


def _checked_timeout(timeout: typing.Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise ConfigurationError(
            "timeout (--timeout) must be more than 0 and at most 3600 seconds, got {!r}".format(timeout)
        )
    return timeout


def _normalized_login_url(login_url: typing.Any) -> str:
    """Check the login URL and drop a trailing slash or token path."""
    from urllib.parse import urlsplit

    url = _checked_endpoint_url("login URL (--login-url)", login_url).rstrip("/")
    if url.endswith(_TOKEN_PATH):
        url = url[: -len(_TOKEN_PATH)]

    host = urlsplit(url).hostname or ""
    if host.endswith(".lightning.force.com"):
        my_domain = host[: -len(".lightning.force.com")] + ".my.salesforce.com"
        raise ConfigurationError(
            "the login URL {} is a Lightning host, which does not serve logins: use https://{} "
            "or https://login.salesforce.com (https://test.salesforce.com for a sandbox)".format(url, my_domain)
        )
    return url


def _default_audience(login_url: str) -> str:
    """Pick the audience for a login URL: login or test, by what the host looks like."""
    from urllib.parse import urlsplit

    if login_url.lower() in (_PRODUCTION_LOGIN_URL, _SANDBOX_LOGIN_URL):
        return login_url.lower()
    host = urlsplit(login_url).hostname or ""
    return _SANDBOX_LOGIN_URL if _is_sandbox_host(host) else _PRODUCTION_LOGIN_URL


def _is_sandbox_host(host: str) -> bool:
    """Tell whether a host is a sandbox or scratch org's My Domain."""
    host = host.lower().rstrip(".")
    return (
        host.endswith(".sandbox.my.salesforce.com")
        or host.endswith(".scratch.my.salesforce.com")
        or (host.endswith(".my.salesforce.com") and "--" in host)
    )


def get_token(
    client_id: str,
    username: str,
    private_key: typing.Any,
    login_url: str = _PRODUCTION_LOGIN_URL,
    audience: typing.Optional[str] = None,
    lifetime: int = _DEFAULT_LIFETIME,
    timeout: float = _DEFAULT_TIMEOUT,
    ca_file: typing.Optional[str] = None,
    max_attempts: int = _DEFAULT_MAX_ATTEMPTS,
    deadline: float = _DEFAULT_DEADLINE,
) -> Token:
    """Log in with the JWT bearer flow and return the access token.

    Transient failures (refused or reset connections, timeouts, HTTP 429, 502,
    503 and 504) are retried with exponential backoff and full jitter, each
    attempt with a freshly signed assertion. OAuth errors are never retried,
    with one exception: when ``audience`` is None and Salesforce answers
    ``audience is invalid`` or ``app_not_found``, one more login is tried with
    the other likely audience, and a warning names the one that worked.

    Args:
        client_id: The Connected App's consumer key.
        username: The Salesforce username to log in as.
        private_key: A SigningKey or anything load_private_key takes.
        login_url: Where to send the token request: https://login.salesforce.com,
            https://test.salesforce.com, or the org's My Domain URL.
        audience: The ``aud`` claim. If None: the login URL itself when it is
            login or test, https://test.salesforce.com for sandbox and scratch
            My Domain hosts, otherwise https://login.salesforce.com.
        lifetime: Seconds until the assertion expires.
        timeout: Seconds to wait to connect and for each read.
        ca_file: A PEM bundle of CA certificates to trust instead of the system store.
        max_attempts: Token requests to try at most for transient failures.
        deadline: Seconds for all attempts together, waits included.

    Returns:
        The Token.

    Raises:
        InvalidKeyError: The private key cannot be used.
        ConfigurationError: Another argument is invalid; nothing was sent.
        AuthenticationError: Salesforce rejected the login, and ``hint`` names the usual cause.
        TransportError: No usable answer within the attempts and the deadline.
    """
    login = _Login(
        client_id, username, private_key, login_url, audience, lifetime, timeout, ca_file, max_attempts, deadline
    )
    return login.log_in()


# --- Logging in: retries and the audience fallback ----------------------------


class _Login(object):
    """Checked login settings, and the login with retries and the audience fallback."""

    def __init__(
        self,
        client_id: str,
        username: str,
        private_key: typing.Any,
        login_url: str,
        audience: typing.Optional[str],
        lifetime: int,
        timeout: float,
        ca_file: typing.Optional[str],
        max_attempts: int,
        deadline: float,
    ) -> None:
        self.login_url = _normalized_login_url(login_url)
        self.token_url = self.login_url + _TOKEN_PATH
        self.audience_is_explicit = audience is not None
        self.audience = _checked_https_url("audience", audience) if audience is not None \
            else _default_audience(self.login_url)

        claims = build_claims(client_id, username, self.audience, lifetime)
        self.client_id, self.username, self.lifetime = claims["iss"], claims["sub"], lifetime
        self.key = _as_signing_key(private_key)

        self.timeout = _checked_timeout(timeout)
        self.ca_file = ca_file
        self.context = _ssl_context(ca_file)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 10:
            raise ConfigurationError("max_attempts must be a whole number from 1 to 10, got {!r}".format(max_attempts))
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= 3600:
            raise ConfigurationError("deadline must be more than 0 and at most 3600 seconds, got {!r}".format(deadline))
        self.max_attempts, self.deadline = max_attempts, deadline

    def log_in(self) -> Token:
        """Log in once, retrying transient failures, with at most one audience fallback."""
        give_up_at = time.monotonic() + self.deadline
        try:
            return self._log_in_with_retries(self.audience, give_up_at)
        except AuthenticationError as error:
            fallback = self._fallback_audience(error)
            if fallback is None:
                raise
            rejected = self.audience
            _logger.info("audience %s was rejected (%s); trying %s", rejected, error.error, fallback)
            token = self._log_in_with_retries(fallback, give_up_at)

        _logger.warning(
            "logged in with audience %s after %s was rejected: set it explicitly (audience= in Python, "
            "--audience or SF_AUDIENCE_URL on the command line) to skip the failed login",
            fallback, rejected,
        )
        self.audience = fallback
        return token

    def _fallback_audience(self, error: AuthenticationError) -> typing.Optional[str]:
        """Pick the audience to try after an audience rejection, or None."""
        rejected = error.error_description.lower() == "audience is invalid" or error.error == "app_not_found"
        if self.audience_is_explicit or not rejected:
            return None
        if self.login_url.lower() not in (_PRODUCTION_LOGIN_URL, _SANDBOX_LOGIN_URL):
            fallback = self.login_url  # a My Domain URL, as External Client Apps require
        elif self.audience == _PRODUCTION_LOGIN_URL:
            fallback = _SANDBOX_LOGIN_URL
        else:
            fallback = _PRODUCTION_LOGIN_URL
        return fallback if fallback != self.audience else None

    def _log_in_with_retries(self, audience: str, give_up_at: float) -> Token:
        """Request a token, retrying transient failures within the attempts and the deadline."""
        attempt = 0
        while True:
            attempt += 1
            assertion = create_assertion(self.client_id, self.username, self.key, audience, self.lifetime)
            remaining = give_up_at - time.monotonic()
            try:
                return request_token(
                    assertion, self.token_url, timeout=max(0.001, min(self.timeout, remaining)),
                    ca_file=self.ca_file, ssl_context=self.context,
                )
            except TransportError as error:
                wait = _retry_wait(error, attempt)
                if not error.retryable or attempt >= self.max_attempts or time.monotonic() + wait >= give_up_at:
                    raise
                _logger.info(
                    "token request failed (%s); retry %d of %d in %.1f s", error, attempt, self.max_attempts - 1, wait
                )
                time.sleep(wait)


def _retry_wait(error: TransportError, attempt: int) -> float:
    """Seconds to wait before the next attempt: Retry-After if given, else full-jitter backoff."""
    import random

    if error.retry_after is not None:
        return min(error.retry_after, _MAX_RETRY_WAIT)
    return random.uniform(0, min(_MAX_RETRY_WAIT, _RETRY_BASE_WAIT * 2 ** (attempt - 1)))


# --- Reusing tokens: TokenProvider and the shared cache file ------------------


class Response(typing.NamedTuple("Response", [("status", int), ("headers", typing.Any), ("body", typing.Any)])):
    """An answer of the REST API to TokenProvider.request.

    Attributes:
        status: The HTTP status code.
        headers: The response headers, a case-insensitive ``http.client.HTTPMessage``.
        body: The parsed JSON when the answer is JSON, bytes otherwise.
    """

    __slots__ = ()


class _Flight(object):
    """One login in progress, which the threads that arrive meanwhile wait for."""

    __slots__ = ("done", "token", "error")

    def __init__(self) -> None:
        import threading

        self.done = threading.Event()
        self.token = None  # type: typing.Optional[Token]
        self.error = None  # type: typing.Optional[BaseException]


class TokenProvider(object):
    """Log in once and reuse the token, across threads and, with cache_file, processes.

    Salesforce limits logins (about 3,600 per user per hour) and sends no
    expiry, so a token is reused for ``max_age`` seconds, and dropped earlier
    when the REST API answers HTTP 401. When many threads ask at once, one logs
    in and the others wait for its result or its error.

    Args:
        client_id, username, private_key, login_url, audience, lifetime,
        timeout, ca_file, max_attempts, deadline: As for get_token.
        max_age: Seconds to reuse a token before the next login. The default,
            900, is the shortest session timeout an admin can set.
        cache_file: A file in which processes of this host share tokens. It
            holds access tokens (never the key or an assertion), is created with
            mode 0600 and replaced atomically, and is locked while a process
            logs in (not on Windows, where two processes may both log in).
        clock: A function that returns the time in seconds since the epoch;
            ``time.time`` if None. Tests pass their own.

    Raises:
        InvalidKeyError, ConfigurationError: As for get_token, at construction.
    """

    def __init__(
        self,
        client_id: str,
        username: str,
        private_key: typing.Any,
        login_url: str = _PRODUCTION_LOGIN_URL,
        audience: typing.Optional[str] = None,
        lifetime: int = _DEFAULT_LIFETIME,
        timeout: float = _DEFAULT_TIMEOUT,
        ca_file: typing.Optional[str] = None,
        max_attempts: int = _DEFAULT_MAX_ATTEMPTS,
        deadline: float = _DEFAULT_DEADLINE,
        max_age: float = _DEFAULT_MAX_AGE,
        cache_file: typing.Optional[str] = None,
        clock: typing.Optional[typing.Callable[[], float]] = None,
    ) -> None:
        import threading

        self._login = _Login(
            client_id, username, private_key, login_url, audience, lifetime, timeout, ca_file, max_attempts, deadline
        )
        if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not 0 < max_age <= 86400:
            raise ConfigurationError("max_age must be more than 0 and at most 86400 seconds, got {!r}".format(max_age))
        self.max_age = max_age
        self._clock = clock or time.time
        self._cache = None  # type: typing.Optional[_TokenCacheFile]
        if cache_file is not None:
            entry_id = "\n".join([self._login.login_url, self._login.client_id, self._login.username, audience or ""])
            self._cache = _TokenCacheFile(os.fspath(cache_file), hashlib.sha256(entry_id.encode("utf-8")).hexdigest())

        self._lock = threading.Lock()
        self._token = None  # type: typing.Optional[Token]
        self._obtained_at = 0.0
        self._flight = None  # type: typing.Optional[_Flight]

    def __repr__(self) -> str:
        return "<TokenProvider {} at {}>".format(self._login.username, self._login.login_url)

    def get(self) -> Token:
        """Return the cached token while it is younger than max_age, or log in.

        Raises:
            AuthenticationError, TransportError: As for get_token.
        """
        with self._lock:
            if self._token is not None and self._clock() - self._obtained_at < self.max_age:
                return self._token
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = _Flight()

        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return typing.cast(Token, flight.token)

        try:
            token, obtained_at = self._fetch()
            flight.token = token
            with self._lock:
                self._token, self._obtained_at = token, obtained_at
            return token
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()

    def _fetch(self) -> typing.Tuple[Token, float]:
        """Take a fresh token from the cache file, or log in and store it there."""
        if self._cache is None:
            return self._login.log_in(), self._clock()

        cached = self._cache.read_entry(self._clock(), self.max_age)
        if cached is not None:
            return cached
        with self._cache.locked(self._login.deadline + self._login.timeout):
            cached = self._cache.read_entry(self._clock(), self.max_age)
            if cached is not None:
                return cached
            token = self._login.log_in()
            obtained_at = self._clock()
            self._cache.write_entry(token, obtained_at)
        return token, obtained_at

    def invalidate(self, token: typing.Optional[Token] = None) -> None:
        """Drop the cached token, so that the next get() logs in.

        Args:
            token: Drop the cached token only if it is still this one. Two
                threads that react to the same HTTP 401 then cause one login.
        """
        with self._lock:
            current = self._token
            if current is None or (token is not None and token.access_token != current.access_token):
                return
            self._token = None
        if self._cache is not None:
            with self._cache.locked(self._login.timeout):
                self._cache.remove_entry(current.access_token)

    def request(
        self,
        method: str,
        path_or_url: str,
        data: typing.Any = None,
        headers: typing.Optional[typing.Mapping[str, str]] = None,
        timeout: typing.Optional[float] = None,
    ) -> Response:
        """Call the REST API at the token's instance URL with ``Authorization: Bearer``.

        On HTTP 401 the token is dropped, a new one is obtained and the call is
        repeated once. Redirects are not followed, so the token stays on the
        instance host.

        Args:
            method: The HTTP method, such as GET or POST.
            path_or_url: A path such as ``/services/data/v62.0/limits``, or a URL
                on the instance host.
            data: A dict or list, sent as JSON; bytes or str, sent as they are.
            headers: More request headers.
            timeout: Seconds to wait to connect and for each read; the
                provider's timeout if None.

        Returns:
            The Response, for every HTTP status.

        Raises:
            TransportError: No HTTP answer came (the message names why).
            AuthenticationError: A new login was needed and Salesforce rejected it.
        """
        body, request_headers = _api_request_body(data, headers)
        timeout = _checked_timeout(timeout if timeout is not None else self._login.timeout)

        token = self.get()
        response = self._call(token, method, path_or_url, body, request_headers, timeout)
        if response.status == 401:
            _logger.info("HTTP 401 from %s: logging in again and repeating the call once", token.instance_url)
            self.invalidate(token)
            token = self.get()
            response = self._call(token, method, path_or_url, body, request_headers, timeout)
        return response

    def _call(
        self,
        token: Token,
        method: str,
        path_or_url: str,
        body: typing.Optional[bytes],
        headers: typing.Dict[str, str],
        timeout: float,
    ) -> Response:
        import json

        url = _api_url(token.instance_url, path_or_url)
        headers = dict(headers, Authorization="Bearer " + token.access_token)

        started = time.monotonic()
        status, response_headers, payload = _http_request(
            method.upper(), url, body, headers, timeout, self._login.context, max_bytes=None
        )
        _logger.debug("%s %s -> HTTP %d in %.0f ms", method.upper(), url, status, (time.monotonic() - started) * 1000)

        content_type = (response_headers.get("Content-Type") or "").split(";")[0].strip().lower()
        parsed = payload  # type: typing.Any
        if payload and (content_type == "application/json" or content_type.endswith("+json")):
            try:
                parsed = json.loads(payload.decode("utf-8"))
            except (ValueError, RecursionError):
                parsed = payload
        return Response(status, response_headers, parsed)

    def __call__(self, request: typing.Any) -> typing.Any:
        """Set ``Authorization: Bearer`` on a prepared request, so the provider works as ``auth=`` in requests."""
        request.headers["Authorization"] = "Bearer " + self.get().access_token
        return request


def _api_request_body(
    data: typing.Any, headers: typing.Optional[typing.Mapping[str, str]]
) -> typing.Tuple[typing.Optional[bytes], typing.Dict[str, str]]:
    """Encode a REST request body; a dict or list becomes JSON."""
    import json

    request_headers = {"Accept": "application/json"}
    request_headers.update(headers or {})
    if data is None:
        return None, request_headers
    if isinstance(data, (dict, list)):
        request_headers.setdefault("Content-Type", "application/json")
        return json.dumps(data, separators=(",", ":")).encode("utf-8"), request_headers
    if isinstance(data, str):
        return data.encode("utf-8"), request_headers
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), request_headers
    raise TypeError("data must be a dict, list, str or bytes, not {}".format(type(data).__name__))


def _api_url(instance_url: str, path_or_url: str) -> str:
    """Join a path to the instance URL; a full URL must point at the instance host."""
    if not isinstance(path_or_url, str) or not path_or_url:
        raise ConfigurationError("path_or_url must be a path such as /services/data/v62.0/limits")
    if "://" not in path_or_url:
        return instance_url + ("" if path_or_url.startswith("/") else "/") + path_or_url
    if path_or_url == instance_url or path_or_url.startswith(instance_url + "/"):
        return path_or_url
    raise ConfigurationError(
        "{} is not on the instance host {}: the access token is sent only there".format(path_or_url, instance_url)
    )


class _TokenCacheFile(object):
    """A JSON file of tokens shared by the processes of one host, one entry per login setting.

    The entry id is a SHA-256 of login URL, consumer key, username and
    audience, so the file names no user. A corrupt, foreign-owned or stale
    entry is ignored with a log line, and a failed write never fails a login.
    """

    def __init__(self, path: str, entry_id: str) -> None:
        self.path = path
        self.entry_id = entry_id
        self._warnings_logged = set()  # type: typing.Set[str]

    def _warn_once(self, message: str, *args: typing.Any) -> None:
        """Log a warning about the file once, though one login reads the file up to three times."""
        if message not in self._warnings_logged:
            self._warnings_logged.add(message)
            _logger.warning(message, *args)

    def read_entry(self, now: float, max_age: float) -> typing.Optional[typing.Tuple[Token, float]]:
        """Return the fresh token of this entry and when it was obtained, or None."""
        entry = self._read_entries().get(self.entry_id)
        if not isinstance(entry, dict):
            return None
        obtained_at = entry.get("obtained_at")
        if isinstance(obtained_at, bool) or not isinstance(obtained_at, (int, float)):
            _logger.warning("ignoring a malformed entry in the token cache %s", self.path)
            return None
        if not 0 <= now - obtained_at < max_age:
            _logger.debug("the token in %s is %.0f s old; logging in again", self.path, now - obtained_at)
            return None
        try:
            token = _token_from_json(entry.get("token") or {}, self.path)
        except TransportError:
            _logger.warning("ignoring a malformed entry in the token cache %s", self.path)
            return None
        _logger.debug("using the token from %s, obtained %.0f s ago", self.path, now - obtained_at)
        return token, float(obtained_at)

    def write_entry(self, token: Token, obtained_at: float) -> None:
        entries = self._read_entries()
        entries[self.entry_id] = {"obtained_at": obtained_at, "token": token.raw}
        self._write_entries(entries)

    def remove_entry(self, access_token: str) -> None:
        """Remove this entry if it still contains access_token."""
        entries = self._read_entries()
        entry = entries.get(self.entry_id)
        if isinstance(entry, dict) and isinstance(entry.get("token"), dict) \
                and entry["token"].get("access_token") == access_token:
            del entries[self.entry_id]
            self._write_entries(entries)

    def _read_entries(self) -> typing.Dict[str, typing.Any]:
        try:
            with open(self.path, "rb") as cache:
                if hasattr(os, "getuid") and os.fstat(cache.fileno()).st_uid != os.getuid():
                    self._warn_once("ignoring the token cache %s: another user owns it", self.path)
                    return {}
                data = cache.read(_MAX_RESPONSE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as error:
            self._warn_once("cannot read the token cache %s (%s); logging in without it", self.path, error)
            return {}

        content = _json_object(data) if len(data) <= _MAX_RESPONSE_BYTES else None
        if content is None or content.get("format") != _CACHE_FORMAT or not isinstance(content.get("entries"), dict):
            self._warn_once("ignoring the token cache %s: not an sf_jwt token cache; it will be rewritten", self.path)
            return {}
        return content["entries"]

    def _write_entries(self, entries: typing.Dict[str, typing.Any]) -> None:
        """Replace the file atomically with a new one of mode 0600."""
        import json
        import tempfile

        directory = os.path.dirname(os.path.abspath(self.path))
        temporary = None
        try:
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=".sf_jwt-cache-", suffix=".tmp")
            with os.fdopen(handle, "w") as cache:
                json.dump({"format": _CACHE_FORMAT, "entries": entries}, cache)
            os.replace(temporary, self.path)
        except OSError as error:
            _logger.warning("cannot write the token cache %s (%s); the login still succeeded", self.path, error)
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)

    @contextlib.contextmanager
    def locked(self, wait: float) -> typing.Iterator[None]:
        """Hold an exclusive lock on FILE.lock for up to ``wait`` seconds of waiting.

        Without fcntl (Windows) or when the lock cannot be had in time, the
        block runs unlocked: two processes may then both log in.
        """
        try:
            import fcntl
        except ImportError:
            yield
            return
        try:
            handle = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            _logger.warning("cannot open the lock file %s.lock (%s); continuing unlocked", self.path, error)
            yield
            return

        try:
            give_up_at = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up_at:
                        _logger.warning("the token cache %s stayed locked %.0f s; continuing unlocked", self.path, wait)
                        break
                    time.sleep(0.05)
            yield
        finally:
            os.close(handle)  # closing the descriptor releases the lock


# --- Reading JWTs and certificates, for the decode command --------------------


def _decode_jwt(
    jwt: str,
) -> typing.Tuple[typing.Dict[str, typing.Any], typing.Dict[str, typing.Any], bytes, bytes]:
    """Split a compact JWS into header, claims, signing input and signature, without verifying."""
    jwt = jwt.strip()
    if jwt.lower().startswith("bearer "):
        jwt = jwt[len("bearer "):].strip()
    segments = jwt.split(".")
    if len(segments) != 3:
        raise DecodeError("a JWT has three parts separated by '.', this text has {}".format(len(segments)))

    decoded = []
    for name, segment in zip(("header", "claims", "signature"), segments):
        try:
            decoded.append(base64url_decode(segment))
        except DecodeError as error:
            raise DecodeError("the {} part of the JWT is {}".format(name, error)) from None
    parts = []
    for name, content in zip(("header", "claims"), decoded):
        value = _json_object(content)
        if value is None:
            raise DecodeError("the {} part of the JWT is not a JSON object".format(name))
        parts.append(value)
    signature = decoded[2]

    signing_input = "{}.{}".format(segments[0], segments[1]).encode("ascii")
    return parts[0], parts[1], signing_input, signature


_Certificate = typing.NamedTuple("_Certificate", [
    ("n", int), ("e", int), ("not_before", datetime.datetime), ("not_after", datetime.datetime), ("size", int),
])


def _load_certificate(path: str) -> _Certificate:
    """Read an X.509 certificate file, PEM or DER, with an RSA key."""
    data = _read_small_file(path, "certificate file", ConfigurationError)
    origin = _KeyOrigin("the certificate file {}".format(path), path)
    text = _decode_text(data)
    if text is not None and "-----BEGIN" in text:
        blocks = [block for block in _pem_blocks(text, origin) if block.label.endswith("CERTIFICATE")]
        if not blocks:
            raise ConfigurationError("{} contains no -----BEGIN CERTIFICATE----- block".format(path))
        data = _pem_block_der(blocks[0], origin)

    try:
        return _parse_certificate(data)
    except _DERError as error:
        if _looks_like_pkcs12(data):
            raise ConfigurationError(
                "{0} is a PKCS#12 file, not a certificate: pass it with --jwt-key-file instead, or write its "
                "certificate with 'openssl pkcs12 -in {0} -nokeys -clcerts -out cert.crt'".format(path)
            ) from None
        raise ConfigurationError("{} is not an X.509 certificate with an RSA key ({})".format(path, error)) from None


def _looks_like_pkcs12(data: bytes) -> bool:
    """Tell whether DER data starts like a PFX: a SEQUENCE of INTEGER 3 and a SEQUENCE."""
    try:
        items = _der_sequence(data)
    except _DERError:
        return False
    return len(items) >= 2 and items[0] == (_TAG_INTEGER, b"\x03") and items[1][0] == _TAG_SEQUENCE


def _parse_certificate(der: bytes) -> _Certificate:
    """Decode the RSA key and validity of a certificate (RFC 5280 section 4.1)."""
    items = _der_sequence(der)
    if len(items) != 3 or items[0][0] != _TAG_SEQUENCE:
        raise _DERError("not a certificate")
    fields = _der_children(items[0][1], 0, len(items[0][1]))
    if fields and fields[0][0] == _TAG_CONTEXT_0:
        fields = fields[1:]
    if len(fields) < 6 or fields[3][0] != _TAG_SEQUENCE or fields[5][0] != _TAG_SEQUENCE:
        raise _DERError("no validity or SubjectPublicKeyInfo")

    validity = _der_children(fields[3][1], 0, len(fields[3][1]))
    if len(validity) != 2:
        raise _DERError("malformed validity")
    n, e = _rsa_public_numbers_from_key_info(fields[5][1])
    return _Certificate(n, e, _der_time(validity[0]), _der_time(validity[1]), len(der))


def _rsa_public_numbers_from_key_info(content: bytes) -> typing.Tuple[int, int]:
    """Decode the content of an RSA SubjectPublicKeyInfo into (n, e)."""
    parts = _der_children(content, 0, len(content))
    if len(parts) != 2 or parts[0][0] != _TAG_SEQUENCE:
        raise _DERError("malformed SubjectPublicKeyInfo")
    oid = _der_oid(_der_children(parts[0][1], 0, len(parts[0][1]))[0])
    if oid != _OID_RSA_ENCRYPTION:
        raise _DERError("the key is {}, not RSA".format(_OID_NAMES.get(oid, oid)))
    if parts[1][0] != _TAG_BIT_STRING or parts[1][1][:1] != b"\x00":
        raise _DERError("malformed public key BIT STRING")

    numbers = _der_sequence(parts[1][1][1:])
    if len(numbers) != 2:
        raise _DERError("malformed RSAPublicKey")
    return _der_integer(numbers[0]), _der_integer(numbers[1])


def _der_time(element: typing.Tuple[int, bytes]) -> datetime.datetime:
    """Decode a UTCTime or GeneralizedTime of the form X.509 requires (RFC 5280 section 4.1.2.5)."""
    tag, content = element
    formats = {_TAG_UTC_TIME: "%y%m%d%H%M%SZ", _TAG_GENERALIZED_TIME: "%Y%m%d%H%M%SZ"}
    if tag not in formats:
        raise _DERError("expected a UTCTime or GeneralizedTime")
    try:
        when = datetime.datetime.strptime(content.decode("ascii"), formats[tag])
    except (UnicodeDecodeError, ValueError):
        raise _DERError("malformed time") from None
    if tag == _TAG_UTC_TIME and when.year >= 2050:
        when = when.replace(year=when.year - 100)  # UTCTime years 50 to 99 are 1950 to 1999
    return when.replace(tzinfo=datetime.timezone.utc)


# --- Setting up: a key pair and a self-signed certificate ---------------------

_OID_SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
_OID_BASIC_CONSTRAINTS = "2.5.29.19"
_OID_SUBJECT_KEY_IDENTIFIER = "2.5.29.14"
# Attribute types a --subject may name (RFC 5280 appendix A.1).
_NAME_ATTRIBUTES = {
    "CN": "2.5.4.3", "C": "2.5.4.6", "L": "2.5.4.7", "ST": "2.5.4.8", "O": "2.5.4.10", "OU": "2.5.4.11",
}
_KEYGEN_BITS = (2048, 3072, 4096)
_MAX_CERTIFICATE_DAYS = 36500


def generate_key_and_certificate(
    bits: int = 2048, days: int = 730, common_name: str = "sf_jwt", subject: typing.Optional[str] = None
) -> typing.Tuple[bytes, bytes]:
    """Generate an RSA key and a self-signed certificate for a Connected App.

    The certificate is X.509 v3, signed with sha256WithRSAEncryption, valid
    from now for ``days`` days, with a random positive serial number,
    basicConstraints CA:FALSE and a subjectKeyIdentifier. Key generation runs
    in pure Python: a 4096-bit key can take a minute.

    Args:
        bits: The key size: 2048, 3072 or 4096.
        days: How long the certificate is valid, 1 to 36500 days. Salesforce
            keeps accepting a certificate after it expires.
        common_name: The CN of subject and issuer, when ``subject`` is None.
        subject: A distinguished name such as ``CN=my app,O=Acme`` or
            ``/CN=my app/O=Acme``, with CN, O, OU, L, ST and C.

    Returns:
        The private key as PKCS#8 PEM, and the certificate as PEM.

    Raises:
        ConfigurationError: An argument is invalid.
    """
    name = _checked_keygen_arguments(bits, days, common_name, subject)

    _, private = rsa.newkeys(bits)
    key = SigningKey(_checked_rsa_key(private.n, private.e, private.d, private.p, private.q))

    certificate = _self_signed_certificate(key, name, days)
    return _pem("PRIVATE KEY", _pkcs8_der(key.rsa_key)), _pem("CERTIFICATE", certificate)


def _checked_keygen_arguments(bits: int, days: int, common_name: str, subject: typing.Optional[str]) -> bytes:
    """Check the arguments of generate_key_and_certificate and return the encoded subject."""
    if bits not in _KEYGEN_BITS:
        raise ConfigurationError("bits must be 2048, 3072 or 4096, got {!r}".format(bits))
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_CERTIFICATE_DAYS:
        raise ConfigurationError(
            "days (--days) must be a whole number from 1 to {}, got {!r}".format(_MAX_CERTIFICATE_DAYS, days)
        )
    return _encode_name(subject if subject is not None else "CN=" + _checked_text("common_name", common_name))


def _encode_name(subject: str) -> bytes:
    """Encode a distinguished name such as CN=x,O=y or /CN=x/O=y, one attribute per RDN."""
    subject = _checked_text("subject", subject)
    separator = "/" if subject.startswith("/") else ","
    rdns = []
    for part in [part.strip() for part in subject.strip("/").split(separator)]:
        label, _, value = part.partition("=")
        label, value = label.strip().upper(), value.strip()
        if label not in _NAME_ATTRIBUTES or not value:
            raise ConfigurationError("subject (--subject) {!r} is not a list of NAME=value with NAME one of {}".format(
                subject, ", ".join(_NAME_ATTRIBUTES)))
        if label == "C" and not re.match(r"\A[A-Z]{2}\Z", value):
            raise ConfigurationError("subject country C must be two capital letters, got {!r}".format(value))
        tag = _TAG_PRINTABLE_STRING if label == "C" else _TAG_UTF8_STRING
        attribute_type = _der_encode_oid(_NAME_ATTRIBUTES[label])
        attribute = _der_encode(_TAG_SEQUENCE, attribute_type + _der_encode(tag, value.encode("utf-8")))
        rdns.append(_der_encode(_TAG_SET, attribute))
    return _der_encode(_TAG_SEQUENCE, b"".join(rdns))


def _self_signed_certificate(key: SigningKey, name: bytes, days: int) -> bytes:
    """Build and sign an X.509 v3 certificate whose subject and issuer are ``name``."""
    import secrets

    n, e = key.public_numbers
    public_key_info = _der_encode_rsa_public_key_info(n, e)
    rsa_public_key = _der_encode(_TAG_SEQUENCE, _der_encode_integer(n) + _der_encode_integer(e))
    signature_algorithm = _der_encode(
        _TAG_SEQUENCE, _der_encode_oid(_OID_SHA256_WITH_RSA) + _der_encode(_TAG_NULL, b"")
    )

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    validity = _der_encode(_TAG_SEQUENCE, _der_encode_time(now) + _der_encode_time(now + datetime.timedelta(days=days)))
    serial = secrets.randbits(127) | 1  # positive, below 2**127, never zero (RFC 5280 section 4.1.2.2)

    basic_constraints = _der_encode_extension(_OID_BASIC_CONSTRAINTS, True, _der_encode(_TAG_SEQUENCE, b""))
    key_identifier = _der_encode(_TAG_OCTET_STRING, hashlib.sha1(rsa_public_key).digest())
    subject_key_identifier = _der_encode_extension(_OID_SUBJECT_KEY_IDENTIFIER, False, key_identifier)
    extensions = _der_encode(0xA3, _der_encode(_TAG_SEQUENCE, basic_constraints + subject_key_identifier))

    tbs_certificate = _der_encode(_TAG_SEQUENCE, b"".join([
        _der_encode(_TAG_CONTEXT_0, _der_encode_integer(2)),  # version 3
        _der_encode_integer(serial),
        signature_algorithm,
        name,
        validity,
        name,
        public_key_info,
        extensions,
    ]))
    signature = sign_rs256(tbs_certificate, key)
    return _der_encode(
        _TAG_SEQUENCE, tbs_certificate + signature_algorithm + _der_encode(_TAG_BIT_STRING, b"\x00" + signature)
    )


def _der_encode_oid(dotted: str) -> bytes:
    """Encode an OBJECT IDENTIFIER from its dotted form."""
    arcs = [int(arc) for arc in dotted.split(".")]
    content = bytearray()
    for arc in [40 * arcs[0] + arcs[1]] + arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        content.extend(reversed(chunk))
    return _der_encode(_TAG_OID, bytes(content))


def _der_encode_time(when: datetime.datetime) -> bytes:
    """Encode UTCTime up to 2049 and GeneralizedTime after, as RFC 5280 section 4.1.2.5 requires."""
    if when.year < 2050:
        return _der_encode(_TAG_UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _der_encode(_TAG_GENERALIZED_TIME, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _der_encode_extension(oid: str, critical: bool, value: bytes) -> bytes:
    flag = _der_encode(0x01, b"\xff") if critical else b""  # BOOLEAN TRUE; FALSE is left out in DER
    return _der_encode(_TAG_SEQUENCE, _der_encode_oid(oid) + flag + _der_encode(_TAG_OCTET_STRING, value))


def _pkcs8_der(key: rsa.PrivateKey) -> bytes:
    """Encode a PKCS#8 PrivateKeyInfo holding a PKCS#1 RSAPrivateKey."""
    numbers = [0, key.n, key.e, key.d, key.p, key.q, key.exp1, key.exp2, key.coef]
    rsa_private_key = _der_encode(_TAG_SEQUENCE, b"".join(_der_encode_integer(number) for number in numbers))
    algorithm = _der_encode(_TAG_SEQUENCE, _der_encode_oid(_OID_RSA_ENCRYPTION) + _der_encode(_TAG_NULL, b""))
    return _der_encode(
        _TAG_SEQUENCE, _der_encode_integer(0) + algorithm + _der_encode(_TAG_OCTET_STRING, rsa_private_key)
    )


def _pem(label: str, der: bytes) -> bytes:
    """Wrap DER in PEM armour with 64-character lines (RFC 7468)."""
    body = base64.b64encode(der).decode("ascii")
    lines = [body[start:start + 64] for start in range(0, len(body), 64)]
    return "-----BEGIN {0}-----\n{1}\n-----END {0}-----\n".format(label, "\n".join(lines)).encode("ascii")


# --- Diagnosing a setup: check -------------------------------------------------

CheckResult = typing.NamedTuple("CheckResult", [("name", str), ("status", str), ("message", str)])
CheckResult.__doc__ = """One result of check_setup.

``status`` is PASS, WARN or FAIL, and ``message`` says what was found and the fix.
"""

# Clock skew limits: exp is only 180 s ahead, so a clock 120 s off leaves little margin.
_SKEW_WARN_SECONDS = 30
_SKEW_FAIL_SECONDS = 120
_CERTIFICATE_WARN_DAYS = 30
_MAX_CERTIFICATE_BYTES = 4096  # Salesforce's limit for an uploaded certificate


def check_setup(
    client_id: str,
    username: str,
    private_key: typing.Any,
    login_url: str = _PRODUCTION_LOGIN_URL,
    audience: typing.Optional[str] = None,
    cert_file: typing.Optional[str] = None,
    ca_file: typing.Optional[str] = None,
    timeout: float = _DEFAULT_TIMEOUT,
    offline: bool = False,
    key_password: _KeyPassword = None,
) -> typing.List[CheckResult]:
    """Check a JWT bearer setup step by step and name the fix for each failure.

    Checks the key (decrypted with ``key_password`` if it is encrypted), its
    container and any certificate stored with it, the certificate uploaded to the Connected App (if
    ``cert_file`` is given), the claims and whether login URL, username and
    audience agree. Unless ``offline``: TLS to the login host with the CA store
    in use, the proxy in effect, the clock against the login host's ``Date``,
    a real token request, and the identity URL with the new token.

    Returns:
        The results, in order. Nothing is raised for a failed check.
    """
    results = []  # type: typing.List[CheckResult]
    key = _check_key(private_key, key_password, results)
    if cert_file is not None:
        _check_certificate(cert_file, key, results)
    else:
        results.append(CheckResult("certificate", "WARN", "not checked: pass --cert with the certificate uploaded "
                                   "to the Connected App to check that it matches the key"))

    try:
        login_url = _normalized_login_url(login_url)
    except ConfigurationError as error:
        results.append(CheckResult("login URL", "FAIL", str(error)))
        return results
    try:
        claims = build_claims(client_id, username, audience if audience is not None else _default_audience(login_url))
    except ConfigurationError as error:
        results.append(CheckResult("claims", "FAIL", str(error)))
        return results
    results.append(CheckResult("claims", "PASS", "iss={iss}, sub={sub}, aud={aud}, exp=now+180".format(**claims)))
    results.append(_check_plausibility(login_url, claims["aud"], claims["sub"], audience))

    if not offline and key is not None:
        _check_online(login_url, claims, key, ca_file, timeout, results)
    return results


def _check_key(
    private_key: typing.Any, password: _KeyPassword, results: typing.List[CheckResult]
) -> typing.Optional[SigningKey]:
    container = ""
    certificates = []  # type: typing.List[bytes]
    try:
        if isinstance(private_key, (SigningKey, rsa.PrivateKey)):
            key = load_private_key(private_key)
        else:
            _check_password_type(password)
            data, origin = _read_key_source(private_key)
            key = _key_from_bytes(data, origin, False, password)  # check reports the file mode itself
            container, certificates = _describe_key_container(data, password, origin)
            container += ", "
    except InvalidKeyError as error:
        results.append(CheckResult("key", "FAIL", str(error)))
        return None
    size = "WARN" if key.bits < 2048 else "PASS"
    advice = ": make a 2048-bit key with 'sf-jwt keygen'" if key.bits < 2048 else ""
    results.append(CheckResult("key", size, "RSA {} bits, {}{}{}".format(key.bits, container, key.fingerprint, advice)))
    if certificates:
        results.append(_check_certificates_in_key_file(certificates, key))

    if isinstance(private_key, (str, os.PathLike)) and os.path.isfile(os.fspath(private_key)):
        path = os.fspath(private_key)
        mode = _shared_mode(path)
        if mode is not None:
            results.append(CheckResult("key file mode", "WARN", "{} is accessible to other users (mode {:03o}): "
                                       "restrict it with 'chmod 600 {}'".format(path, mode, path)))
        elif os.name == "posix":
            results.append(CheckResult("key file mode", "PASS", "only the owner can read {}".format(path)))
    return key


def _describe_key_container(
    data: bytes, password: _KeyPassword, origin: _KeyOrigin
) -> typing.Tuple[str, typing.List[bytes]]:
    """Name the container of key data that loaded, and return the DER of the certificates stored in it."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data[:1] == b"\x30":
        return _describe_der_container(data, password, origin)

    text = _decode_text(data) or ""
    if "-----BEGIN" not in text:
        decoded = base64.b64decode("".join(text.split()))
        container, certificates = _describe_key_container(decoded, password, origin)
        return container + " in base64", certificates

    blocks = _pem_blocks(text, origin)
    certificates = [_pem_block_der(block, origin) for block in blocks if block.label == "CERTIFICATE"]
    key_block = [block for block in blocks if block.label.endswith("PRIVATE KEY")][0]
    if key_block.label == "ENCRYPTED PRIVATE KEY":
        return "encrypted PKCS#8 PEM", certificates
    kind = "PKCS#1" if key_block.label == "RSA PRIVATE KEY" else "PKCS#8"
    if "ENCRYPTED" in key_block.headers.get("Proc-Type", ""):
        cipher = key_block.headers.get("DEK-Info", "").partition(",")[0].strip()
        return "{} PEM encrypted by OpenSSL with {}".format(kind, cipher), certificates
    return kind + " PEM", certificates


def _describe_der_container(
    data: bytes, password: _KeyPassword, origin: _KeyOrigin
) -> typing.Tuple[str, typing.List[bytes]]:
    tags = [tag for tag, _ in _der_sequence(data)][:3]
    if tags == [_TAG_INTEGER] * 3:
        return "PKCS#1 DER", []
    if tags == [_TAG_INTEGER, _TAG_SEQUENCE, _TAG_OCTET_STRING]:
        return "PKCS#8 DER", []
    if tags[:2] == [_TAG_SEQUENCE, _TAG_OCTET_STRING]:
        return "encrypted PKCS#8 DER", []

    contents = _keys_from_pkcs12(data, password, origin)
    if contents.skipped_parts and not contents.certificates:
        return "PKCS#12 whose certificates sf_jwt cannot read (they are encrypted with RC2)", []
    if not contents.certificates:
        return "PKCS#12 with no certificate", []
    return "PKCS#12", contents.certificates


def _check_certificates_in_key_file(certificate_ders: typing.List[bytes], key: SigningKey) -> CheckResult:
    """Compare the certificates stored with the key (in a PEM or PKCS#12 file) with the key."""
    certificates = _rsa_certificates(certificate_ders)
    matching = [certificate for certificate in certificates if (certificate.n, certificate.e) == key.public_numbers]
    if not matching:
        return CheckResult(
            "key file cert", "WARN", "the key file contains {} certificate(s), and none of them is for this key: "
            "upload the certificate made with this key to the Connected App, not these".format(len(certificate_ders))
        )

    until = matching[0].not_after.date().isoformat()
    if matching[0].not_after < datetime.datetime.now(datetime.timezone.utc):
        return CheckResult("key file cert", "WARN", "the key file contains the certificate of this key, which "
                           "expired on {}".format(until))
    return CheckResult("key file cert", "PASS", "the key file contains the certificate of this key, valid until "
                       "{}".format(until))


def _check_certificate(cert_file: str, key: typing.Optional[SigningKey], results: typing.List[CheckResult]) -> None:
    try:
        certificate = _load_certificate(cert_file)
    except ConfigurationError as error:
        results.append(CheckResult("certificate", "FAIL", str(error)))
        return
    if key is not None and (certificate.n, certificate.e) != key.public_numbers:
        results.append(CheckResult("certificate", "FAIL", "{} belongs to another key: upload the certificate made "
                                   "with this key, or use the key that belongs to it".format(cert_file)))
        return

    now = datetime.datetime.now(datetime.timezone.utc)
    until = certificate.not_after.date().isoformat()
    if certificate.size > _MAX_CERTIFICATE_BYTES:
        status, message = "WARN", "{} is {} bytes; Salesforce accepts at most 4 KB".format(cert_file, certificate.size)
    elif certificate.not_after < now:
        status, message = "WARN", "{} expired on {}: Salesforce still accepts it, but replace it before someone " \
            "else notices".format(cert_file, until)
    elif certificate.not_after - now < datetime.timedelta(days=_CERTIFICATE_WARN_DAYS):
        status, message = "WARN", "{} expires on {}: plan its replacement".format(cert_file, until)
    else:
        status, message = "PASS", "{} matches the key and is valid until {}".format(cert_file, until)
        if key is None:
            message = "{} is valid until {}, but it was not compared with the key, which did not load".format(
                cert_file, until)
    results.append(CheckResult("certificate", status, message))


def _check_plausibility(
    login_url: str, audience: str, username: str, audience_given: typing.Optional[str]
) -> CheckResult:
    """Warn when login URL, username and audience point at different kinds of org."""
    from urllib.parse import urlsplit

    host = urlsplit(login_url).hostname or ""
    sandbox_host = host == "test.salesforce.com" or _is_sandbox_host(host)
    sandbox_user = _looks_like_sandbox_username(username)

    if audience_given is not None and (urlsplit(audience_given.strip()).path not in ("",)):
        return CheckResult("org kind", "WARN", "the audience {} has a path or a trailing slash: Salesforce expects "
                           "an origin such as https://login.salesforce.com".format(audience_given.strip()))
    if (sandbox_host or sandbox_user) and audience == _PRODUCTION_LOGIN_URL:
        clue = "login URL {}".format(login_url) if sandbox_host else "username {}".format(username)
        return CheckResult("org kind", "WARN", "the {} looks like a sandbox, but the audience is production: use "
                           "--sandbox or --audience https://test.salesforce.com".format(clue))
    if audience == _SANDBOX_LOGIN_URL and not sandbox_host and not sandbox_user:
        return CheckResult("org kind", "WARN", "the audience is https://test.salesforce.com (sandboxes), but login "
                           "URL and username look like production: drop --sandbox or the audience")
    kind = "sandbox" if audience == _SANDBOX_LOGIN_URL else "production or My Domain"
    return CheckResult("org kind", "PASS", "login URL, username and audience agree ({})".format(kind))


def _looks_like_sandbox_username(username: str) -> bool:
    """Tell whether a username ends in a sandbox suffix, as in user@example.com.dev."""
    labels = username.rpartition("@")[2].lower().split(".")
    return len(labels) >= 3 and labels[-2] in ("com", "org", "net", "edu", "gov", "io", "co", "biz", "info")


def _check_online(
    login_url: str, claims: typing.Dict[str, typing.Any], key: SigningKey, ca_file: typing.Optional[str],
    timeout: float, results: typing.List[CheckResult],
) -> None:
    """Check proxy, TLS, clock, a real token request and the identity URL."""
    try:
        context = _ssl_context(ca_file)
        timeout = _checked_timeout(timeout)
    except ConfigurationError as error:
        results.append(CheckResult("TLS", "FAIL", str(error)))
        return
    results.append(_check_proxy(login_url))

    try:
        status, headers, _ = _http_request("HEAD", login_url + "/", None, {}, timeout, context, ca_file=ca_file)
    except TransportError as error:
        results.append(CheckResult("TLS", "FAIL", str(error)))
        return
    results.append(CheckResult("TLS", "PASS", "{} responded with HTTP {} over verified TLS, trusting {}".format(
        _host_of(login_url), status, _describe_ca_store(ca_file))))
    results.append(_check_clock(headers.get("Date"), login_url))

    try:
        assertion = create_assertion(claims["iss"], claims["sub"], key, audience=claims["aud"])
        token = request_token(assertion, login_url + _TOKEN_PATH, timeout=timeout, ca_file=ca_file, ssl_context=context)
    except (AuthenticationError, TransportError) as error:
        results.append(CheckResult("token request", "FAIL", str(error)))
        return
    results.append(CheckResult("token request", "PASS", "Salesforce issued a token for {}".format(token.instance_url)))
    results.append(_check_identity(token, timeout, context))


def _check_proxy(login_url: str) -> CheckResult:
    import urllib.request
    from urllib.parse import urlsplit

    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(urlsplit(login_url).hostname or ""):
        return CheckResult("proxy", "PASS", "no proxy for {}".format(_host_of(login_url)))
    parts = _split_url(proxy if "://" in proxy else "http://" + proxy)
    try:
        shown = "{}://{}{}".format(parts.scheme, parts.hostname, ":{}".format(parts.port) if parts.port else "")
    except (AttributeError, ValueError):
        return CheckResult("proxy", "WARN", "the proxy setting in the environment is not a valid URL")
    return CheckResult("proxy", "PASS", "requests to {} go through {} (from the environment, such as "
                       "HTTPS_PROXY)".format(_host_of(login_url), shown))


def _describe_ca_store(ca_file: typing.Optional[str]) -> str:
    import ssl

    if ca_file is not None:
        return "the CA file {}".format(ca_file)
    if os.environ.get("SSL_CERT_FILE"):
        return "the CA file {} (from SSL_CERT_FILE)".format(os.environ["SSL_CERT_FILE"])
    paths = ssl.get_default_verify_paths()
    return "the system CA store ({})".format(paths.cafile or paths.capath or "the platform's default")


def _check_clock(date_header: typing.Optional[str], login_url: str) -> CheckResult:
    import email.utils

    try:
        server_time = email.utils.parsedate_to_datetime(date_header or "")
    except (TypeError, ValueError, IndexError):
        server_time = None
    if server_time is None or server_time.tzinfo is None:
        return CheckResult("clock", "WARN", "{} sent no usable Date header, so the clock was not "
                           "compared".format(_host_of(login_url)))

    skew = int(round(time.time() - server_time.timestamp()))
    message = "this host's clock is {:+d} s off {}".format(skew, _host_of(login_url))
    if abs(skew) > _SKEW_FAIL_SECONDS:
        return CheckResult("clock", "FAIL", message + ": the assertion expires 180 s after it is made, so "
                           "synchronise the clock (NTP)")
    if abs(skew) > _SKEW_WARN_SECONDS:
        return CheckResult("clock", "WARN", message + ": synchronise the clock (NTP) before it grows")
    return CheckResult("clock", "PASS", message)


def _check_identity(token: Token, timeout: float, context: typing.Any) -> CheckResult:
    """Call the identity URL with the new token, which proves the token works."""
    if not token.id:
        return CheckResult("identity", "WARN", "the token response has no identity URL (id) to try the token on")
    headers = {"Authorization": "Bearer " + token.access_token, "Accept": "application/json"}
    try:
        status, _, body = _http_request("GET", token.id, None, headers, timeout, context)
    except TransportError as error:
        return CheckResult("identity", "FAIL", str(error))
    identity = _json_object(body) or {}
    if status in (401, 403):
        return CheckResult("identity", "FAIL", "the identity URL responded with HTTP {} to the new token: check the "
                           "Connected App's OAuth scopes (api, and refresh_token, offline_access)".format(status))
    if status != 200:
        return CheckResult("identity", "FAIL", "the identity URL {} responded with HTTP {} to the new token".format(
            _clean_server_text(token.id)[:200], status))
    organization = _clean_server_text(identity.get("organization_id")) or "?"
    user = _clean_server_text(identity.get("username")) or "?"
    return CheckResult("identity", "PASS", "the token works: organization {}, user {}".format(organization, user))


# --- Command line -----------------------------------------------------------

_EXIT_OK = 0
_EXIT_REJECTED = 1  # Salesforce rejected the login, decode found a bad signature, or a check failed
_EXIT_USAGE = 2  # a missing option or bad input, such as an unusable key file
_EXIT_TRANSPORT = 3  # network, TLS or server failure
_EXIT_INTERNAL = 70  # a bug in sf_jwt (EX_SOFTWARE of sysexits.h)


def _build_parser() -> typing.Any:
    import argparse

    # Without abbreviations, a mistyped option such as --jwt-key-password cannot
    # pass its value, perhaps a password, to --jwt-key-password-file. NOTE:
    # Python 3.6 and 3.7 keep abbreviations, because there allow_abbrev=False
    # also breaks short options with an attached value, such as -fserver.key.
    no_abbreviations = {"allow_abbrev": False} if sys.version_info >= (3, 8) else {}  # type: typing.Dict[str, typing.Any]
    parser = argparse.ArgumentParser(
        prog="sf-jwt",
        description="Log in to Salesforce with the OAuth 2.0 JWT bearer flow.",
        epilog="Exit codes: 0 success, 1 rejected by Salesforce (or a signature that does not verify, or a "
        "failed check), "
        "2 bad usage or input, 3 network, TLS or server failure, 70 a bug in sf-jwt.",
        **no_abbreviations
    )
    parser.add_argument("--version", action="version", version=_version_text())
    verbose = {"action": "store_true", "help": "log each step to stderr (never secrets)"}  # type: typing.Dict[str, typing.Any]
    parser.add_argument("-v", "--verbose", **verbose)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True  # Python 3.6 has no required= argument for add_subparsers

    token = commands.add_parser("token", help="log in and print the access token", **no_abbreviations)
    _add_login_arguments(token)
    token.add_argument("--ca-file", metavar="FILE",
                       help="PEM bundle of CA certificates to trust instead of the system store")
    token.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="seconds to wait to connect and for each read (default: %(default)s)")
    token.add_argument("--cache", metavar="FILE",
                       help="share tokens through this file (mode 0600) between processes of this host, "
                       "reusing each for up to 900 s")
    token.add_argument("--format", choices=("json", "env", "token"), default="json",
                       help="json: the token fields; env: shell-quoted SF_ACCESS_TOKEN and SF_INSTANCE_URL "
                       "lines; token: the bare access token (default: json)")
    token.set_defaults(run=_run_token)

    assertion = commands.add_parser("assertion", help="print a signed assertion (no network)", **no_abbreviations)
    _add_login_arguments(assertion)
    assertion.set_defaults(run=_run_assertion)

    decode = commands.add_parser("decode", help="print the header and claims of a JWT and check its signature",
                                 **no_abbreviations)
    decode.add_argument("jwt", metavar="JWT", help="the JWT, or - to read it from stdin")
    verify_with = decode.add_mutually_exclusive_group()
    verify_with.add_argument("--cert", metavar="FILE", help="verify the signature with this X.509 certificate")
    verify_with.add_argument("--jwt-key-file", "-f", metavar="FILE", help="verify the signature with this private key")
    _add_password_argument(decode)
    decode.set_defaults(run=_run_decode)

    keygen = commands.add_parser("keygen", help="make a private key and a certificate for a Connected App",
                                 **no_abbreviations)
    keygen.add_argument("--out", required=True, metavar="NAME", help="write NAME.key and NAME.crt")
    keygen.add_argument("--bits", type=int, choices=_KEYGEN_BITS, default=2048, help="key size (default: 2048)")
    keygen.add_argument("--days", type=int, default=730, help="days the certificate is valid (default: 730)")
    keygen.add_argument("--subject", metavar="DN", help='certificate subject, such as "CN=my app,O=Acme" '
                        '(default: CN=NAME)')
    keygen.add_argument("--force", action="store_true", help="overwrite NAME.key and NAME.crt if they exist")
    keygen.set_defaults(run=_run_keygen)

    check = commands.add_parser("check", help="check the setup step by step and say what to fix", **no_abbreviations)
    _add_login_arguments(check)
    check.add_argument("--cert", metavar="FILE", help="the certificate uploaded to the Connected App")
    check.add_argument("--ca-file", metavar="FILE",
                       help="PEM bundle of CA certificates to trust instead of the system store")
    check.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="seconds to wait to connect and for each read (default: %(default)s)")
    check.add_argument("--offline", action="store_true", help="skip the checks that use the network")
    check.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    check.set_defaults(run=_run_check)

    for subparser in (token, assertion, decode, keygen, check):
        subparser.add_argument("-v", "--verbose", default=argparse.SUPPRESS, **verbose)
    return parser


def _add_login_arguments(parser: typing.Any) -> None:
    parser.add_argument("--client-id", "-i", metavar="KEY", help="Connected App consumer key [SF_CLIENT_ID]")
    parser.add_argument("--username", "-o", metavar="USER", help="Salesforce username [SF_USERNAME]")
    parser.add_argument("--jwt-key-file", "-f", metavar="FILE",
                        help="private key file: PEM, DER or PKCS#12, encrypted or not [SF_JWT_KEY_FILE, or the key "
                        "itself in SF_JWT_KEY]")
    _add_password_argument(parser)
    parser.add_argument("--login-url", "--instance-url", "-r", metavar="URL",
                        help="login host or My Domain URL [SF_LOGIN_URL] (default: https://login.salesforce.com)")
    parser.add_argument("--sandbox", action="store_true", help="log in to a sandbox: https://test.salesforce.com")
    parser.add_argument("--audience", metavar="URL",
                        help="aud claim, when it differs from what the login URL implies [SF_AUDIENCE_URL]")


def _add_password_argument(parser: typing.Any) -> None:
    parser.add_argument("--jwt-key-password-file", metavar="FILE",
                        help="file whose first line is the password of an encrypted key or PKCS#12 file "
                        "[SF_JWT_KEY_PASSWORD contains the password itself]; without either, sf-jwt prompts for the "
                        "password when stdin is a terminal")


def _version_text() -> str:
    return "sf-jwt {} (rsa {}, Python {})".format(__version__, rsa.__version__, sys.version.split()[0])


def _login_settings(
    args: typing.Any, environ: typing.Mapping[str, str], for_check: bool = False
) -> typing.Dict[str, typing.Any]:
    """Combine options and environment variables; options win.

    The key is loaded here, asking for its password in a terminal if needed.
    With for_check, the key source and its password are passed on instead,
    and a bad login URL is kept, for check to report.
    """
    def setting(option: typing.Optional[str], variable: str) -> typing.Optional[str]:
        return option if option else (environ.get(variable) or None)

    if args.sandbox and args.login_url:
        raise ConfigurationError("pass either --sandbox or --login-url, not both")
    login_url = _SANDBOX_LOGIN_URL if args.sandbox else setting(args.login_url, "SF_LOGIN_URL")

    settings = {
        "client_id": setting(args.client_id, "SF_CLIENT_ID"),
        "username": setting(args.username, "SF_USERNAME"),
        "private_key": setting(args.jwt_key_file, "SF_JWT_KEY_FILE"),
        "login_url": login_url or _PRODUCTION_LOGIN_URL,
        "audience": setting(args.audience, "SF_AUDIENCE_URL"),
    }  # type: typing.Dict[str, typing.Any]
    missing = [
        description
        for name, description in (
            ("client_id", "--client-id or SF_CLIENT_ID (the Connected App's consumer key)"),
            ("username", "--username or SF_USERNAME (the Salesforce username)"),
            ("private_key", "--jwt-key-file, SF_JWT_KEY_FILE or SF_JWT_KEY (the private key)"),
        )
        if not settings[name] and (name != "private_key" or "SF_JWT_KEY" not in environ)
    ]
    if missing:
        raise ConfigurationError("missing: " + "; ".join(missing))

    _load_key_setting(settings, args, environ, for_check)
    if not for_check:
        settings["login_url"] = _normalized_login_url(settings["login_url"])
    return settings


def _load_key_setting(
    settings: typing.Dict[str, typing.Any], args: typing.Any, environ: typing.Mapping[str, str], for_check: bool
) -> None:
    """Replace the key file path, or the key text of SF_JWT_KEY when no path is set, with the loaded key.

    For check, the path or key text stays, for check to report on, and its
    password is added as key_password.
    """
    password, password_source = _key_password(args, environ)
    source = settings["private_key"]
    if source is None:
        source = _key_text_from_environment(environ["SF_JWT_KEY"])

    if for_check:
        settings["private_key"] = source
        settings["key_password"], settings["key_password_source"] = _password_for_check(
            source, password, password_source
        )
    else:
        settings["private_key"] = _load_with_prompt(
            lambda entered: load_private_key(source, entered), password, password_source
        )


def _key_password(args: typing.Any, environ: typing.Mapping[str, str]) -> typing.Tuple[_KeyPassword, str]:
    """Return the key password from --jwt-key-password-file or SF_JWT_KEY_PASSWORD, or None, and its source."""
    path = getattr(args, "jwt_key_password_file", None)
    if path:
        return _read_password_file(path), "the password file {}".format(path)
    if "SF_JWT_KEY_PASSWORD" in environ:
        _logger.debug("using the key password from SF_JWT_KEY_PASSWORD")
        return environ["SF_JWT_KEY_PASSWORD"], "SF_JWT_KEY_PASSWORD"
    return None, ""


def _read_password_file(path: str) -> bytes:
    """Return the first line of a password file, without its line end, as openssl's -passin file: does.

    A UTF-8 byte order mark is skipped. UTF-16 with a byte order mark, which
    Windows PowerShell 5 writes, is converted to UTF-8.
    """
    data = _read_small_file(path, "password file", ConfigurationError)
    _warn_if_shared(path, "password file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            data = data.decode("utf-16").encode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ConfigurationError(
                "the password file {} starts like UTF-16 but is not valid UTF-16: save it as UTF-8".format(path)
            ) from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]

    line = data.split(b"\n", 1)[0]
    _logger.debug("using the key password from %s", path)
    return line[:-1] if line.endswith(b"\r") else line


def _load_with_prompt(
    load: typing.Callable[[_KeyPassword], SigningKey], password: _KeyPassword, source: str
) -> SigningKey:
    """Load a key; if it is encrypted, no password was given and stdin is a terminal, ask for the password."""
    try:
        try:
            return load(password)
        except _MissingPasswordError as error:
            if not _can_prompt():
                raise
            source = "the terminal prompt"
            return load(_prompt_password(error))
    except _WrongPasswordError as error:
        raise InvalidKeyError(_with_password_source(str(error), source)) from None


def _with_password_source(message: str, source: str) -> str:
    return "{}. The password was read from {}".format(message, source) if source else message


def _password_for_check(source: str, password: _KeyPassword, password_source: str) -> typing.Tuple[_KeyPassword, str]:
    """Ask for the password of an encrypted key file in a terminal, so that check can decrypt it."""
    if password is not None or not _can_prompt():
        return password, password_source
    try:
        load_private_key(source)
    except _MissingPasswordError as error:
        return _prompt_password(error), "the terminal prompt"
    except InvalidKeyError:
        pass  # check reports it
    return None, ""


def _can_prompt() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _prompt_password(error: _MissingPasswordError) -> str:
    import getpass

    try:
        return getpass.getpass("Password for {}: ".format(error.description))
    except EOFError:  # Ctrl-D at the prompt, which getpass leaves without a line end
        print(file=sys.stderr)
        raise error from None


def _key_text_from_environment(value: str) -> _EnvironmentKeyText:
    """Check the value of SF_JWT_KEY and mark it, so that messages about the key name the variable."""
    if not value.strip():
        raise InvalidKeyError("SF_JWT_KEY is set but empty: check that the CI secret or variable with the key exists")
    if not _looks_like_key_text(value) and os.path.isfile(value.strip()):
        raise InvalidKeyError(
            "SF_JWT_KEY contains the path {}: set SF_JWT_KEY_FILE to a path, and SF_JWT_KEY only to the key "
            "itself".format(value.strip())
        )
    _logger.debug("using the private key from SF_JWT_KEY")
    return _EnvironmentKeyText(value)


def _run_token(args: typing.Any) -> int:
    import json
    import shlex

    settings = _login_settings(args, os.environ)
    if args.cache:
        token = TokenProvider(timeout=args.timeout, ca_file=args.ca_file, cache_file=args.cache, **settings).get()
    else:
        token = get_token(timeout=args.timeout, ca_file=args.ca_file, **settings)

    if args.format == "token":
        print(token.access_token)
    elif args.format == "env":
        print("SF_ACCESS_TOKEN={}".format(shlex.quote(token.access_token)))
        print("SF_INSTANCE_URL={}".format(shlex.quote(token.instance_url)))
    else:
        fields = {name: getattr(token, name) for name in ("access_token", "instance_url", "id", "token_type", "scope")}
        fields["issued_at"] = token.issued_at.isoformat() if token.issued_at else None
        print(json.dumps(fields, indent=2))
    return _EXIT_OK


def _run_assertion(args: typing.Any) -> int:
    settings = _login_settings(args, os.environ)
    audience = settings["audience"] or _default_audience(settings["login_url"])
    print(create_assertion(settings["client_id"], settings["username"], settings["private_key"], audience=audience))
    return _EXIT_OK


def _run_decode(args: typing.Any) -> int:
    import json

    if args.jwt == "-":
        jwt = sys.stdin.buffer.read(_MAX_KEY_FILE_BYTES).decode("utf-8", "replace")
    else:
        jwt = args.jwt
    header, claims, signing_input, signature = _decode_jwt(jwt)

    result = {"header": header, "claims": claims}  # type: typing.Dict[str, typing.Any]
    exp = claims.get("exp")
    if isinstance(exp, int) and not isinstance(exp, bool) and 0 <= exp < 2 ** 37:
        expires_at = datetime.datetime.fromtimestamp(exp, tz=datetime.timezone.utc)
        result["expires_at"] = expires_at.isoformat()
        result["seconds_left"] = exp - int(time.time())

    numbers = None
    if args.cert:
        certificate = _load_certificate(args.cert)
        numbers = certificate.n, certificate.e
    elif args.jwt_key_file:
        path = args.jwt_key_file
        password, password_source = _key_password(args, os.environ)
        numbers = _load_with_prompt(
            lambda entered: load_private_key(path, entered), password, password_source
        ).public_numbers
    valid = numbers is not None and header.get("alg") == "RS256" and _verify_rs256(signing_input, signature, *numbers)
    if numbers is None:
        result["signature"] = "not checked"
    else:
        result["signature"] = "valid" if valid else "invalid"
    print(json.dumps(result, indent=2))

    if numbers is not None and not valid:
        _print_error(
            "the signature does not verify with {}: the JWT was signed with another key or altered "
            "(Salesforce would answer invalid_grant: invalid assertion)".format(args.cert or args.jwt_key_file)
        )
        return _EXIT_REJECTED
    return _EXIT_OK


def _run_keygen(args: typing.Any) -> int:
    paths = [args.out + ".key", args.out + ".crt"]
    existing = [path for path in paths if os.path.exists(path)]
    if existing and not args.force:
        raise ConfigurationError("{} already {}: pass --force to overwrite, or choose another --out".format(
            " and ".join(existing), "exists" if len(existing) == 1 else "exist"))
    subject = args.subject if args.subject is not None else "CN=" + os.path.basename(args.out)
    _checked_keygen_arguments(args.bits, args.days, "", subject)
    directory = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(directory):
        raise ConfigurationError("the folder {} for --out does not exist: create it or choose another --out".format(
            directory))

    key_pem, certificate_pem = _with_progress(
        "generating a {}-bit RSA key in pure Python (this can take a minute)".format(args.bits),
        lambda: generate_key_and_certificate(args.bits, args.days, subject=subject),
    )
    _write_new_file(paths[0], key_pem, 0o600, args.force)
    _write_new_file(paths[1], certificate_pem, 0o644, args.force)

    print("wrote {} (the private key: keep it secret, on the server that logs in)".format(paths[0]))
    print("wrote {} (the certificate, valid for {} days)".format(paths[1], args.days))
    print("next: in Setup, open the Connected App, tick 'Use digital signatures' and upload {}; then run".format(
        paths[1]))
    print("  {} check --client-id CONSUMER_KEY --username USERNAME --jwt-key-file {} --cert {}".format(
        _command_name(), *paths))
    return _EXIT_OK


def _command_name() -> str:
    """Return how the user started this program: sf-jwt, python -m sf_jwt or python sf_jwt.py."""
    main_module = sys.modules.get("__main__")
    if getattr(getattr(main_module, "__spec__", None), "name", None) == "sf_jwt":
        return "python -m sf_jwt"
    if sys.argv and sys.argv[0].endswith(".py"):
        return "python " + sys.argv[0]
    return "sf-jwt"


def _with_progress(message: str, work: typing.Callable[[], typing.Any]) -> typing.Any:
    """Run work while printing a dot a second on stderr."""
    import threading

    finished = threading.Event()

    def show_dots() -> None:
        while not finished.wait(1.0):
            print(".", end="", file=sys.stderr, flush=True)

    print(message, end="", file=sys.stderr, flush=True)
    started = time.monotonic()
    dots = threading.Thread(target=show_dots, daemon=True)
    dots.start()
    try:
        return work()
    finally:
        finished.set()
        dots.join()
        print(" done in {:.1f} s".format(time.monotonic() - started), file=sys.stderr)


def _write_new_file(path: str, data: bytes, mode: int, replace: bool) -> None:
    """Write a file created with ``mode``; replace an existing one only if ``replace``."""
    import tempfile

    try:
        if replace:
            handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
            os.chmod(temporary, mode)
        else:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
        with os.fdopen(handle, "wb") as output:
            output.write(data)
        if replace:
            os.replace(temporary, path)
    except FileExistsError:
        raise ConfigurationError("{} already exists: pass --force to overwrite it".format(path)) from None
    except OSError as error:
        raise ConfigurationError("cannot write {}: {}".format(path, error.strerror or error)) from None


def _run_check(args: typing.Any) -> int:
    import json

    settings = _login_settings(args, os.environ, for_check=True)
    password_source = settings.pop("key_password_source")
    results = check_setup(cert_file=args.cert, ca_file=args.ca_file, timeout=args.timeout, offline=args.offline,
                          **settings)
    results = [
        result._replace(message=_with_password_source(result.message, password_source))
        if result.name == "key" and result.message.endswith(_WRONG_PASSWORD_TEXT) else result
        for result in results
    ]

    if args.format == "json":
        print(json.dumps([result._asdict() for result in results], indent=2))
    else:
        for result in results:
            print("{:<5} {:<14} {}".format(result.status, result.name, result.message))
    return _EXIT_REJECTED if any(result.status == "FAIL" for result in results) else _EXIT_OK


def _describe_unknown_arguments(unknown: typing.List[str]) -> str:
    """Name the unknown options, but not the values after them, which may be a password given by mistake."""
    options = [argument.split("=", 1)[0] for argument in unknown if argument.startswith("-")]
    attached_values = sum(1 for argument in unknown if argument.startswith("-") and "=" in argument)
    values = len(unknown) - len(options) + attached_values
    described = " ".join(options)
    if values:
        described += "{}{} value{} (not shown)".format(" and " if options else "", values, "" if values == 1 else "s")
    return described


def _print_error(message: typing.Any) -> None:
    print("sf-jwt: error: {}".format(message), file=sys.stderr)


def main(argv: typing.Optional[typing.List[str]] = None) -> int:
    """Run the sf-jwt command line and return its exit code."""
    import logging

    parser = _build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error("unrecognized arguments: {}".format(_describe_unknown_arguments(unknown)))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="sf-jwt: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.run(args)
    except AuthenticationError as error:
        _print_error(error)
        return _EXIT_REJECTED
    except TransportError as error:
        _print_error(error)
        return _EXIT_TRANSPORT
    except SalesforceJWTError as error:
        _print_error(error)
        return _EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away, as with "| head": point stdout at devnull so
        # that Python's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _EXIT_OK
    except Exception as error:  # a bug: say so in one line instead of a traceback
        _logger.debug("internal error", exc_info=True)
        _print_error("internal error ({}); please report it, with the output of -v".format(type(error).__name__))
        return _EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
