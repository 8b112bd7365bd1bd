"""Benchmark sf_jwt against rsa, cryptography and PyJWT, and check its token caching.

Run it from the test environment of the README (which has cryptography and PyJWT)::

    .venv/bin/python benchmarks/bench_sf_jwt.py            # about 1 to 3 minutes
    .venv/bin/python benchmarks/bench_sf_jwt.py --quick    # about 20 seconds
    .venv/bin/python benchmarks/bench_sf_jwt.py --json results.json

It measures the checkout's sf_jwt.py, copied into a temporary folder together with
the comparison scripts, so that bytecode and cache files land there and not in the
repository. Every time is the median of repeated runs, and the competitors of one
comparison run interleaved (in turns, each round in a rotated order) so that machine
noise hits all of them alike. Every ratio compares two medians of the same run.

It also times load_private_key on the fixture key in encrypted PKCS#8 and PKCS#12
files, against a fixed target in milliseconds rather than a competitor.

Network: the only server contacted is a fake token endpoint that this script
starts on 127.0.0.1 with the TLS certificates in testdata/. Every request loop is
bounded in count and in time.

Exit status: 0 when all correctness checks pass (missed speed targets do not change
it), 1 when the three signers disagree, a competitor's output does not verify, a
decrypted key differs from testdata/jwt_key_pkcs1.pem, or the token cache let more
than one login through.
"""

import argparse
import base64
import hashlib
import http.server
import json
import math
import os
import platform
import py_compile
import shutil
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import parse_qs

try:
    import resource
except ImportError:  # Windows: CPU times of child processes are not reported
    resource = None

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPOSITORY, "testdata")
MODULE_SOURCE = os.path.join(REPOSITORY, "sf_jwt.py")

KEY_FILES = {
    2048: os.path.join(TESTDATA, "jwt_key_pkcs1.pem"),
    4096: os.path.join(TESTDATA, "rsa4096.pem"),
}
# The key of KEY_FILES[2048] in the containers that section 5 loads. Every
# encrypted file uses KEY_PASSWORD and 2048 iterations, OpenSSL 3.0's default
# (testdata/README.md lists the commands):
# - jwt_key_encrypted_pkcs8.pem: PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC.
# - jwt_key.p12: the key and the certificate under PBES2 with AES-256-CBC, and an
#   HMAC-SHA256 MAC.
# - jwt_key_legacy.p12: the key under pbeWithSHAAnd3-KeyTripleDES-CBC, the
#   certificate under 40-bit RC2 (which sf_jwt skips), and an HMAC-SHA1 MAC.
# jwt_key_pkcs8.pem is not encrypted and gives the cost of the rest of the loading.
DECRYPTION_FILES = [
    os.path.join(TESTDATA, name)
    for name in ("jwt_key_pkcs8.pem", "jwt_key_encrypted_pkcs8.pem", "jwt_key.p12", "jwt_key_legacy.p12")
]
KEY_PASSWORD = "fixture-password"
SERVER_CERT = os.path.join(TESTDATA, "server.crt")
SERVER_KEY = os.path.join(TESTDATA, "server.key")
CA_CERT = os.path.join(TESTDATA, "ca.crt")

CLIENT_ID = "3MVG9BENCHMARK.fake.consumer.key"
USERNAME = "benchmark@example.com"
# The aud claim only. Nothing connects to this host: logins go to the fake endpoint.
AUDIENCE = "https://login.salesforce.com"
TOKEN_PATH = "/services/oauth2/token"

# Speed targets: sf_jwt's median time divided by the competitor's must be at most this.
TARGETS = {
    "sign_2048": 0.40,
    "sign_4096": 0.35,
    "cold_assertion": 0.80,
    "import": 1.50,
}
# Speed target of section 5, in milliseconds. For every key file, the median
# load_private_key time, warm and as the first call in a fresh process, must be
# less than this.
DECRYPTION_TARGET_MS = 100.0

# Repeat counts. "rounds" is the number of samples that each median is taken
# over, "batch" the number of calls in one timed sample, and "limit" the seconds
# after which a loop stops early. The report shows the rounds actually run.
FULL_SETTINGS = {
    "sign_rounds": 31, "sign_batch": {2048: 4, 4096: 1}, "sign_limit": 45.0,
    "cold_rounds": 31, "cold_limit": 60.0,
    "import_rounds": 101, "import_limit": 60.0,
    "token_rounds": 41, "token_limit": 30.0,
    "cached_rounds": 21, "cached_batch": 20000,
    "thread_trials": 5, "process_trials": 3,
    "decrypt_rounds": 21, "decrypt_limit": 30.0,
    "first_call_rounds": 15, "first_call_limit": 60.0,
}
QUICK_SETTINGS = {
    "sign_rounds": 7, "sign_batch": {2048: 2, 4096: 1}, "sign_limit": 10.0,
    "cold_rounds": 7, "cold_limit": 15.0,
    "import_rounds": 15, "import_limit": 10.0,
    "token_rounds": 11, "token_limit": 10.0,
    "cached_rounds": 7, "cached_batch": 20000,
    "thread_trials": 1, "process_trials": 1,
    "decrypt_rounds": 7, "decrypt_limit": 10.0,
    "first_call_rounds": 3, "first_call_limit": 15.0,
}
WARMUP_RUNS = 2
SUBPROCESS_TIMEOUT = 60.0
THREAD_COUNT = 32
PROCESS_COUNT = 20
# Seconds the fake endpoint waits before it responds in the concurrency checks, so
# that every thread or process arrives while the first login is still running.
CONCURRENT_LOGIN_DELAY = 0.2

