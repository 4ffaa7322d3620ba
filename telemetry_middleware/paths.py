"""Turn request paths and route templates into low-cardinality, anonymous endpoint names.

An endpoint is sent with every `api_request` event, so it must never carry user data (ids, emails,
tokens, names) and must not explode into one value per request. Two entry points:

* `template_endpoint` for a matched route: the framework's template is the truth, only its syntax
  is unified (`{name}` everywhere) and its size capped.
* `normalize_path` for a raw path with no template (404s, redirects, CORS preflights, apps with no
  router): each segment is judged on its own and anything that may identify something is replaced
  by a placeholder.

Segment rules of `normalize_path`, first match wins (a rule judges the whole segment, never a part):

* `{id}`      ASCII integers of any length, optionally negative (`7`, `-3`, `123456789012`);
              24-hex MongoDB ObjectIds (a database key, like an integer).
* `{email}`   anything containing `@` (or a percent-encoded `%40`).
* `{value}`   non-ASCII segments, percent-encoded segments, and the fallback for anything that is
              neither an identifier of a known shape nor a safe word (`user123`, `a1b2c3`,
              `inv_2024_0001`, `alice.smith`, `~bob`, `1.5`, `{id}` sent raw).
* `{uuid}`    dashed UUIDs, any case.
* `{ulid}`    ULIDs (26 Crockford base32 characters, first one 0-7).
* `{hash}`    hex strings of 8 to 128 characters (md5, sha1, sha256, sha512, short shas, `deadbeef`)
              and 7-character hex mixing digits and letters (git short shas). A compact 32-hex UUID
              is also `{hash}`: it cannot be told from an md5, and a shape-only rule keeps one route
              one endpoint.
* `{date}`    ISO dates and datetimes (`2024-01-31`, `2024-01-31T10:00:00Z`).
* `{token}`   JWTs, anything longer than 32 characters, and 16+ character base64-like strings that
              are not words.
* kept        safe words: letters in lower, Title or camelCase form joined by `-`/`_`, optionally a
              leading `.`/`_` (`.well-known`, `_next`) and a known file extension (`openapi.json`);
              versions (`v1`, `v10`, `v2beta1`); a small allowlist of words with digits (`oauth2`,
              `sha256`, `i18n`, ...); locale tags (`en-US`, `pt_BR`, `zh-Hant`, `es-419`).

An all-hex-letter word of 8 or more characters (`deadbeef`, `facadeface`) becomes `{hash}`: at that
length a hex-only word is far likelier a digest than a route name (`defaced` and `effaced` have 7).

When the app's routing table is known (`static_segments`), a segment that is not one of its static
segments is never kept, whatever it looks like: it gets the matching placeholder or `{value}`.

Output shape: always starts with `/`, empty segments collapse, a trailing `/` is kept when the input
had one (slash redirects make `/users/` and `/users` different requests), at most 12 segments and
256 characters, segments over 64 characters are `{token}`; whatever is cut is marked by a final
`{...}` segment.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator

__all__ = [
    "normalize_method",
    "normalize_path",
    "static_segments_of",
    "template_endpoint",
]

MAX_SEGMENTS = 12
MAX_SEGMENT_CHARS = 64
MAX_CHARS = 256
# Only this much of a raw path is ever looked at, so a 1 MB path costs what a 4 KB one does.
MAX_INPUT_CHARS = 4096
# Longer (necessarily odd) paths skip the cache: they would pin memory and rarely repeat.
_MAX_CACHED_KEY_CHARS = 512

ID = "{id}"
UUID = "{uuid}"
ULID = "{ulid}"
HASH = "{hash}"
DATE = "{date}"
EMAIL = "{email}"
TOKEN = "{token}"
VALUE = "{value}"
TRUNCATED = "{...}"

_MAX_WORD_CHARS = 32
_MIN_TOKEN_CHARS = 16
_MAX_HASH_CHARS = 128
_HEX_CHARS = "0123456789abcdefABCDEF"
_HEX_LETTERS = "abcdefABCDEF"
_DIGITS = "0123456789"

# Words with digits that name algorithms, protocols and formats, not records.
_DIGIT_WORDS = (
    "oauth1 oauth2 sha1 sha224 sha256 sha384 sha512 sha3 md5 crc32 hs256 rs256 es256 ed25519 "
    "s3 ec2 utf8 utf16 http2 http3 base32 base64 x509 pkcs7 pkcs12 p12 ipv4 ipv6 i18n l10n a11y "
    "k8s 2fa mp3 mp4 m4a m4v m3u8 h264 h265 woff2 bz2 e2e p2p b2b b2c 2d 3d web3 w3c x86 x64 "
    "amd64 arm64 win32 win64 py3 es5 es6"
).split()
# File extensions that make `name.ext` a static file rather than, say, `first.last` or a hostname.
_EXTENSIONS = (
    "json yaml yml xml txt html htm css js mjs cjs map ico png jpg jpeg gif svg webp avif bmp "
    "woff woff2 ttf otf eot pdf csv tsv zip gz tgz tar bz2 xz md rst wasm mp3 mp4 webm ogg wav "
    "m3u8 webmanifest php asp aspx jsp cgi"
).split()

_ATOM = r"[A-Za-z][a-z]*(?:[A-Z][a-z]+)*"
_VERSION = r"v[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}(?:(?:alpha|beta|rc)[0-9]{0,3})?"
_PART = rf"(?:{_VERSION}|{'|'.join(_DIGIT_WORDS)}|{_ATOM})"
_NAME = rf"{_PART}(?:[-_]{_PART})*"
_EXT = "|".join(_EXTENSIONS)
_KEEP_RE = re.compile(rf"(?:\.|_{{1,2}})?{_NAME}(?:(?:\.{_NAME})*\.(?:{_EXT}))?_{{0,2}}")
_WORD_RE = re.compile(_ATOM)
_CAPITAL_RE = re.compile(r"[A-Z]")
# The one numeric region in common use is 419 (Latin America): any three digits would also keep
# handles and record keys such as `bob_714` or `inv-123`.
_LOCALE_RE = re.compile(r"[a-z]{2,3}(?:[-_][A-Z][a-z]{3})?(?:[-_](?:[A-Z]{2}|419))?")

_NEGATIVE_INT_RE = re.compile(r"-[0-9]+")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}")
_DATE_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[Tt _][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2}(?:[.,][0-9]+)?)?)?"
    r"(?:[Zz]|[-+][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){1,4}")
_TOKENISH_RE = re.compile(r"[A-Za-z0-9+=_~.-]+")

# Starlette `{name}` / `{name:converter}` (aiohttp allows one level of braces in its regex).
_STARLETTE_PARAM_RE = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::(?:[^{}]|\{[^{}]*\})*)?\}")
# Werkzeug `<name>` / `<converter:name>` / `<converter(args):name>`, as Werkzeug itself parses it.
_WERKZEUG_PARAM_RE = re.compile(
    r"<\s*(?:[A-Za-z_][A-Za-z0-9_]*\s*(?:\(.*?\))?\s*:\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*>"
)

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
OTHER_METHOD = "OTHER"
_MAX_METHOD_CHARS = max(len(m) for m in _METHODS)


def normalize_method(method: str) -> str:
    """Keep standard methods as sent; fold everything else into one value so it cannot leak."""
    if not isinstance(method, str) or len(method) > _MAX_METHOD_CHARS:
        return OTHER_METHOD
    return method if method in _METHODS else OTHER_METHOD


def _few_capitals(seg: str) -> bool:
    """Tell `getUserById` (a route name) from `AbCdEfGh` (random letters that look camelCase)."""
    return 3 * len(_CAPITAL_RE.findall(seg)) <= len(seg)


def _is_camel_word(seg: str) -> bool:
    return _WORD_RE.fullmatch(seg) is not None and _few_capitals(seg)


def _classify(seg: str) -> str:
    """Return `seg` when it is a safe word, else the placeholder for its shape."""
    n = len(seg)
    if seg.isdigit() and seg.isascii():
        return ID
    if "@" in seg:
        return EMAIL
    if not seg.isascii():
        return VALUE
    if "%" in seg:
        return EMAIL if "%40" in seg else VALUE
    if seg.isalpha():
        # Fast path for the common case: a plain word.
        if 8 <= n <= _MAX_HASH_CHARS and not seg.strip(_HEX_LETTERS):
            return HASH
        if n > _MAX_WORD_CHARS:
            return TOKEN
        if seg.islower() or _is_camel_word(seg):
            return seg
        return TOKEN if n >= _MIN_TOKEN_CHARS else VALUE
    if 7 <= n <= _MAX_HASH_CHARS and not seg.strip(_HEX_CHARS):
        # All hex with both digits and letters: all-digit and all-letter ones returned above.
        return ID if n == 24 else HASH
    if n == 36 and _UUID_RE.fullmatch(seg):
        return UUID
    if n == 26 and _ULID_RE.fullmatch(seg):
        return ULID
    if seg[0] in _DIGITS and _DATE_RE.fullmatch(seg):
        return DATE
    if seg.startswith("eyJ") and _JWT_RE.fullmatch(seg):
        return TOKEN
    if seg[0] == "-" and _NEGATIVE_INT_RE.fullmatch(seg):
        return ID
    if n > _MAX_WORD_CHARS:
        return TOKEN
    if _LOCALE_RE.fullmatch(seg):
        return seg
    if _KEEP_RE.fullmatch(seg) and (seg.islower() or _few_capitals(seg)):
        return seg
    if n >= _MIN_TOKEN_CHARS and _TOKENISH_RE.fullmatch(seg):
        return TOKEN
    return VALUE


def _placeholder(seg: str, static_segments: frozenset[str] | None) -> str:
    """Judge one raw segment; with a routing table only the app's own words survive."""
    if static_segments is None:
        return _classify(seg)
    if seg in static_segments:
        return seg if len(seg) <= MAX_SEGMENT_CHARS else TOKEN
    judged = _classify(seg)
    return VALUE if judged == seg else judged


