"""Privacy fuzzing: no generated secret ever reaches the capture endpoint, in any form.

Hypothesis generates secrets of the kinds people and tools really put in requests and command
lines (person names, emails, API tokens, JWTs, UUIDs, numbers, percent-encoded and non-ASCII
text) and places each one everywhere a request or an argv can carry it: path segments of
matched and unmatched routes, query strings, headers, cookies, JSON and form bodies, the method,
argv items in every spelling. Every body the capture endpoint received is then searched, as raw
bytes and as decoded JSON, case-folded and percent-decoded, for every form of every secret, and
for the machine's own hostname, user name, home and working directories.

How false positives are kept out. An event legitimately holds a few random values (event and
session UUIDs, the machine id, timestamps) and a few numbers (status code, duration): a secret
like "404" or "3f2a" would be found in them by chance. Those fields are first checked to have
exactly their documented shape (a UUID, an ISO time, a number) and only then masked, so they
cannot hide a leak. What is left of a body is a small, fixed vocabulary (property names, versions,
route words, placeholders); a generated secret that is a substring of that vocabulary (learnt
from a baseline run when the module starts) is discarded with `assume`, as is one too short to be
distinctive (fewer than 6 characters, or 3 digits for a number).

Run with `-s` to see how many examples each property ran (the last test prints the tally).
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import gzip
import json
import os
import re
import socket
import string
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

import httpx
import pytest
from conftest import PYTHON, ROOT, subprocess_env
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from telemetry_middleware import ASGITelemetryMiddleware, Telemetry
from telemetry_middleware import argv as argv_rules
from telemetry_middleware import paths as path_rules
from telemetry_middleware.capture_server import CaptureServer, decode_body, events_of

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the examples package lives at the repository root

# The machine's own facts, read at import time: the `home` fixture later points HOME at a tmp
# directory, and what must never leave is the real one (the tmp one is checked as well).
REAL_HOME = os.path.expanduser("~")
HOSTNAME = socket.gethostname()
USER = getpass.getuser()
WORKING_DIR = os.getcwd()

PROJECT_NAME = "Acme Payroll 2024"  # only ever sent as a salted hash; searched for in every run

# How many examples each property ran (printed by the last test of the module).
EXAMPLES: Counter[str] = Counter()

# FUZZ_EXAMPLES=5000 explores further, with fresh random examples each run; by default every run
# replays the same examples, so a red CI reproduces on any machine.
_EXPLORE = int(os.environ.get("FUZZ_EXAMPLES") or 0)
SETTINGS = settings(
    max_examples=_EXPLORE or 300,
    deadline=None,
    derandomize=not _EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- the search: everything that arrived, every form of every secret --

MASK = "<masked>"
_UUID_RE = re.compile(r"(?:ci-)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})?")
_RANDOM_IDS = frozenset({"uuid", "distinct_id", "session_id"})
_TIMES = frozenset({"timestamp", "sent_at"})
_NUMBERS = frozenset({"duration_ms", "status_code"})
_RAW_STRING_FIELD = re.compile(r'"(uuid|distinct_id|session_id|timestamp|sent_at)":\s*"[^"\\]*"')
_RAW_NUMBER_FIELD = re.compile(r'"(duration_ms|status_code)":\s*-?[0-9.eE+-]+')


def _mask(node: Any, key: str | None = None) -> Any:
    """The payload with its random and numeric fields replaced, once their shape is proven."""
    if isinstance(node, dict):
        return {k: _mask(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v) for v in node]
    if key in _RANDOM_IDS:
        assert isinstance(node, str) and _UUID_RE.fullmatch(node), (key, node)
        return MASK
    if key in _TIMES:
        assert isinstance(node, str) and _TIME_RE.fullmatch(node), (key, node)
        return MASK
    if key in _NUMBERS:
        assert isinstance(node, (int, float)) and not isinstance(node, bool), (key, node)
        assert key != "status_code" or (isinstance(node, int) and 100 <= node <= 599), node
        return MASK
    return node


def _strings(node: Any) -> Iterator[str]:
    """Every key and scalar of a decoded payload, as text (no JSON escaping to hide behind)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    else:
        yield str(node)