# Comparison programs for the cold-process benchmark. Each prints one signed
# assertion for the arguments CLIENT_ID USERNAME KEY_FILE, as `sf_jwt.py assertion` does.
PYJWT_SCRIPT = '''\
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization

client_id, username, key_file = sys.argv[1:4]
with open(key_file, "rb") as handle:
    try:
        key = serialization.load_pem_private_key(handle.read(), password=None)
    except TypeError:  # cryptography before 3.1 requires the backend argument
        from cryptography.hazmat.backends import default_backend
        handle.seek(0)
        key = serialization.load_pem_private_key(handle.read(), password=None, backend=default_backend())
claims = {"iss": client_id, "sub": username, "aud": "%s", "exp": int(time.time()) + 180}
assertion = jwt.encode(claims, key, algorithm="RS256")
print(assertion.decode("ascii") if isinstance(assertion, bytes) else assertion)
''' % AUDIENCE

RSA_SCRIPT = '''\
import base64
import json
import sys
import time

import rsa


def base64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


client_id, username, key_file = sys.argv[1:4]
with open(key_file, "rb") as handle:
    key = rsa.PrivateKey.load_pkcs1(handle.read())
claims = {"iss": client_id, "sub": username, "aud": "%s", "exp": int(time.time()) + 180}
signing_input = base64url(b'{"alg":"RS256"}') + "." + base64url(json.dumps(claims, separators=(",", ":")).encode())
signature = rsa.sign(signing_input.encode("ascii"), key, "SHA-256")
print(signing_input + "." + base64url(signature))
''' % AUDIENCE

# One process of the shared-cache check: log in through TokenProvider with a cache file.
CACHE_CLIENT_SCRIPT = '''\
import sys

import sf_jwt

port, key_file, ca_file, cache_file = sys.argv[1:5]
provider = sf_jwt.TokenProvider(
    "%s", "%s", key_file, login_url="https://127.0.0.1:" + port, audience="%s",
    timeout=10, ca_file=ca_file, max_attempts=1, deadline=20, cache_file=cache_file,
)
print(provider.get().access_token)
''' % (CLIENT_ID, USERNAME, AUDIENCE)

# One fresh process of section 5. It times the first load_private_key call alone,
# which builds the AES or DES tables, and prints the seconds and the fingerprint.
FIRST_LOAD_SCRIPT = '''\
import sys
import time

import sf_jwt

key_file = sys.argv[1]
started = time.perf_counter()
key = sf_jwt.load_private_key(key_file, "%s")
elapsed = time.perf_counter() - started
print("{!r} {}".format(elapsed, key.fingerprint))
''' % KEY_PASSWORD


class BenchmarkFailure(Exception):
    """A correctness check failed, so the numbers would compare different work."""


def log(message):
    print(message, file=sys.stderr)
    sys.stderr.flush()


# --- Statistics and timing ------------------------------------------------------


