"""Tell whether this process runs under CI/CD, and under which system.

CI runs get a throwaway ``ci-`` machine id and ``is_ci=true`` so automated traffic is never
counted as a developer. The vendor facts (which variable, which value) come from the ci-info
project's ``vendors.json`` (github.com/watson/ci-info, commit c4e1d056, v4.4.0), plus Mint (RWX),
which ci-info does not list. ``CI=false`` (or ``0``/``no``/``off``) is the explicit way to say
"not CI" from inside a dev container or a Dockerised test suite, so it beats every other marker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["GENERIC_NAME", "VENDORS", "Vendor", "ci_vendor", "detect_ci"]

GENERIC_NAME = "CI"
"""Name reported when only a vendor-neutral flag such as ``CI=true`` says this is CI."""

_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class IsSet:
    """The variable holds a non-empty value (most vendors export a marker like this)."""

    name: str


@dataclass(frozen=True)
class Equals:
    """The variable holds exactly this value (for shared names such as ``CI_NAME``)."""

    name: str
    value: str


@dataclass(frozen=True)
class Contains:
    """The variable's value contains this fragment (Heroku is only visible in a path)."""

    name: str
    fragment: str


@dataclass(frozen=True)
class NotFalse:
    """The variable is set to something other than a false word, so ``X=false`` opts out."""

    name: str


@dataclass(frozen=True)
class AnyOf:
    """At least one of the rules holds (a vendor that renamed its marker keeps both)."""

    rules: tuple[Rule, ...]


Rule: TypeAlias = IsSet | Equals | Contains | NotFalse | AnyOf


@dataclass(frozen=True)
class Vendor:
    """A CI system and the rules that must all hold for it to be detected."""

    name: str
    rules: tuple[Rule, ...]


def _vendor(name: str, *rules: Rule) -> Vendor:
    """Keep the table below to one short line per vendor."""
    return Vendor(name, rules)


# First match wins. A system that imitates another one's variables comes before the one it
# imitates: Gitea Actions also sets GITHUB_ACTIONS, Woodpecker may set Drone's, Jenkins may
# set HUDSON_URL.
VENDORS: tuple[Vendor, ...] = (
    _vendor("Agola CI", IsSet("AGOLA_GIT_REF")),
    _vendor("Alpic", IsSet("ALPIC_HOST")),
    _vendor("Appcircle", IsSet("AC_APPCIRCLE")),
    _vendor("AppVeyor", IsSet("APPVEYOR")),
    _vendor("AWS CodeBuild", IsSet("CODEBUILD_BUILD_ARN")),
    # ci-info now keys on TF_BUILD; older releases used the collection URI, which agents still set.
    _vendor(
        "Azure Pipelines",
        AnyOf((IsSet("TF_BUILD"), IsSet("SYSTEM_TEAMFOUNDATIONCOLLECTIONURI"))),
    ),
    _vendor("Bamboo", IsSet("bamboo_planKey")),
    _vendor("Bitbucket Pipelines", IsSet("BITBUCKET_COMMIT")),
    _vendor("Bitrise", IsSet("BITRISE_IO")),
    _vendor("Buddy", IsSet("BUDDY_WORKSPACE_ID")),
    _vendor("Buildkite", IsSet("BUILDKITE")),
    _vendor("CircleCI", IsSet("CIRCLECI")),
    _vendor("Cirrus CI", IsSet("CIRRUS_CI")),
    _vendor("Cloudflare Pages", IsSet("CF_PAGES")),
    _vendor("Cloudflare Workers", IsSet("WORKERS_CI")),
    _vendor("Codefresh", IsSet("CF_BUILD_ID")),
    _vendor("Codemagic", IsSet("CM_BUILD_ID")),
    _vendor("Codeship", Equals("CI_NAME", "codeship")),
    _vendor("Woodpecker", Equals("CI", "woodpecker")),
    _vendor("Drone", IsSet("DRONE")),
    _vendor("dsari", IsSet("DSARI")),
    _vendor("Earthly", IsSet("EARTHLY_CI")),
    _vendor("Expo Application Services", IsSet("EAS_BUILD")),
    _vendor("Gerrit", IsSet("GERRIT_PROJECT")),
    _vendor("Gitea Actions", IsSet("GITEA_ACTIONS")),
    _vendor("GitHub Actions", IsSet("GITHUB_ACTIONS")),
    _vendor("GitLab CI", IsSet("GITLAB_CI")),
    _vendor("GoCD", IsSet("GO_PIPELINE_LABEL")),
    _vendor("Google Cloud Build", IsSet("BUILDER_OUTPUT")),
    _vendor("Harness CI", IsSet("HARNESS_BUILD_ID")),
    _vendor("Heroku", Contains("NODE", "/app/.heroku/node/bin/node")),
    _vendor("Jenkins", IsSet("JENKINS_URL"), IsSet("BUILD_ID")),
    _vendor("Hudson", IsSet("HUDSON_URL")),
    _vendor("LayerCI", IsSet("LAYERCI")),
    _vendor("Magnum CI", IsSet("MAGNUM")),
    # Not in ci-info. RWX's own test tool (rwx-research/captain) reads MINT=true, later RWX=true,
    # and tells users to set RWX=false when they are not on RWX.
    _vendor("Mint (RWX)", AnyOf((NotFalse("RWX"), NotFalse("MINT")))),
    _vendor("Netlify CI", IsSet("NETLIFY")),
    _vendor("Nevercode", IsSet("NEVERCODE")),
    _vendor("Prow", IsSet("PROW_JOB_ID")),
    _vendor("ReleaseHub", IsSet("RELEASE_BUILD_ID")),
    _vendor("Render", IsSet("RENDER")),
    _vendor("Sail CI", IsSet("SAILCI")),
    _vendor("Screwdriver", IsSet("SCREWDRIVER")),
    _vendor("Semaphore", IsSet("SEMAPHORE")),
    _vendor("Sourcehut", Equals("CI_NAME", "sourcehut")),
    _vendor("Strider CD", IsSet("STRIDER")),
    _vendor("TaskCluster", IsSet("TASK_ID"), IsSet("RUN_ID")),
    _vendor("TeamCity", IsSet("TEAMCITY_VERSION")),
    _vendor("Travis CI", IsSet("TRAVIS")),
    _vendor("Vela", IsSet("VELA")),
    _vendor("Vercel", AnyOf((IsSet("NOW_BUILDER"), IsSet("VERCEL")))),
    _vendor("Visual Studio App Center", IsSet("APPCENTER_BUILD_ID")),
    _vendor("Xcode Cloud", IsSet("CI_XCODE_PROJECT")),
    _vendor("Xcode Server", IsSet("XCS")),
)