def _join(segments: Iterator[str], trailing_slash: bool, truncated: bool) -> str:
    """Assemble capped segments into `/a/b`, marking anything cut with a final `{...}`."""
    out: list[str] = []
    used = 0
    budget = MAX_CHARS - len(TRUNCATED) - 1
    for seg in segments:
        if len(out) == MAX_SEGMENTS or used + 1 + len(seg) > budget:
            truncated = True
            break
        out.append(seg)
        used += 1 + len(seg)
    if truncated:
        out.append(TRUNCATED)
    elif trailing_slash and out:
        out.append("")
    return "/" + "/".join(out)


def _strip_authority(path: str) -> str:
    """Drop `scheme://host` from an absolute-form target so no hostname is ever kept."""
    if path.startswith("/"):
        return path
    sep = path.find("://")
    if 0 < sep <= 16 and path[:sep].isalpha():
        rest = path[sep + 3 :]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else ""
    return path


def _normalize_uncached(path: str, static_segments: frozenset[str] | None, cut: bool) -> str:
    """Normalise a query-free path; `cut` means the input was cut inside its last segment."""
    path = _strip_authority(path)
    raw = path.split("/")
    if cut and len(raw[-1]) <= MAX_SEGMENT_CHARS:
        # A short piece may be the prefix of a secret (`alice` of `alice@example.com`): drop it.
        # A long one can only become a placeholder, which is worth keeping.
        raw.pop()
    segments = (_placeholder(s, static_segments) for s in raw if s)
    return _join(segments, trailing_slash=path.endswith("/") and not cut, truncated=cut)