def summarize(samples):
    """Return the median and quartiles of a list of seconds, in milliseconds."""
    milliseconds = sorted(sample * 1000.0 for sample in samples)
    count = len(milliseconds)
    return {
        "median_ms": statistics.median(milliseconds),
        "p25_ms": milliseconds[count // 4],
        "p75_ms": milliseconds[(3 * count) // 4],
        "min_ms": milliseconds[0],
        "samples": len(milliseconds),
    }


def run_interleaved(competitors, rounds, time_limit):
    """Time each competitor once per round, in an order rotated every round.

    Args:
        competitors: A list of (name, function) pairs. Each function runs one
            sample and returns the seconds it took per operation.
        rounds: The number of rounds at most.
        time_limit: Seconds after which no new round starts.

    Returns:
        {name: [seconds per operation, one per round]}.
    """
    samples = {name: [] for name, _ in competitors}
    started = time.monotonic()
    for index in range(rounds):
        shift = index % len(competitors)
        for name, function in competitors[shift:] + competitors[:shift]:
            samples[name].append(function())
        if time.monotonic() - started > time_limit:
            log("  stopped after {} of {} rounds: the {:.0f} s limit was reached".format(index + 1, rounds, time_limit))
            break
    return samples


def timed_batch(function, count):
    """Return a function that times `count` calls of `function` and returns seconds per call."""
    def sample():
        started = time.perf_counter()
        for _ in range(count):
            function()
        return (time.perf_counter() - started) / count
    return sample


class ProcessTimer(object):
    """A callable that runs a command to its end and returns the wall-clock seconds it took.

    It also records the CPU seconds (user + system) of the child in `cpu_samples`,
    which depend less on other load of the machine than the wall time.
    """

    def __init__(self, command, cwd, environment):
        self.command = command
        self.cwd = cwd
        self.environment = environment
        self.cpu_samples = []

    def __call__(self):
        cpu_before = children_cpu_seconds()
        started = time.perf_counter()
        completed = run_process(self.command, self.cwd, self.environment)
        elapsed = time.perf_counter() - started
        if completed[0] != 0:
            raise BenchmarkFailure("{} exited with {}: {}".format(
                " ".join(self.command), completed[0], completed[2][-500:]))
        if cpu_before is not None:
            self.cpu_samples.append(children_cpu_seconds() - cpu_before)
        return elapsed


def children_cpu_seconds():
    """Return the user + system CPU seconds of all waited-for children, or None without `resource`."""
    if resource is None:
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_processes(commands, rounds, time_limit, cwd, environment):
    """Run the commands interleaved; return {name: summary} with the CPU median added as cpu_median_ms."""
    timers = [(name, ProcessTimer(command, cwd, environment)) for name, command in commands]
    samples = run_interleaved(timers, rounds, time_limit)
    result = {}
    for name, timer in timers:
        result[name] = summarize(samples[name])
        result[name]["cpu_median_ms"] = summarize(timer.cpu_samples)["median_ms"] if timer.cpu_samples else None
    return result


def run_process(command, cwd, environment, timeout=SUBPROCESS_TIMEOUT):
    """Run a command; return (exit code, stdout, stderr) as text. Kills it after `timeout` seconds."""
    process = subprocess.Popen(
        command, cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise BenchmarkFailure("{} timed out after {:.0f} s".format(" ".join(command), timeout)) from None
    return process.returncode, stdout, stderr


def ratio(numerator, denominator):
    return numerator / denominator if denominator > 0 else float("nan")


def cpu_ratio(numerator, denominator):
    """Return the ratio of two summaries' CPU medians, or None when CPU times are not available."""
    if numerator["cpu_median_ms"] is None or denominator["cpu_median_ms"] is None:
        return None
    return ratio(numerator["cpu_median_ms"], denominator["cpu_median_ms"])


def verdict(value, target):
    """Describe a measured ratio against a target of "at most `target`"."""
    if math.isnan(value):  # a difference of times that was not positive
        return "not measurable"
    if value <= target:
        return "met ({:.2f}x <= {:.2f}x)".format(value, target)
    return "MISSED by {:.2f}x ({:.0f}% above {:.2f}x)".format(value - target, (value / target - 1) * 100, target)


def time_verdict(measurements, target_ms):
    """Describe medians in milliseconds against a target of "less than `target_ms`".

    Args:
        measurements: A list of (label, milliseconds) pairs that must all meet the target.
    """
    missed = ["{} {:.1f} ms".format(label, value) for label, value in measurements if not value < target_ms]
    if missed:
        return "MISSED: {} (target under {:.0f} ms)".format(", ".join(missed), target_ms)
    return "met (under {:.0f} ms)".format(target_ms)


# --- Environment ------------------------------------------------------------------


def package_version(name):
    """Return the version of an importable package, or None when it is not installed."""
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def cpu_model():
    """Return the processor's model name from /proc/cpuinfo, as `lscpu` shows it, or ''."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_average():
    """Return the 1-minute load average, or None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def usable_cpus():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def child_environment():
    """Return the environment for child processes.

    SF_* variables are removed so that no real login setting can reach a child,
    and loopback addresses bypass any proxy.
    """
    environment = {name: value for name, value in os.environ.items() if not name.startswith("SF_")}
    for variable in ("NO_PROXY", "no_proxy"):
        existing = environment.get(variable, "")
        environment[variable] = ",".join(part for part in (existing, "127.0.0.1,localhost") if part)
    return environment


class Workspace(object):
    """A temporary folder with copies of sf_jwt.py and the keys, and the comparison scripts."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="sf_jwt-bench-")
        shutil.copyfile(MODULE_SOURCE, os.path.join(self.path, "sf_jwt.py"))
        # Compile once, as pip does on install, so `import sf_jwt` and
        # `python -m sf_jwt` load bytecode even where PYTHONDONTWRITEBYTECODE is set.
        py_compile.compile(os.path.join(self.path, "sf_jwt.py"), doraise=True)
        # Private copies of the keys: git checks files out with mode 0644, and sf_jwt
        # logs a warning in every process that loads a key file other users can read.
        self.key_files = {bits: self.private_copy(source) for bits, source in KEY_FILES.items()}
        self.decryption_files = [self.private_copy(source) for source in DECRYPTION_FILES]
        self.scripts = {}
        for name, text in (("pyjwt_assertion.py", PYJWT_SCRIPT), ("rsa_assertion.py", RSA_SCRIPT),
                           ("cache_client.py", CACHE_CLIENT_SCRIPT), ("first_load.py", FIRST_LOAD_SCRIPT)):
            script = os.path.join(self.path, name)
            with open(script, "w") as handle:
                handle.write(text)
            self.scripts[name] = script

    def private_copy(self, source):
        """Copy a file into the workspace with mode 0600 and return the copy's path."""
        copy = os.path.join(self.path, os.path.basename(source))
        shutil.copyfile(source, copy)
        os.chmod(copy, 0o600)
        return copy

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


# --- 1. Signing ---------------------------------------------------------------------


def signing_input_for_benchmark(sf_jwt):
    """Return the header.claims part of a typical assertion, as bytes."""
    claims = sf_jwt.build_claims(CLIENT_ID, USERNAME, audience=AUDIENCE, now=1700000000)
    claims_json = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    return "{}.{}".format(
        sf_jwt.base64url_encode(b'{"alg":"RS256"}'), sf_jwt.base64url_encode(claims_json)
    ).encode("ascii")


def load_cryptography_key(path):
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography before 3.1 requires the backend argument
        from cryptography.hazmat.backends import default_backend
        return serialization.load_pem_private_key(data, password=None, backend=default_backend())


def benchmark_signing(sf_jwt, workspace, settings, have_cryptography):
    import rsa

    message = signing_input_for_benchmark(sf_jwt)
    results = {}
    for bits in (2048, 4096):
        log("signing with a {}-bit key".format(bits))
        signing_key = sf_jwt.load_private_key(workspace.key_files[bits])
        rsa_key = signing_key.rsa_key
        competitors = [
            ("sf_jwt.sign_rs256", lambda key=signing_key: sf_jwt.sign_rs256(message, key)),
            ("rsa.sign", lambda key=rsa_key: rsa.sign(message, key, "SHA-256")),
        ]
        if have_cryptography:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding

            crypto_key = load_cryptography_key(workspace.key_files[bits])
            competitors.append(
                ("cryptography", lambda key=crypto_key: key.sign(message, padding.PKCS1v15(), hashes.SHA256()))
            )

        # RSASSA-PKCS1-v1_5 is deterministic, so every correct signer returns the same bytes.
        signatures = {name: function() for name, function in competitors}
        reference = signatures["sf_jwt.sign_rs256"]
        for name, signature in signatures.items():
            if signature != reference:
                raise BenchmarkFailure(
                    "{} and sf_jwt.sign_rs256 returned different signatures for the {}-bit key".format(name, bits)
                )

        batch = settings["sign_batch"][bits]
        for _, function in competitors:
            function()  # warm-up
        samples = run_interleaved(
            [(name, timed_batch(function, batch)) for name, function in competitors],
            settings["sign_rounds"], settings["sign_limit"],
        )
        result = {name: summarize(values) for name, values in samples.items()}
        result["batch"] = batch
        result["ratio_sf_jwt_to_rsa"] = ratio(
            result["sf_jwt.sign_rs256"]["median_ms"], result["rsa.sign"]["median_ms"]
        )
        if have_cryptography:
            result["ratio_sf_jwt_to_cryptography"] = ratio(
                result["sf_jwt.sign_rs256"]["median_ms"], result["cryptography"]["median_ms"]
            )
        results[bits] = result
    return results


# --- 2. Cold processes ----------------------------------------------------------------


def check_assertion_output(name, output, public_key):
    """Raise BenchmarkFailure unless `output` is an RS256 JWT with our claims that verifies."""
    import rsa

    parts = output.strip().split(".")
    if len(parts) != 3:
        raise BenchmarkFailure("{} printed no JWT: {!r}".format(name, output[:200]))

    def decode(part):
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    header = json.loads(decode(parts[0]).decode("utf-8"))
    claims = json.loads(decode(parts[1]).decode("utf-8"))
    if header.get("alg") != "RS256" or [claims.get(field) for field in ("iss", "sub", "aud")] != [
        CLIENT_ID, USERNAME, AUDIENCE
    ]:
        raise BenchmarkFailure("{} printed unexpected header or claims: {} {}".format(name, header, claims))
    try:
        rsa.verify((parts[0] + "." + parts[1]).encode("ascii"), decode(parts[2]), public_key)
    except rsa.VerificationError:
        raise BenchmarkFailure("the signature that {} printed does not verify".format(name)) from None


def benchmark_cold_processes(sf_jwt, workspace, settings, environment, have_pyjwt):
    import rsa

    log("cold processes: one assertion per fresh interpreter")
    key_file = workspace.key_files[2048]
    login_arguments = ["-i", CLIENT_ID, "-o", USERNAME, "-f", key_file]
    commands = [
        ("python sf_jwt.py assertion", [sys.executable, "sf_jwt.py", "assertion"] + login_arguments),
        ("python -m sf_jwt assertion", [sys.executable, "-m", "sf_jwt", "assertion"] + login_arguments),
        ("rsa by hand", [sys.executable, workspace.scripts["rsa_assertion.py"], CLIENT_ID, USERNAME, key_file]),
    ]
    if have_pyjwt:
        commands.append(
            ("PyJWT + cryptography",
             [sys.executable, workspace.scripts["pyjwt_assertion.py"], CLIENT_ID, USERNAME, key_file])
        )

    public_key = rsa.PublicKey(*sf_jwt.load_private_key(key_file).public_numbers)
    for name, command in commands:
        code, stdout, stderr = run_process(command, workspace.path, environment)
        if code != 0:
            raise BenchmarkFailure("{} exited with {}: {}".format(name, code, stderr[-500:]))
        check_assertion_output(name, stdout, public_key)
        for _ in range(WARMUP_RUNS - 1):
            run_process(command, workspace.path, environment)

    result = time_processes(commands, settings["cold_rounds"], settings["cold_limit"], workspace.path, environment)
    script_ms = result["python sf_jwt.py assertion"]["median_ms"]
    result["ratio_script_to_rsa_by_hand"] = ratio(script_ms, result["rsa by hand"]["median_ms"])
    if have_pyjwt:
        pyjwt_ms = result["PyJWT + cryptography"]["median_ms"]
        result["ratio_script_to_pyjwt"] = ratio(script_ms, pyjwt_ms)
        result["ratio_module_to_pyjwt"] = ratio(result["python -m sf_jwt assertion"]["median_ms"], pyjwt_ms)
        result["cpu_ratio_script_to_pyjwt"] = cpu_ratio(
            result["python sf_jwt.py assertion"], result["PyJWT + cryptography"])
    return result


# --- 3. Import time -----------------------------------------------------------------------


def benchmark_imports(workspace, settings, environment):
    log("import time: python -c in a fresh interpreter")
    commands = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("python -c 'import rsa'", [sys.executable, "-c", "import rsa"]),
        ("python -c 'import sf_jwt'", [sys.executable, "-c", "import sf_jwt"]),
    ]
    # The copy in the workspace must be the one imported, not an installed sf_jwt.
    code, stdout, stderr = run_process(
        [sys.executable, "-c", "import sf_jwt; print(sf_jwt.__file__)"], workspace.path, environment
    )
    if code != 0 or not os.path.abspath(stdout.strip()).startswith(workspace.path):
        raise BenchmarkFailure("python -c 'import sf_jwt' did not load the copy in {}: {} {}".format(
            workspace.path, stdout.strip(), stderr[-300:]))
    for _, command in commands * WARMUP_RUNS:
        run_process(command, workspace.path, environment)

    result = time_processes(
        commands, settings["import_rounds"], settings["import_limit"], workspace.path, environment
    )
    bare = result["python -c pass"]["median_ms"]
    with_rsa = result["python -c 'import rsa'"]["median_ms"]
    with_sf_jwt = result["python -c 'import sf_jwt'"]["median_ms"]
    result["import_rsa_ms"] = with_rsa - bare
    result["import_sf_jwt_ms"] = with_sf_jwt - bare
    result["ratio_with_start"] = ratio(with_sf_jwt, with_rsa)
    result["ratio_without_start"] = ratio(with_sf_jwt - bare, with_rsa - bare)
    result["cpu_ratio_with_start"] = cpu_ratio(
        result["python -c 'import sf_jwt'"], result["python -c 'import rsa'"])
    return result


# --- 4. Token requests against a fake endpoint ----------------------------------------------


class FakeTokenEndpoint(object):
    """A Salesforce-shaped token endpoint on 127.0.0.1 over TLS that counts logins.

    It checks only the form's grant_type and that the assertion has three parts,
    and responds to every login with the same success JSON after `delay` seconds.
    """

    def __init__(self):
        self.delay = 0.0
        self.logins = 0
        self.rejected = 0
        self._lock = threading.Lock()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self):
                self.request.settimeout(10)
                self.request.do_handshake()
                http.server.BaseHTTPRequestHandler.setup(self)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(min(length, 65536)).decode("ascii", "replace"))
                assertion = (form.get("assertion") or [""])[0]
                if self.path != TOKEN_PATH or form.get("grant_type") != [
                    "urn:ietf:params:oauth:grant-type:jwt-bearer"
                ] or assertion.count(".") != 2:
                    endpoint.count_rejection()
                    self.send_json(400, {"error": "invalid_grant", "error_description": "invalid assertion"})
                    return
                if endpoint.delay:
                    time.sleep(endpoint.delay)
                endpoint.count_login()
                self.send_json(200, endpoint.success_body)

            def send_json(self, status, body):
                payload = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def get_request(self):
                # The TLS handshake runs in the request's thread (Handler.setup),
                # so one slow client does not hold up the others.
                connection, address = self.socket.accept()
                return endpoint.context.wrap_socket(
                    connection, server_side=True, do_handshake_on_connect=False
                ), address

            def handle_error(self, request, client_address):
                log("  fake endpoint: error from {}: {}".format(client_address, sys.exc_info()[1]))

        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(SERVER_CERT, SERVER_KEY)
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "https://127.0.0.1:{}".format(self.port)
        self.success_body = {
            "access_token": "00DBENCH00000000001!AQ4AQFakeAccessTokenFromTheBenchmarkEndpoint",
            "instance_url": self.url,
            "id": self.url + "/id/00DBENCH00000000001/005BENCH00000000001",
            "token_type": "Bearer",
            "scope": "api",
            "issued_at": str(int(time.time() * 1000)),
        }
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True

    def start(self):
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def count_login(self):
        with self._lock:
            self.logins += 1

    def count_rejection(self):
        with self._lock:
            self.rejected += 1

    def reset(self, delay):
        with self._lock:
            self.logins = 0
            self.rejected = 0
            self.delay = delay