# Vendor-neutral signals ci-info accepts on top of its vendor list. CI and CONTINUOUS_INTEGRATION
# are booleans, so their false words do not count; the rest are ids where any value means a build.
_GENERIC_RULES: tuple[Rule, ...] = (
    NotFalse("CI"),
    NotFalse("CONTINUOUS_INTEGRATION"),
    IsSet("BUILD_ID"),
    IsSet("BUILD_NUMBER"),
    IsSet("CI_APP_ID"),
    IsSet("CI_BUILD_ID"),
    IsSet("CI_BUILD_NUMBER"),
    IsSet("CI_NAME"),
    IsSet("RUN_ID"),
)

# Checked last: a CI job inside a container should report its vendor, not the container.
_KUBERNETES_VARIABLE = "KUBERNETES_SERVICE_HOST"
_CONTAINER_FILES: tuple[tuple[str, str], ...] = (
    ("/run/.containerenv", "Podman"),
    ("/.dockerenv", "Docker"),
)


def _read(environ: Mapping[str, str], name: str) -> str:
    """Return the trimmed value, or "" so unset, empty and unreadable all look the same."""
    try:
        raw = environ.get(name)
    except Exception:
        return ""
    return raw.strip() if isinstance(raw, str) else ""


def _is_false_word(value: str) -> bool:
    """Spot the spellings people use to switch a flag off."""
    return value.lower() in _FALSE_WORDS


def _holds(rule: Rule, environ: Mapping[str, str]) -> bool:
    """Evaluate one rule; an empty variable never satisfies anything."""
    if isinstance(rule, AnyOf):
        return any(_holds(inner, environ) for inner in rule.rules)
    value = _read(environ, rule.name)
    if not value:
        return False
    if isinstance(rule, IsSet):
        return True
    if isinstance(rule, Equals):
        return value == rule.value
    if isinstance(rule, Contains):
        return rule.fragment in value
    return not _is_false_word(value)


def _exists(path_exists: Callable[[str], bool], path: str) -> bool:
    """Probe a marker file without letting a broken filesystem or fake take the caller down."""
    try:
        return bool(path_exists(path))
    except Exception:
        return False


def ci_vendor(
    environ: Mapping[str, str], path_exists: Callable[[str], bool] = os.path.exists
) -> str | None:
    """Name the CI system (or container) this runs in, or None; an explicit CI=false wins."""
    if _is_false_word(_read(environ, "CI")):
        return None
    for vendor in VENDORS:
        if all(_holds(rule, environ) for rule in vendor.rules):
            return vendor.name
    if any(_holds(rule, environ) for rule in _GENERIC_RULES):
        return GENERIC_NAME
    if _read(environ, _KUBERNETES_VARIABLE):
        return "Kubernetes"
    for path, name in _CONTAINER_FILES:
        if _exists(path_exists, path):
            return name
    return None


def detect_ci(
    environ: Mapping[str, str], path_exists: Callable[[str], bool] = os.path.exists
) -> bool:
    """Say whether events from this process should be flagged as automated traffic."""
    return ci_vendor(environ, path_exists) is not None
