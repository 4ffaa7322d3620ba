"""CI detection: every vendor, the generic flags, containers, and the CI=false opt-out.

The machine running these tests is itself a Docker container and may carry CI variables, so
every case passes its own environ and a fake path_exists; nothing reads the real machine.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from telemetry_middleware.ci import GENERIC_NAME, VENDORS, ci_vendor, detect_ci


def no_files(path: str) -> bool:
    """Stand-in filesystem with no container markers."""
    return False


def files(*present: str) -> Callable[[str], bool]:
    """Stand-in filesystem where only the given paths exist."""
    wanted = frozenset(present)
    return lambda path: path in wanted


# Written out by hand from ci-info's vendors.json rather than derived from the module's table,
# so a typo in either one shows up as a failure.
VENDOR_CASES: list[tuple[str, dict[str, str]]] = [
    ("Agola CI", {"AGOLA_GIT_REF": "refs/heads/main"}),
    ("Alpic", {"ALPIC_HOST": "alpic.example"}),
    ("Appcircle", {"AC_APPCIRCLE": "true"}),
    ("AppVeyor", {"APPVEYOR": "True"}),
    ("AWS CodeBuild", {"CODEBUILD_BUILD_ARN": "arn:aws:codebuild:eu-west-1:1:build/p:1"}),
    ("Azure Pipelines", {"TF_BUILD": "True"}),
    ("Azure Pipelines", {"SYSTEM_TEAMFOUNDATIONCOLLECTIONURI": "https://dev.azure.com/org/"}),
    ("Bamboo", {"bamboo_planKey": "PROJ-PLAN"}),
    ("Bitbucket Pipelines", {"BITBUCKET_COMMIT": "abc123"}),
    ("Bitrise", {"BITRISE_IO": "true"}),
    ("Buddy", {"BUDDY_WORKSPACE_ID": "42"}),
    ("Buildkite", {"BUILDKITE": "true"}),
    ("CircleCI", {"CIRCLECI": "true"}),
    ("Cirrus CI", {"CIRRUS_CI": "true"}),
    ("Cloudflare Pages", {"CF_PAGES": "1"}),
    ("Cloudflare Workers", {"WORKERS_CI": "1"}),
    ("Codefresh", {"CF_BUILD_ID": "5f1"}),
    ("Codemagic", {"CM_BUILD_ID": "7"}),
    ("Codeship", {"CI_NAME": "codeship"}),
    ("Drone", {"DRONE": "true"}),
    ("dsari", {"DSARI": "1"}),
    ("Earthly", {"EARTHLY_CI": "true"}),
    ("Expo Application Services", {"EAS_BUILD": "true"}),
    ("Gerrit", {"GERRIT_PROJECT": "tools"}),
    ("Gitea Actions", {"GITEA_ACTIONS": "true"}),
    ("GitHub Actions", {"GITHUB_ACTIONS": "true"}),
    ("GitLab CI", {"GITLAB_CI": "true"}),
    ("GoCD", {"GO_PIPELINE_LABEL": "12"}),
    ("Google Cloud Build", {"BUILDER_OUTPUT": "/builder/outputs"}),
    ("Harness CI", {"HARNESS_BUILD_ID": "3"}),
    ("Heroku", {"NODE": "/app/.heroku/node/bin/node"}),
    ("Hudson", {"HUDSON_URL": "http://hudson.local/"}),
    ("Jenkins", {"JENKINS_URL": "http://jenkins.local/", "BUILD_ID": "17"}),
    ("LayerCI", {"LAYERCI": "true"}),
    ("Magnum CI", {"MAGNUM": "true"}),
    ("Mint (RWX)", {"RWX": "true"}),
    ("Mint (RWX)", {"MINT": "true"}),
    ("Netlify CI", {"NETLIFY": "true"}),
    ("Nevercode", {"NEVERCODE": "true"}),
    ("Prow", {"PROW_JOB_ID": "a1b2"}),
    ("ReleaseHub", {"RELEASE_BUILD_ID": "9"}),
    ("Render", {"RENDER": "true"}),
    ("Sail CI", {"SAILCI": "true"}),
    ("Screwdriver", {"SCREWDRIVER": "true"}),
    ("Semaphore", {"SEMAPHORE": "true"}),
    ("Sourcehut", {"CI_NAME": "sourcehut"}),
    ("Strider CD", {"STRIDER": "true"}),
    ("TaskCluster", {"TASK_ID": "fJ3k", "RUN_ID": "0"}),
    ("TeamCity", {"TEAMCITY_VERSION": "2024.03"}),
    ("Travis CI", {"TRAVIS": "true"}),
    ("Vela", {"VELA": "true"}),
    ("Vercel", {"VERCEL": "1"}),
    ("Vercel", {"NOW_BUILDER": "1"}),
    ("Visual Studio App Center", {"APPCENTER_BUILD_ID": "11"}),
    ("Woodpecker", {"CI": "woodpecker"}),
    ("Xcode Cloud", {"CI_XCODE_PROJECT": "App.xcodeproj"}),
    ("Xcode Server", {"XCS": "1"}),
]

CASE_IDS = [f"{name}:{','.join(env)}" for name, env in VENDOR_CASES]


def test_every_vendor_in_the_table_has_a_case() -> None:
    assert {name for name, _ in VENDOR_CASES} == {vendor.name for vendor in VENDORS}


def test_table_covers_ci_info_and_mint() -> None:
    # ci-info v4.4.0 lists 53 vendors; Mint (RWX) is the one addition.
    assert len(VENDORS) == 54
    assert len({vendor.name for vendor in VENDORS}) == len(VENDORS)


@pytest.mark.parametrize(("name", "env"), VENDOR_CASES, ids=CASE_IDS)
def test_vendor_detected_by_its_own_variables(name: str, env: dict[str, str]) -> None:
    assert detect_ci(env, no_files) is True
    assert ci_vendor(env, no_files) == name


@pytest.mark.parametrize(("name", "env"), VENDOR_CASES, ids=CASE_IDS)
def test_ci_false_overrides_every_vendor(name: str, env: dict[str, str]) -> None:
    opted_out = {**env, "CI": "false"}
    assert detect_ci(opted_out, no_files) is False
    assert ci_vendor(opted_out, no_files) is None


@pytest.mark.parametrize(("name", "env"), VENDOR_CASES, ids=CASE_IDS)
def test_empty_vendor_variables_do_not_count(name: str, env: dict[str, str]) -> None:
    blanked = {key: "" for key in env}
    assert detect_ci(blanked, no_files) is False
    assert ci_vendor(blanked, no_files) is None


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_github_actions_is_not_ci(value: str) -> None:
    assert detect_ci({"GITHUB_ACTIONS": value}, no_files) is False


def test_jenkins_needs_both_variables() -> None:
    assert detect_ci({"JENKINS_URL": "http://jenkins.local/"}, no_files) is False
    # BUILD_ID on its own is one of ci-info's generic signals, but it does not name Jenkins.
    assert ci_vendor({"BUILD_ID": "17"}, no_files) == GENERIC_NAME


def test_taskcluster_needs_both_variables() -> None:
    assert detect_ci({"TASK_ID": "fJ3k"}, no_files) is False
    assert ci_vendor({"RUN_ID": "0"}, no_files) == GENERIC_NAME


def test_heroku_with_another_node_path_is_not_ci() -> None:
    assert detect_ci({"NODE": "/usr/local/bin/node"}, no_files) is False


@pytest.mark.parametrize("ci_name", ["Codeship ", "travis", "drone"])
def test_ci_name_with_another_value_is_only_generic(ci_name: str) -> None:
    # ci-info counts any CI_NAME as CI, but only its exact value names Codeship or Sourcehut.
    assert ci_vendor({"CI_NAME": ci_name}, no_files) == GENERIC_NAME


def test_ci_with_another_value_is_not_woodpecker() -> None:
    assert ci_vendor({"CI": "drone"}, no_files) == GENERIC_NAME


@pytest.mark.parametrize("flag", ["RWX", "MINT"])
@pytest.mark.parametrize("value", ["false", "0", "No", ""])
def test_mint_flag_switched_off_is_not_mint(flag: str, value: str) -> None:
    assert detect_ci({flag: value}, no_files) is False


def test_imitating_systems_report_themselves() -> None:
    # Gitea Actions exports GITHUB_ACTIONS too; Jenkins may still export HUDSON_URL.
    gitea = {"GITEA_ACTIONS": "true", "GITHUB_ACTIONS": "true"}
    assert ci_vendor(gitea, no_files) == "Gitea Actions"
    jenkins = {"JENKINS_URL": "http://j/", "BUILD_ID": "1", "HUDSON_URL": "http://j/"}
    assert ci_vendor(jenkins, no_files) == "Jenkins"


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE", "True", " yes "])
def test_truthy_ci_flag(value: str) -> None:
    assert detect_ci({"CI": value}, no_files) is True
    assert ci_vendor({"CI": value}, no_files) == GENERIC_NAME


@pytest.mark.parametrize("value", ["false", "0", "no", "off", "FALSE", "Off", " false ", ""])
def test_false_or_empty_ci_flag_alone_is_not_ci(value: str) -> None:
    assert detect_ci({"CI": value}, no_files) is False


@pytest.mark.parametrize("value", ["false", "0", "no", "off", "NO", "False", "  off\n"])
def test_false_ci_flag_overrides_a_vendor(value: str) -> None:
    assert detect_ci({"CI": value, "GITHUB_ACTIONS": "true"}, no_files) is False


def test_empty_ci_flag_does_not_override() -> None:
    assert ci_vendor({"CI": "", "GITHUB_ACTIONS": "true"}, no_files) == "GitHub Actions"


@pytest.mark.parametrize(
    "variable", ["CONTINUOUS_INTEGRATION", "BUILD_NUMBER", "RUN_ID", "BUILD_ID", "CI_BUILD_ID"]
)
def test_generic_signals(variable: str) -> None:
    assert ci_vendor({variable: "1"}, no_files) == GENERIC_NAME
    assert detect_ci({variable: ""}, no_files) is False
    assert detect_ci({variable: "1", "CI": "false"}, no_files) is False


def test_continuous_integration_false_is_not_ci() -> None:
    assert detect_ci({"CONTINUOUS_INTEGRATION": "false"}, no_files) is False


def test_vendor_beats_generic_flag() -> None:
    assert ci_vendor({"CI": "true", "GITLAB_CI": "true"}, no_files) == "GitLab CI"


CONTAINER_CASES: list[tuple[str, dict[str, str], Callable[[str], bool]]] = [
    ("Docker", {}, files("/.dockerenv")),
    ("Podman", {}, files("/run/.containerenv")),
    ("Kubernetes", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, no_files),
]


@pytest.mark.parametrize(
    ("name", "env", "exists"), CONTAINER_CASES, ids=[case[0] for case in CONTAINER_CASES]
)
def test_container_markers(name: str, env: dict[str, str], exists: Callable[[str], bool]) -> None:
    assert detect_ci(env, exists) is True
    assert ci_vendor(env, exists) == name


@pytest.mark.parametrize(
    ("name", "env", "exists"), CONTAINER_CASES, ids=[case[0] for case in CONTAINER_CASES]
)
@pytest.mark.parametrize("off", ["false", "0", "no", "OFF"])
def test_ci_false_overrides_containers(
    name: str, env: dict[str, str], exists: Callable[[str], bool], off: str
) -> None:
    assert detect_ci({**env, "CI": off}, exists) is False


def test_empty_kubernetes_variable_is_not_ci() -> None:
    assert detect_ci({"KUBERNETES_SERVICE_HOST": ""}, no_files) is False


def test_other_files_are_not_markers() -> None:
    assert detect_ci({}, files("/.dockerenv.bak", "/run/containerenv")) is False


def test_vendor_inside_docker_reports_the_vendor() -> None:
    assert ci_vendor({"CIRCLECI": "true"}, files("/.dockerenv")) == "CircleCI"


def test_clean_environment_is_not_ci() -> None:
    probed: list[str] = []

    def record(path: str) -> bool:
        probed.append(path)
        return False

    assert detect_ci({}, record) is False
    assert ci_vendor({}, record) is None
    assert "/.dockerenv" in probed
    assert "/run/.containerenv" in probed


def test_unrelated_variables_are_not_ci() -> None:
    env = {"HOME": "/home/dev", "PATH": "/usr/bin", "TERM": "xterm", "NODE_ENV": "dev"}
    assert detect_ci(env, no_files) is False


@pytest.mark.parametrize("error", [OSError("denied"), PermissionError(13, "denied"), ValueError()])
def test_failing_path_probe_does_not_raise(error: Exception) -> None:
    def broken(path: str) -> bool:
        raise error

    assert detect_ci({}, broken) is False
    assert ci_vendor({}, broken) is None
    assert ci_vendor({"TRAVIS": "true"}, broken) == "Travis CI"


def test_path_probe_only_runs_when_needed() -> None:
    probed: list[str] = []

    def record(path: str) -> bool:
        probed.append(path)
        return True

    assert ci_vendor({"GITHUB_ACTIONS": "true"}, record) == "GitHub Actions"
    assert ci_vendor({"CI": "false"}, record) is None
    assert probed == []