def benchmark_token(sf_jwt, endpoint, workspace, settings, environment):
    log("token requests against the fake endpoint at {}".format(endpoint.url))
    key = sf_jwt.load_private_key(workspace.key_files[2048])
    login = {"login_url": endpoint.url, "audience": AUDIENCE, "timeout": 10, "ca_file": CA_CERT}
    result = {}

    # The whole login, and the signing part alone for comparison.
    endpoint.reset(delay=0.0)
    sf_jwt.get_token(CLIENT_ID, USERNAME, key, max_attempts=1, deadline=20, **login)
    samples = run_interleaved(
        [
            ("get_token", timed_batch(
                lambda: sf_jwt.get_token(CLIENT_ID, USERNAME, key, max_attempts=1, deadline=20, **login), 1)),
            ("create_assertion", timed_batch(
                lambda: sf_jwt.create_assertion(CLIENT_ID, USERNAME, key, audience=AUDIENCE), 1)),
        ],
        settings["token_rounds"], settings["token_limit"],
    )
    result["get_token"] = summarize(samples["get_token"])
    result["create_assertion"] = summarize(samples["create_assertion"])

    # A cached TokenProvider.get(): no login, no file, only the lock and the age check.
    provider = sf_jwt.TokenProvider(CLIENT_ID, USERNAME, key, max_attempts=1, deadline=20, **login)
    provider.get()
    batch = settings["cached_batch"]
    cached = run_interleaved([("cached", timed_batch(provider.get, batch))], settings["cached_rounds"], 30.0)
    summary = summarize(cached["cached"])
    result["cached_get_us"] = summary["median_ms"] * 1000.0
    result["cached_get_batch"] = batch

    result["thread_logins"] = [
        count_thread_logins(sf_jwt, endpoint, key, login) for _ in range(settings["thread_trials"])
    ]
    result["process_logins"] = []
    result["process_seconds"] = []
    for trial in range(settings["process_trials"]):
        logins, seconds = count_process_logins(endpoint, workspace, environment, trial)
        result["process_logins"].append(logins)
        result["process_seconds"].append(seconds)
    result["concurrent_login_delay_s"] = CONCURRENT_LOGIN_DELAY
    return result