def haystack(bodies: list[bytes]) -> str:
    """All that arrived, masked, in every reading a leak could hide in, case-folded."""
    parts: list[str] = []
    for raw in bodies:
        payload = decode_body(raw, "", "", "application/json")
        masked = _mask(payload)
        plain = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        text = plain.decode("utf-8", "replace")
        text = _RAW_NUMBER_FIELD.sub(MASK, _RAW_STRING_FIELD.sub(MASK, text))
        parts += [
            text,
            plain.decode("latin-1"),  # a secret's UTF-8 bytes, whatever the text around them
            "\n".join(_strings(masked)),
            json.dumps(masked),
            json.dumps(masked, ensure_ascii=False),
        ]
    joined = "\n".join(parts)
    # Mask again in the latin-1 reading's random fields (they are the same bytes).
    joined = _RAW_NUMBER_FIELD.sub(MASK, _RAW_STRING_FIELD.sub(MASK, joined))
    return "\n".join([joined, unquote(joined), unquote_plus(joined)]).lower()


def forms(secret: str) -> set[str]:
    """The secret as it might surface: decoded, case-folded, normalized, as WSGI's latin-1."""
    found = {secret}
    for text in (secret, unquote(secret), unquote(unquote(secret)), unquote_plus(secret)):
        found.add(text)
        found.add(unicodedata.normalize("NFC", text))
        found.add(unicodedata.normalize("NFKC", text))
        found.add(text.encode("utf-8", "surrogatepass").decode("latin-1"))
    return {f.lower() for f in found}


# Filled by the `rig` fixture from a baseline run: all the text a body may hold legitimately.
VOCABULARY: list[str] = []


def distinctive(text: str) -> bool:
    """Long enough to mean something, and not a substring of what events always contain."""
    folded = text.lower()
    if folded.isascii() and folded.isdigit():
        long_enough = len(folded) >= 3
    elif not folded.isascii():
        long_enough = len(folded) >= 2
    else:
        long_enough = len(folded) >= 6
    return long_enough and not any(folded in vocab for vocab in VOCABULARY)


def usable(secret: str) -> bool:
    """A secret worth searching for: it and each of its forms is distinctive."""
    return distinctive(secret) and all(distinctive(f) for f in forms(secret))


_FACT_BOUNDARY = "(?<![a-z0-9]){}(?![a-z0-9])"


def machine_facts(*extra: str | Path) -> list[str]:
    """The real hostname, user, home and working directory, plus tmp paths a test used."""
    facts = [HOSTNAME, USER, REAL_HOME, WORKING_DIR, *map(str, extra)]
    return [f for f in facts if f and f not in ("/", ".")]


def assert_nothing_leaked(bodies: list[bytes], secrets: list[str], facts: list[str]) -> None:
    assert bodies, "nothing reached the endpoint: the search would prove nothing"
    hay = haystack(bodies)
    for secret in secrets:
        for form in forms(secret):
            if distinctive(form):
                assert form not in hay, f"{secret!r} reached the endpoint as {form!r}"
    for fact in facts:
        folded = fact.lower()
        if len(folded) >= 6:
            assert folded not in hay, f"machine fact {fact!r} reached the endpoint"
        else:  # short ones ("vm", "root") only as whole words, or any body would match
            pattern = _FACT_BOUNDARY.format(re.escape(folded))
            assert not re.search(pattern, hay), f"machine fact {fact!r} reached the endpoint"


# -- secrets --

FIRST_NAMES = (
    "alice bob carol dave eve frank grace heidi ivan judy mallory oscar peggy trent victor walter "
    "ann joe zoe max mei yusuf priya sven olga kofi al bo jo ed li"
).split()
LAST_NAMES = "smith jones nguyen garcia okafor kowalski tanaka mueller haddad ivanova".split()
# Letter-only shapes: a bare app (no routing table) cannot tell them from route words.
LETTER_ONLY_STYLES = ("{f}{l}", "{F}{L}", "{f}_{l}", "{f}-{l}", "{F}-{L}", "{f}", "{F}")
OTHER_STYLES = (
    "{F} {L}",
    "{f}.{l}",
    "{F}.{L}",
    "{f}{n}",
    "{f}_{n}",
    "{f}-{n}",
    "{F}{L}{n}",
    "{f}.{l}{n}",
    "{f}+{l}",
    "{F} {L} Jr.",
    "{f}'{l}",
)
LETTER_ONLY = re.compile(r"[A-Za-z]+(?:[-_][A-Za-z]+)*")
DOTTED_LETTERS = re.compile(r"[A-Za-z]+(?:[-_.][A-Za-z]+)*")
NON_ASCII_NAMES = (
    "José Álvarez",
    "Zoë Müller",
    "Łukasz Kowalski",
    "Søren Ørsted",
    "王伟",
    "Дмитрий",
    "محمد",
    "Ngọc Anh",
    "Ἀλέξανδρος",
    "Ñandú",
)
ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