_normalize_cached = functools.lru_cache(maxsize=2048)(_normalize_uncached)


def normalize_path(path: str, static_segments: frozenset[str] | None = None) -> str:
    """Give a raw request path an endpoint name that carries no identifiers and bounded size."""
    try:
        head = path[:MAX_INPUT_CHARS]
        cut = len(path) > MAX_INPUT_CHARS
        for mark in ("?", "#"):
            end = head.find(mark)
            if end >= 0:
                head = head[:end]
                cut = False
        if len(head) > _MAX_CACHED_KEY_CHARS:
            return _normalize_uncached(head, static_segments, cut)
        return _normalize_cached(head, static_segments, cut)
    except Exception:
        # Only a caller breaking the types gets here; telemetry must still never fail a request.
        return "/" + VALUE


def _unify_template(template: str) -> str:
    """Rewrite every framework's parameter syntax to `{name}`."""
    if "{" in template:
        template = _STARLETTE_PARAM_RE.sub(r"{\1}", template)
    if "<" in template:
        template = _WERKZEUG_PARAM_RE.sub(r"{\1}", template)
    return template


def _cap_template_segment(seg: str) -> str:
    """Keep the developer's own segment, unless it is too long or unprintable to send."""
    if len(seg) > MAX_SEGMENT_CHARS:
        return TOKEN
    if not seg.isprintable():
        return VALUE
    return seg


@functools.lru_cache(maxsize=1024)
def _template_endpoint(template: str) -> str:
    unified = _unify_template(template[:MAX_INPUT_CHARS])
    raw = unified.split("/")
    cut = len(template) > MAX_INPUT_CHARS
    if cut:
        raw.pop()
    segments = (_cap_template_segment(s) for s in raw if s)
    return _join(segments, trailing_slash=unified.endswith("/") and not cut, truncated=cut)


def template_endpoint(template: str) -> str:
    """Give a matched route's template the one output form every framework shares."""
    try:
        return _template_endpoint(template)
    except Exception:
        return "/" + VALUE


def _is_static(seg: str) -> bool:
    return "{" not in seg and "}" not in seg


def static_segments_of(templates: Iterable[str]) -> frozenset[str]:
    """Collect the app's own literal segments, the only words an unmatched path may keep."""
    found: set[str] = set()
    for template in templates:
        endpoint = template_endpoint(template)
        found.update(s for s in endpoint.split("/") if s and _is_static(s))
    return frozenset(found)