def count_thread_logins(sf_jwt, endpoint, key, login):
    """Call TokenProvider.get() from THREAD_COUNT threads at once; return the logins the endpoint saw."""
    endpoint.reset(delay=CONCURRENT_LOGIN_DELAY)
    provider = sf_jwt.TokenProvider(CLIENT_ID, USERNAME, key, max_attempts=1, deadline=20, **login)
    barrier = threading.Barrier(THREAD_COUNT, timeout=30)
    tokens = []
    errors = []

    def worker():
        try:
            barrier.wait()
            tokens.append(provider.get().access_token)
        except Exception as error:  # reported below: every thread must get the token
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(THREAD_COUNT)]
    for thread in threads:
        thread.start()
    give_up_at = time.monotonic() + SUBPROCESS_TIMEOUT
    for thread in threads:
        thread.join(max(0.1, give_up_at - time.monotonic()))
    if errors or len(tokens) != THREAD_COUNT or any(thread.is_alive() for thread in threads):
        raise BenchmarkFailure("{} of {} threads got a token; errors: {}".format(len(tokens), THREAD_COUNT, errors[:3]))
    return endpoint.logins


def count_process_logins(endpoint, workspace, environment, trial):
    """Start PROCESS_COUNT processes sharing one cache file; return (logins, seconds until all ended)."""
    endpoint.reset(delay=CONCURRENT_LOGIN_DELAY)
    cache_file = os.path.join(workspace.path, "token-cache-{}.json".format(trial))
    command = [sys.executable, workspace.scripts["cache_client.py"], str(endpoint.port), workspace.key_files[2048],
               CA_CERT, cache_file]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=workspace.path, env=environment, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        for _ in range(PROCESS_COUNT)
    ]
    outputs = []
    give_up_at = time.monotonic() + SUBPROCESS_TIMEOUT
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=max(0.1, give_up_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
                other.communicate()
            raise BenchmarkFailure(
                "a shared-cache process did not end within {:.0f} s".format(SUBPROCESS_TIMEOUT)
            ) from None
        outputs.append((process.returncode, stdout.strip(), stderr.strip()))
    seconds = time.perf_counter() - started

    failures = [output for output in outputs if output[0] != 0 or output[1] != endpoint.success_body["access_token"]]
    if failures:
        raise BenchmarkFailure("{} of {} shared-cache processes failed; first: exit {}, {}".format(
            len(failures), PROCESS_COUNT, failures[0][0], failures[0][2][-300:]))
    return endpoint.logins, seconds


# --- 5. Loading encrypted keys ----------------------------------------------------------------


class FirstLoadTimer(object):
    """A callable that loads a key file in a fresh interpreter and returns the seconds of that call.

    The child times the load_private_key call alone. That leaves out the
    interpreter start and `import sf_jwt`, but includes the work done on first
    use, such as building the AES or DES tables and the imports that sf_jwt
    defers until a function needs them.
    """

    def __init__(self, key_file, expected_fingerprint, workspace, environment):
        self.command = [sys.executable, workspace.scripts["first_load.py"], key_file]
        self.key_file = key_file
        self.expected_fingerprint = expected_fingerprint
        self.cwd = workspace.path
        self.environment = environment

    def __call__(self):
        code, stdout, stderr = run_process(self.command, self.cwd, self.environment)
        if code != 0:
            raise BenchmarkFailure("{} exited with {}: {}".format(" ".join(self.command), code, stderr[-500:]))
        fields = stdout.split()
        if len(fields) != 2:
            raise BenchmarkFailure("{} printed {!r}, not the seconds and a fingerprint".format(
                " ".join(self.command), stdout[:200]))
        check_fingerprint(self.key_file, fields[1], self.expected_fingerprint)
        return float(fields[0])


def check_fingerprint(key_file, fingerprint, expected):
    """Raise BenchmarkFailure unless a key loaded from key_file has the expected fingerprint."""
    if fingerprint != expected:
        raise BenchmarkFailure("the key loaded from {} has the fingerprint {}, expected {} (that of {})".format(
            os.path.basename(key_file), fingerprint, expected, os.path.basename(KEY_FILES[2048])))


def benchmark_decryption(sf_jwt, workspace, settings, environment):
    log("loading encrypted keys: load_private_key with a password")
    expected = sf_jwt.load_private_key(workspace.key_files[2048]).fingerprint
    names = [os.path.basename(path) for path in workspace.decryption_files]

    # Warm: repeated calls in this process. The first call per file is the
    # warm-up. It also builds the AES and DES tables and checks the fingerprint.
    competitors = []
    for name, path in zip(names, workspace.decryption_files):
        check_fingerprint(path, sf_jwt.load_private_key(path, KEY_PASSWORD).fingerprint, expected)
        competitors.append((name, timed_batch(lambda path=path: sf_jwt.load_private_key(path, KEY_PASSWORD), 1)))
    warm = run_interleaved(competitors, settings["decrypt_rounds"], settings["decrypt_limit"])

    # First call: one fresh interpreter per sample, each checking the key it loaded.
    # Each command runs once untimed first, so that the interpreter's and the key's
    # files are in the operating system's cache.
    timers = [
        (name, FirstLoadTimer(path, expected, workspace, environment))
        for name, path in zip(names, workspace.decryption_files)
    ]
    for _, timer in timers:
        timer()
    first = run_interleaved(timers, settings["first_call_rounds"], settings["first_call_limit"])

    return {
        "files": names,
        "warm": {name: summarize(warm[name]) for name in names},
        "first_call": {name: summarize(first[name]) for name in names},
        "target_ms": DECRYPTION_TARGET_MS,
    }


# --- Report ----------------------------------------------------------------------------------


def format_ms(summary):
    return "{:.2f}".format(summary["median_ms"]) if summary else "-"


def format_cpu_ms(summary):
    return "{:.2f}".format(summary["cpu_median_ms"]) if summary.get("cpu_median_ms") is not None else "-"


def format_ratio(value):
    return "{:.2f}x".format(value) if value is not None else "not available"


def print_report(report):
    machine = report["machine"]
    print("sf_jwt {} benchmark: Python {}, rsa {}, cryptography {}, PyJWT {}".format(
        report["sf_jwt_version"], machine["python"], machine["rsa"], machine["cryptography"] or "not installed",
        machine["pyjwt"] or "not installed"))
    print("{} usable CPUs, {}; 1-minute load average {} at start, {} at end".format(
        machine["cpus"], machine["cpu_model"] or "unknown CPU", machine["load_average_at_start"],
        machine["load_average_at_end"]))
    print("{} run; every figure is a median, every ratio compares medians of this run".format(
        "quick" if report["quick"] else "full"))
    for note in report["notes"]:
        print("note: " + note)

    signing = report["signing"]
    print("\n1. Signing one assertion (ms per signature)")
    print("{:<6} {:>8} {:>9} {:>13} {:>8} {:>8}  {}".format(
        "key", "sf_jwt", "rsa.sign", "cryptography", "sf/rsa", "sf/cryp", "target sf/rsa"))
    for bits in (2048, 4096):
        row = signing[bits]
        print("{:<6} {:>8} {:>9} {:>13} {:>7.2f}x {:>8}  {}".format(
            bits, format_ms(row["sf_jwt.sign_rs256"]), format_ms(row["rsa.sign"]), format_ms(row.get("cryptography")),
            row["ratio_sf_jwt_to_rsa"],
            "{:.1f}x".format(row["ratio_sf_jwt_to_cryptography"]) if "ratio_sf_jwt_to_cryptography" in row else "-",
            report["verdicts"]["sign_{}".format(bits)]))
    print("({} rounds of {} and {} signatures per competitor)".format(
        signing[2048]["rsa.sign"]["samples"], signing[2048]["batch"], signing[4096]["batch"]))

    cold = report["cold"]
    print("\n2. Cold process printing one assertion, 2048-bit key (fresh interpreter each)")
    print("{:<28} {:>8} {:>8}".format("command", "wall ms", "CPU ms"))
    for name in ("python sf_jwt.py assertion", "python -m sf_jwt assertion", "rsa by hand", "PyJWT + cryptography"):
        if name in cold:
            print("{:<28} {:>8} {:>8}".format(name, format_ms(cold[name]), format_cpu_ms(cold[name])))
    print("sf_jwt.py / rsa by hand: {:.2f}x".format(cold["ratio_script_to_rsa_by_hand"]))
    if "ratio_script_to_pyjwt" in cold:
        print("sf_jwt.py / PyJWT: {:.2f}x (CPU {}), target: {}".format(
            cold["ratio_script_to_pyjwt"], format_ratio(cold["cpu_ratio_script_to_pyjwt"]),
            report["verdicts"]["cold_assertion"]))
        print("python -m sf_jwt / PyJWT: {:.2f}x".format(cold["ratio_module_to_pyjwt"]))
    print("({} rounds)".format(cold["rsa by hand"]["samples"]))

    imports = report["imports"]
    print("\n3. Import time (fresh interpreter each)")
    print("{:<28} {:>8} {:>8}".format("command", "wall ms", "CPU ms"))
    for name in ("python -c pass", "python -c 'import rsa'", "python -c 'import sf_jwt'"):
        print("{:<28} {:>8} {:>8}".format(name, format_ms(imports[name]), format_cpu_ms(imports[name])))
    print("import sf_jwt / import rsa, interpreter start included: {:.2f}x (CPU {}), target: {}".format(
        imports["ratio_with_start"], format_ratio(imports["cpu_ratio_with_start"]), report["verdicts"]["import"]))
    print("the same with the bare start subtracted ({:.1f} ms / {:.1f} ms): {:.2f}x, {}".format(
        imports["import_sf_jwt_ms"], imports["import_rsa_ms"], imports["ratio_without_start"],
        report["verdicts"]["import_without_start"]))
    print("({} rounds)".format(imports["python -c pass"]["samples"]))

    token = report["token"]
    print("\n4. Token requests against the fake endpoint on 127.0.0.1 (TLS, new connection each)")
    print("get_token, whole login:          {:>8} ms".format(format_ms(token["get_token"])))
    print("create_assertion alone:          {:>8} ms".format(format_ms(token["create_assertion"])))
    print("cached TokenProvider.get():      {:>8.2f} us".format(token["cached_get_us"]))
    print("logins for {} threads at once:    {} (per trial; must be 1)".format(
        THREAD_COUNT, ", ".join(str(count) for count in token["thread_logins"])))
    print("logins for {} processes, 1 cache: {} (per trial; must be 1), all done in {} s".format(
        PROCESS_COUNT, ", ".join(str(count) for count in token["process_logins"]),
        ", ".join("{:.2f}".format(seconds) for seconds in token["process_seconds"])))
    print("(the fake endpoint waited {:.1f} s before each response in the thread and process checks)".format(
        token["concurrent_login_delay_s"]))

    decryption = report["decryption"]
    print("\n5. Loading a 2048-bit key: load_private_key(path, password), ms per call")
    print("target: each median under {:.0f} ms, warm and as the first call in a fresh process".format(
        decryption["target_ms"]))
    print("{:<28} {:>8} {:>11}  {}".format("file", "warm ms", "1st call ms", "target"))
    for name in decryption["files"]:
        print("{:<28} {:>8} {:>11}  {}".format(
            name, format_ms(decryption["warm"][name]), format_ms(decryption["first_call"][name]),
            report["verdicts"]["load " + name]))
    first_name = decryption["files"][0]
    print("(warm: {} rounds after one warm-up call; first call: {} fresh interpreters per file,".format(
        decryption["warm"][first_name]["samples"], decryption["first_call"][first_name]["samples"]))
    print(" each timing the call alone, without the interpreter start and the import)")


def build_verdicts(report):
    verdicts = {
        "sign_2048": verdict(report["signing"][2048]["ratio_sf_jwt_to_rsa"], TARGETS["sign_2048"]),
        "sign_4096": verdict(report["signing"][4096]["ratio_sf_jwt_to_rsa"], TARGETS["sign_4096"]),
        "import": verdict(report["imports"]["ratio_with_start"], TARGETS["import"]),
        "import_without_start": verdict(report["imports"]["ratio_without_start"], TARGETS["import"]),
    }
    if "ratio_script_to_pyjwt" in report["cold"]:
        verdicts["cold_assertion"] = verdict(report["cold"]["ratio_script_to_pyjwt"], TARGETS["cold_assertion"])
    else:
        verdicts["cold_assertion"] = "not measured: PyJWT or cryptography is not installed"
    decryption = report["decryption"]
    for name in decryption["files"]:
        verdicts["load " + name] = time_verdict(
            [("warm", decryption["warm"][name]["median_ms"]),
             ("first call", decryption["first_call"][name]["median_ms"])],
            decryption["target_ms"],
        )
    return verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: about 20 seconds instead of 1 to 3 minutes")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (default: no file)")
    args = parser.parse_args()
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    started = time.monotonic()

    workspace = Workspace()
    sys.path.insert(0, workspace.path)
    import rsa
    import sf_jwt

    if os.path.dirname(os.path.abspath(sf_jwt.__file__)) != workspace.path:
        raise SystemExit("error: imported sf_jwt from {}, not from the copy in {}".format(sf_jwt.__file__,
                                                                                       workspace.path))
    cryptography_version = package_version("cryptography")
    pyjwt_version = package_version("jwt")
    notes = []
    if cryptography_version is None:
        notes.append("cryptography is not installed: its signing column and the PyJWT script are skipped")
    if pyjwt_version is None:
        notes.append("PyJWT is not installed: the cold-process target cannot be checked")

    with open(MODULE_SOURCE, "rb") as source:
        module_hash = hashlib.sha256(source.read()).hexdigest()
    report = {
        "sf_jwt_version": sf_jwt.__version__,
        "sf_jwt_sha256": module_hash,
        "quick": args.quick,
        "machine": {
            "cpus": usable_cpus(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "python_executable": sys.executable,
            "rsa": rsa.__version__,
            "cryptography": cryptography_version,
            "pyjwt": pyjwt_version,
            "load_average_at_start": load_average(),
        },
        "targets": TARGETS,
        "notes": notes,
    }

    environment = child_environment()
    endpoint = FakeTokenEndpoint()
    endpoint.start()
    failed = False
    try:
        report["signing"] = benchmark_signing(sf_jwt, workspace, settings, cryptography_version is not None)
        report["cold"] = benchmark_cold_processes(
            sf_jwt, workspace, settings, environment, pyjwt_version is not None and cryptography_version is not None
        )
        report["imports"] = benchmark_imports(workspace, settings, environment)
        report["token"] = benchmark_token(sf_jwt, endpoint, workspace, settings, environment)
        report["decryption"] = benchmark_decryption(sf_jwt, workspace, settings, environment)
    except BenchmarkFailure as error:
        print("error: {}".format(error), file=sys.stderr)
        return 1
    finally:
        endpoint.stop()
        workspace.remove()

    report["machine"]["load_average_at_end"] = load_average()
    report["verdicts"] = build_verdicts(report)
    report["seconds"] = time.monotonic() - started
    print_report(report)
    print("\n({:.0f} s in all)".format(report["seconds"]))

    token = report["token"]
    if any(count != 1 for count in token["thread_logins"] + token["process_logins"]):
        print("error: the token cache let more than one login through (or none)", file=sys.stderr)
        failed = True
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
            handle.write("\n")
        log("wrote {}".format(args.json))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