@st.composite
def person_names(draw: st.DrawFn, letter_only: bool = True) -> str:
    styles = OTHER_STYLES + (LETTER_ONLY_STYLES if letter_only else ())
    first, last = draw(st.sampled_from(FIRST_NAMES)), draw(st.sampled_from(LAST_NAMES))
    number = draw(st.text(string.digits, min_size=1, max_size=6))
    return draw(st.sampled_from(styles)).format(
        f=first, l=last, F=first.title(), L=last.title(), n=number
    )


# Record and account handles: a word, maybe a separator, digits (`inv_2024`, `bob-714`, `emp42`).
handles = st.builds(
    "{}{}{}".format,
    st.sampled_from((*FIRST_NAMES, "inv", "ord", "usr", "acct", "emp", "cus", "tkt")),
    st.sampled_from(("", "_", "-", ".")),
    st.text(string.digits, min_size=1, max_size=8),
)

non_ascii_text = st.one_of(
    st.sampled_from(NON_ASCII_NAMES),
    st.text(
        st.characters(min_codepoint=0xA1, categories=("L", "M", "N", "P", "S")),
        min_size=2,
        max_size=12,
    ),
    st.builds(
        lambda name, text: name + text,
        st.sampled_from(FIRST_NAMES),
        st.text(st.characters(min_codepoint=0xA1, categories=("L", "N")), min_size=1, max_size=4),
    ),
).filter(lambda s: not s.isascii())


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """API-key-like: an optional vendor prefix, then 20-40 alphanumerics with a digit in them."""
    prefix = draw(st.sampled_from(("", "ghp_", "sk_live_", "xoxb-", "AKIA", "glpat-", "phc_")))
    body = draw(st.text(ALNUM, min_size=19, max_size=39))
    at = draw(st.integers(0, len(body)))
    return prefix + body[:at] + draw(st.sampled_from(string.digits)) + body[at:]


def _b64json(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


jwts = st.builds(
    lambda alg, sub, name, sig: ".".join(
        (_b64json({"alg": alg, "typ": "JWT"}), _b64json({"sub": sub, "name": name}), sig)
    ),
    st.sampled_from(("HS256", "RS256", "none")),
    st.integers(1, 10**9),
    person_names(),
    st.text(B64URL, min_size=16, max_size=43),
)

uuids = st.builds(
    lambda u, shape: shape(str(u)),
    st.uuids(),
    st.sampled_from(
        (str, str.upper, lambda u: u.replace("-", ""), lambda u: "{" + u + "}", "urn:uuid:".__add__)
    ),
)

numbers = st.integers(100, 10**15).map(str)

emails = st.one_of(
    st.emails(),
    st.builds(
        "{}.{}@{}".format,
        st.sampled_from(FIRST_NAMES),
        st.sampled_from(LAST_NAMES),
        st.sampled_from(("example.com", "corp.internal", "mail.co.uk")),
    ),
)


@st.composite
def percent_encoded(draw: st.DrawFn, letter_only: bool = True) -> str:
    """Every byte as %XX (either case of hex), sometimes encoded twice."""
    base = draw(st.one_of(person_names(letter_only), tokens(), non_ascii_text, emails))
    hex_format = draw(st.sampled_from(("%{:02X}", "%{:02x}")))
    encoded = "".join(hex_format.format(b) for b in base.encode("utf-8"))
    return encoded.replace("%", "%25") if draw(st.booleans()) else encoded


@dataclass(frozen=True)
class Secret:
    kind: str
    text: str

    def in_path(self) -> str:
        """As one URL path segment: percent-encoded kinds as they are, others quoted."""
        return self.text if self.kind == "percent" else quote(self.text, safe="")

    def decoded(self) -> str:
        """What the app sees of `in_path()` once the server decoded it."""
        return unquote(self.text) if self.kind == "percent" else self.text


def secrets(letter_only: bool = True) -> st.SearchStrategy[Secret]:
    """Every kind; `letter_only=False` leaves out the names a bare app may keep (see there)."""
    kinds: list[st.SearchStrategy[Secret]] = [
        person_names(letter_only).map(lambda s: Secret("name", s)),
        handles.map(lambda s: Secret("handle", s)),
        emails.map(lambda s: Secret("email", s)),
        tokens().map(lambda s: Secret("token", s)),
        jwts.map(lambda s: Secret("jwt", s)),
        uuids.map(lambda s: Secret("uuid", s)),
        numbers.map(lambda s: Secret("number", s)),
        percent_encoded(letter_only).map(lambda s: Secret("percent", s)),
        non_ascii_text.map(lambda s: Secret("non-ascii", s)),
    ]
    return st.one_of(kinds)


# -- the rig: one capture endpoint and one Telemetry for the whole module --


@dataclass
class Rig:
    capture: CaptureServer
    telemetry: Telemetry
    home: Path
    project: Path
    fastapi_app: Any
    bare_app: Any
    flask_app: Any

    def facts(self) -> list[str]:
        return machine_facts(self.home, self.project)

    def run(self, secrets: list[str], send: Callable[[], int], event: str = "api_request") -> None:
        """Send (returns how many `event`s it caused), deliver, then search what arrived."""
        start = len(self.capture.bodies)
        expected = send()
        assert self.telemetry.flush(5.0)
        bodies = list(self.capture.bodies[start:])
        names = [e["event"] for raw in bodies for e in events_of(decode_body(raw, "", "", ""))]
        assert names.count(event) == expected, names  # each request went through telemetry
        assert_nothing_leaked(bodies, [*secrets, PROJECT_NAME], self.facts())


async def _bare_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app with no router at all: its middleware has no routing table to consult."""
    status = 404 if "missing" in scope["path"] else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    import examples.fastapi_app.app as fastapi_example
    import examples.flask_app.app as flask_example

    home = tmp_path_factory.mktemp("fuzz-home")
    project = tmp_path_factory.mktemp("fuzz-project")
    capture = CaptureServer().start()
    telemetry = Telemetry(
        "visivo",
        "1.4.0",
        project_name=PROJECT_NAME,
        project_dir=project,
        api_key="phc_test",
        host=capture.url,
        flush_interval=0.05,
        environ={"HOME": str(home), "CI": "false"},  # no os.environ patching at module scope
    )
    with pytest.MonkeyPatch.context() as patch:
        # A number in POST .../runs starts the background task; it need not sleep 0.3 s.
        patch.setattr(fastapi_example, "BACKGROUND_SECONDS", 0.0)
        rig = Rig(
            capture,
            telemetry,
            home,
            project,
            fastapi_app=fastapi_example.create_app(telemetry),
            bare_app=ASGITelemetryMiddleware(_bare_asgi_app, telemetry=telemetry),
            flask_app=flask_example.create_app(telemetry),
        )
        _learn_vocabulary(rig)
        try:
            yield rig
        finally:
            telemetry.shutdown(1.0)
            capture.stop()


BENIGN = Secret("name", "benign")


def _learn_vocabulary(rig: Rig) -> None:
    """Send one of everything with harmless values; what arrives is what bodies always hold."""
    start = len(rig.capture.bodies)
    asyncio.run(_send_asgi(rig.fastapi_app, fastapi_requests(BENIGN)))
    asyncio.run(_send_asgi(rig.bare_app, bare_requests(BENIGN)))
    _send_flask(rig.flask_app, flask_requests(BENIGN))
    with rig.telemetry.track_command(["visivo", "run", "--threads", "4", "--token", "x", "a/b"]):
        pass
    assert rig.telemetry.flush(5.0)
    VOCABULARY.clear()
    VOCABULARY.append(haystack(list(rig.capture.bodies[start:])))
    words = [
        *(v for k, v in vars(path_rules).items() if k.isupper() and isinstance(v, str)),
        *(v for k, v in vars(argv_rules).items() if k.isupper() and isinstance(v, str)),
        "GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH QUERY OTHER",
        "api_request cli_command new_installation",
    ]
    VOCABULARY.append("\n".join(words).lower())


# -- requests --

Request = tuple[str, str, dict[str, Any]]

PREFLIGHT = {"origin": "http://localhost:3000", "access-control-request-method": "GET"}


def _carriers(secret: Secret) -> list[dict[str, Any]]:
    """Every non-path place a request can carry the secret (httpx request keyword arguments)."""
    raw = secret.text.encode("utf-8")
    return [
        {"params": {"q": secret.text, secret.text: "1"}},
        {"headers": {"authorization": b"Bearer " + raw}},
        {"headers": {"x-api-key": raw, "x-user": raw, "user-agent": raw, "referer": raw}},
        {"headers": {"x-forwarded-for": raw, "x-forwarded-host": raw, "x-real-ip": raw}},
        {"headers": {"cookie": b"session=" + raw + b"; " + quote(secret.text).encode() + b"=1"}},
        {"json": {"name": secret.text, secret.text: [secret.text]}},
        {"data": {"user": secret.text, "password": secret.text}},
        {"content": raw, "headers": {"content-type": "text/plain"}},
    ]


def fastapi_requests(secret: Secret) -> list[Request]:
    s = secret.in_path()
    matched = [
        ("GET", f"/api/v1/projects/{s}"),
        ("GET", f"/api/v1/projects/7/charts/{s}"),
        ("GET", f"/api/v1/projects/{s}/charts/{s}"),
        ("GET", f"/api/v1/projects/{s}/files/{s}/{s}.csv"),
        ("POST", f"/api/v1/projects/{s}/runs"),
        ("GET", f"/api/v1/users/{s}"),
        ("DELETE", f"/api/v1/users/{s}"),  # 405
        ("GET", f"/t/{s}/dashboard"),
        ("GET", f"/t/{s}/dashboards/{s}"),
        ("GET", f"/static/{s}"),
        ("GET", f"/admin/jobs/{s}"),  # matched only when the secret is an int
    ]
    unmatched = [
        ("GET", f"/{s}"),
        ("GET", f"/{s}/"),
        ("GET", f"/api/v1/{s}"),
        ("GET", f"/api/v1/projects/7/{s}/{s}"),
        ("GET", f"/api/v1/projects/{s}/"),  # slash redirect
        ("GET", f"/admin/{s}"),
        ("GET", f"/t/{s}/{s}"),
        ("PUT", f"/{s}/users/{s}"),
        ("GET", f"/api/v1/users;jsessionid={s}"),  # a path parameter, servlet style
        ("GET", f"/{s};v=1"),
        ("GET", "/" + "/".join([s] * 14)),  # more segments than are ever kept
    ]
    requests: list[Request] = [(m, p, {}) for m, p in matched + unmatched]
    requests.append(("OPTIONS", f"/api/v1/users/{s}", {"headers": PREFLIGHT}))
    requests.append(("OPTIONS", f"/{s}", {"headers": PREFLIGHT}))
    for extra in _carriers(secret):
        requests.append(("GET", "/api/v1/projects/7", extra))
        requests.append(("POST", "/api/v1/projects/7/runs", extra))
        requests.append(("POST", "/nowhere", extra))
    return requests


def bare_requests(secret: Secret) -> list[Request]:
    s = secret.in_path()
    requests: list[Request] = [
        ("GET", f"/{s}", {}),
        ("GET", f"/missing/{s}/", {}),
        ("GET", f"/api/{s}/items/{s}", {}),
        ("GET", f"/missing;jsessionid={s}", {}),
        ("GET", "/" + "/".join([s] * 14), {}),
    ]
    if not DOTTED_LETTERS.fullmatch(unquote(secret.text)):
        # `alice.smith.json` is shaped like `jquery.min.js`: the same known limit as above.
        requests.append(("POST", f"/{s}.json", {}))
    requests += [("GET", "/missing", extra) for extra in _carriers(secret)]
    return requests


def rooted_requests(secret: Secret) -> list[Request]:
    """Requests under a deployment prefix (`root_path`, `SCRIPT_NAME`) made of the secret."""
    s = secret.in_path()
    return [
        ("GET", f"/{s}/api/v1/users/bob", {}),
        ("GET", f"/{s}/api/v1/projects/7", {}),
        ("GET", f"/{s}/nope/{s}", {}),
        ("GET", f"/{s}", {}),
    ]


async def _send_asgi(app: Any, requests: list[Request], root_path: str = "") -> int:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for method, path, extra in requests:
            await client.request(method, path, **extra)
    return len(requests)


def _count(name: str) -> None:
    EXAMPLES[name] += 1


# -- ASGI: the FastAPI example, with its routing table --


@SETTINGS
@given(secret=secrets())
@example(secret=Secret("name", "alicesmith"))  # letter-only: the routing table must catch it
@example(secret=Secret("name", "Alice Smith"))
def test_fastapi_example_never_sends_a_secret(rig: Rig, secret: Secret) -> None:
    assume(usable(secret.text))
    _count("fastapi")
    rig.run(
        [secret.text], lambda: asyncio.run(_send_asgi(rig.fastapi_app, fastapi_requests(secret)))
    )
    prefix = "/" + secret.decoded()
    rig.run(
        [secret.text],
        lambda: asyncio.run(_send_asgi(rig.fastapi_app, rooted_requests(secret), prefix)),
    )


def test_error_messages_never_leave(rig: Rig) -> None:
    """Both examples' `/boom` raises with a table name in its message: only a 500 is recorded."""

    async def fastapi_boom() -> int:
        transport = httpx.ASGITransport(app=rig.fastapi_app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/boom")).status_code == 500
        return 1

    def flask_boom() -> int:
        response = rig.flask_app.test_client().get("/boom")
        assert response.status_code == 500
        response.close()
        return 1

    message = ["secret-table-name", "the chart renderer crashed", "RuntimeError"]
    rig.run(message, lambda: asyncio.run(fastapi_boom()))
    rig.run(message, flask_boom)


@SETTINGS
@given(secret=secrets(), method=st.text(string.ascii_uppercase, min_size=6, max_size=12))
def test_unknown_methods_never_carry_a_secret(rig: Rig, secret: Secret, method: str) -> None:
    """A custom method made of the secret's own letters is folded into one placeholder."""
    assume(usable(method))
    _count("method")

    async def go() -> int:
        return await _send_asgi(
            rig.fastapi_app, [(method, f"/api/v1/users/{secret.in_path()}", {})]
        )

    rig.run([method], lambda: asyncio.run(go()))


# -- ASGI: an app with no routing table --
#
# Without a routing table the middleware can only judge each segment's shape. Route words are
# letters (`users`, `dashboard`, `getUserById`), and so are many names (`alicesmith`,
# `Alice-Smith`, and `alice.smith.json` next to `jquery.min.js`): a bare app's unmatched path may
# keep a letter-only name as it is. That is the design's known limit (DESIGN.md, "API requests:
# the endpoint", 2.), and why the example apps, which have a routing table, are fuzzed with
# letter-only names as well. Everything the regex fallbacks exist for must still never pass:
# emails, tokens, JWTs, UUIDs, numbers, handles with digits, names with spaces or dots,
# percent-encoded and non-ASCII text.


@SETTINGS
@given(secret=secrets(letter_only=False))
@example(secret=Secret("handle", "bob-123"))  # a handle with three digits once passed as a locale
@example(secret=Secret("handle", "inv_123"))
def test_bare_asgi_app_never_sends_what_the_fallbacks_exist_for(rig: Rig, secret: Secret) -> None:
    assume(usable(secret.text))
    assume(not LETTER_ONLY.fullmatch(unquote(unquote(secret.text))))
    _count("bare-asgi")
    rig.run([secret.text], lambda: asyncio.run(_send_asgi(rig.bare_app, bare_requests(secret))))


def _scope(path: str, raw_path: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@SETTINGS
@given(secret=secrets(letter_only=False), host=person_names(letter_only=False))
def test_bare_asgi_app_absolute_form_targets(rig: Rig, secret: Secret, host: str) -> None:
    """A server may hand over an absolute-form target: the host in it is never kept either."""
    assume(usable(secret.text) and usable(host))
    assume(not LETTER_ONLY.fullmatch(unquote(unquote(secret.text))))
    _count("bare-asgi-scope")
    decoded = unquote(secret.text) if secret.kind == "percent" else secret.text
    host_part = host.replace(" ", "-").replace("/", "-")
    targets = [
        f"http://{host_part}.example.com/missing/{decoded}",
        f"https://{decoded}/x",
        f"//{decoded}/missing",
        f"/{decoded}?{decoded}#{decoded}",
    ]

    async def go() -> int:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        for target in targets:
            raw = target.encode("utf-8", "surrogatepass")
            await rig.bare_app(_scope(target, raw), receive, send)
        return len(targets)

    # Only the host's own label is searched: "example.com" is not a secret.
    rig.run([secret.text, host_part], lambda: asyncio.run(go()))


@SETTINGS
@given(secret=secrets(), data=st.data())
def test_bare_asgi_app_never_keeps_the_piece_of_a_secret_a_long_path_cuts(
    rig: Rig, secret: Secret, data: st.DataObject
) -> None:
    """Only the first 4 KB of a path are read: when that cut falls inside a segment, the piece
    before it (`alice.smi` of `alice.smith@example.com`) is never kept, whatever it looks like."""
    decoded = secret.decoded()
    assume(len(decoded) >= 7 and "/" not in decoded and "?" not in decoded and "#" not in decoded)
    kept = data.draw(st.integers(6, len(decoded) - 1), label="characters before the cut")
    piece = decoded[:kept]
    assume(usable(piece) and piece.strip("/"))
    _count("bare-asgi-cut")
    filler = "b" * (path_rules.MAX_INPUT_CHARS - 2 - kept)  # one long segment: a {token}
    path = f"/{filler}/{decoded}"
    assert path[: path_rules.MAX_INPUT_CHARS].endswith("/" + piece)

    async def go() -> int:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        await rig.bare_app(_scope(path, path.encode("utf-8", "surrogatepass")), receive, send)
        return 1

    rig.run([piece], lambda: asyncio.run(go()))


# -- WSGI: the Flask example --


FLASK_PROJECT = "9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"


def flask_requests(secret: Secret) -> list[Request]:
    """Every route shape of the Flask example, matched and not, and each non-path carrier."""
    s = secret.in_path()
    paths = [
        f"/api/users/by-name/{s}",
        f"/api/users/{s}",  # matched only when the secret is an int
        f"/api/users/424242/orders/{s}",  # matched only when the secret is a UUID
        f"/api/projects/{FLASK_PROJECT}/files/{s}/{s}.csv",
        f"/api/projects/{s}/files/{s}",
        f"/{s}",
        f"/{s}/",
        f"/api/{s}",
        f"/api/users/by-name/{s}/",
        f"/docs/{s}",
        f"/static/{s}",
        "/" + "/".join([s] * 14),
    ]
    requests: list[Request] = [("GET", p, {}) for p in paths]
    requests += [("DELETE", p, {}) for p in paths[:5]]  # 405 on matched paths, else 404
    for extra in _carriers(secret):
        requests += [(m, p, extra) for m, p in (("GET", "/health"), ("POST", "/api/projects"))]
        requests.append(("POST", "/nowhere", extra))
    return requests


def _send_flask(app: Any, requests: list[Request], base_url: str | None = None) -> int:
    """Through Werkzeug's client; `base_url` with a path mounts the app there (SCRIPT_NAME)."""
    client = app.test_client()
    for method, path, extra in requests:
        kwargs = dict(extra)
        if "params" in kwargs:
            kwargs["query_string"] = kwargs.pop("params")
        if "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        # Werkzeug wants text headers: latin-1 carries the secret's UTF-8 bytes unchanged.
        headers = kwargs.pop("headers", {})
        kwargs["headers"] = {
            k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in headers.items()
        }
        # Closing the response closes the app's iterable: that is when WSGI records the event.
        if base_url is not None:
            kwargs["base_url"] = base_url
            path = path.removeprefix("/" + path.split("/")[1])  # the rest, below the mount
        client.open(path, method=method, **kwargs).close()
    return len(requests)


@SETTINGS
@given(secret=secrets())
@example(secret=Secret("name", "alicesmith"))
def test_flask_example_never_sends_a_secret(rig: Rig, secret: Secret) -> None:
    assume(usable(secret.text))
    _count("flask")
    rig.run([secret.text], lambda: _send_flask(rig.flask_app, flask_requests(secret)))
    script_name = "http://localhost/" + secret.in_path()
    rig.run(
        [secret.text],
        lambda: _send_flask(rig.flask_app, rooted_requests(secret), base_url=script_name),
    )


# -- argv through track_command --

COMMAND_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
ARGV_SPELLINGS = (
    ("{s}",),
    ("--name", "{s}"),
    ("--name={s}",),
    ("-n{s}",),
    ("-n", "{s}"),
    ("-n={s}",),
    ("--", "{s}"),
    ("--token", "{s}"),
    ("--password={s}",),
    ("--api-key", "{s}"),
    ("-p{s}",),
    ("--unknown-flag", "{s}"),
    ("--dag-filter", "+{s}+"),
    ("--output-dir", "/home/{s}/out"),
    ("{s}.csv",),
    ("--env", "USER={s}"),
    ("--url", "https://{s}@example.com/x?u={s}"),
    ("-v", "-n", "{s}", "-n", "{s}"),  # repeated
)


@SETTINGS
@given(
    secret=secrets(),
    spellings=st.lists(st.sampled_from(ARGV_SPELLINGS), min_size=1, max_size=5),
    table=st.booleans(),
    commands=st.booleans(),
)
def test_argv_never_sends_a_secret(
    rig: Rig, secret: Secret, spellings: list[tuple[str, ...]], table: bool, commands: bool
) -> None:
    assume(usable(secret.text))
    _count("argv")
    argv = ["visivo", "run"]
    for spelling in spellings:
        argv += [item.format(s=secret.text) for item in spelling]
    options: dict[str, Any] = {}
    if table:
        options = {"value_options": {"--name", "-n", "--threads"}, "flag_options": {"-v"}}

    # Without the tool's command list, a first argument shaped like a command name is kept by
    # design (argv.py's rules); with it, nothing typed first is kept unless it is a command.
    first_is_searched = commands or not COMMAND_SHAPE.fullmatch(secret.text)

    def go() -> int:
        # Also a failure whose message is the secret, and a project named after it.
        with pytest.raises(ValueError), rig.telemetry.track_command(argv, **options) as command:
            command.project_name = secret.text
            raise ValueError(f"cannot open {secret.text}")
        first = ["visivo", secret.text, "--threads", "2"]
        with rig.telemetry.track_command(first, commands={"run", "compile"} if commands else None):
            pass
        return 2

    def go_without_first() -> int:
        with rig.telemetry.track_command(argv, **options):
            pass
        return 1

    rig.run([secret.text], go if first_is_searched else go_without_first, event="cli_command")


def test_example_cli_process_sends_no_argv_value_nor_machine_fact(
    tmp_path: Path, home: Path, capture: CaptureServer
) -> None:
    """The real example CLI, as a process: its argv values and the machine stay at home."""
    hidden = [
        "alice.smith@example.com",
        "Alice Smith",
        "ghp_9xQ2mLk7PzR4tV8wY1bN3cD5",
        "4815162342",
    ]
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "examples.cli_app.cli",
            "run",
            "--dag-filter",
            f"+{hidden[0]}+",
            "--threads",
            "3",
            "--output-dir",
            f"/home/{hidden[1]}/{hidden[2]}/{hidden[3]}",
        ],
        cwd=ROOT,
        env=subprocess_env(home, VISIVO_POSTHOG_HOST=capture.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("ran 3 jobs\n", "")
    events = capture.wait_for(2, timeout=10.0)
    assert sorted(e["event"] for e in events) == ["cli_command", "new_installation"]
    assert_nothing_leaked(list(capture.bodies), hidden, machine_facts(home, tmp_path, ROOT))


# -- the whole module's traffic, and the tally --


def test_zz_machine_facts_never_left_and_examples_ran(rig: Rig) -> None:
    """Everything this module's endpoint ever received, searched once more for the machine.

    Each example already searched its own bodies; this pass also covers the baseline and is kept
    cheap (no masking needed: the random fields are hex and cannot spell a host or a path).
    """
    bodies = list(rig.capture.bodies)
    assert bodies
    facts = [f.lower() for f in rig.facts()]
    for raw in bodies:
        payload = decode_body(raw, "", "", "application/json")
        text = (raw.decode("utf-8", "replace") + json.dumps(payload, ensure_ascii=False)).lower()
        for fact in facts:
            if len(fact) >= 6:
                assert fact not in text, fact
            else:
                assert not re.search(_FACT_BOUNDARY.format(re.escape(fact)), text), fact
    ran = {name: count for name, count in EXAMPLES.items() if count}
    print(f"\nprivacy fuzz examples run: {sum(ran.values())} {dict(sorted(ran.items()))}")
    for name, count in ran.items():
        assert count >= 50, (name, count)  # `assume` must not have discarded most of them
