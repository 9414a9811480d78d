"""The shipped deployment files, checked by the real validators (none is skipped when missing).

- Dockerfile: hadolint clean; its build-stage RUN lines replayed in a fresh virtualenv, and
  the daemon started from that virtualenv against a real server, HEALTHCHECK command included.
- deploy/kubernetes: every variant (base and sidecar, each without and with the Prometheus
  Operator component) rendered with `kubectl kustomize`, every object validated by
  kubernetes-validate (strict) for Kubernetes 1.29 and every newer version it knows;
  the Prometheus Operator kinds it has no schema for are checked by hand here.
- deploy/prometheus: promtool check rules / test rules / check config.
- deploy/grafana and alerts: every PromQL expression parses (promtool) and names only
  metrics that a live daemon exports.

`python -m tests.integration.test_deploy --write-prometheusrule` rewrites the PrometheusRule from alerts.yml.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from janitor import __version__, config
from janitor.dev import demo, embedded
from tests.support import wait_for
from tests.support.deploy import DEPLOY, ROOT, daemon_env, exported_names, running_daemon
from tests.support.servers import ENGINES

BIN = Path(sys.executable).parent
PLAIN = ("base", "sidecar")  # apply on any cluster: no Prometheus Operator CRDs needed
WITH_OPERATOR = tuple(f"with-prometheus-operator/{name}" for name in PLAIN)
K8S_DIRS = PLAIN + WITH_OPERATOR
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}  # CRDs: no schema in kubernetes-validate
UID = 10001


def tool(name: str) -> str:
    """A validator from the venv or PATH; a missing one fails the test (`make test` installs them)."""
    found = shutil.which(name, path=f"{BIN}:{os.environ.get('PATH', '')}")
    assert found, f"{name} is not installed: `make test` installs it (scripts/system-deps.sh or the dev extra)"
    return found


def run(*argv: str, cwd: Path = ROOT, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=300, **kw)


# --- Dockerfile -------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            lines.append(pending)
            pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            out.append([])
        out[-1].append((instruction, args))
    return out


def test_hadolint_clean() -> None:
    lint = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")


def test_dockerfile_shape() -> None:
    """Multi-stage slim base, final stage non-root with a fixed UID, no cache mounts, the right signals."""
    build, final = stages()
    assert build[0] == ("FROM", "python:3.12-slim AS build")
    assert final[0] == ("FROM", "python:3.12-slim")
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)
    final_args = dict(final)
    assert final_args["USER"] == f"{UID}:{UID}"
    assert final_args["STOPSIGNAL"] == "SIGTERM"
    assert final_args["EXPOSE"] == "9810"
    assert json.loads(final_args["CMD"]) == ["celery-janitor", "run"]
    assert "/livez" in final_args["HEALTHCHECK"]
    assert ("COPY", "--from=build /opt/janitor /opt/janitor") in final
    # Nothing is built in the final stage: its only RUN creates the user.
    assert [a for i, a in final if i == "RUN"] == [final_args["RUN"]]
    assert "pip" not in final_args["RUN"]
    assert "--mount" not in (ROOT / "Dockerfile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1:6] == ["**", "!pyproject.toml", "!README.md", "!LICENSE", "!janitor"]


@pytest.mark.parametrize("engine_server", ENGINES[:1], indirect=True)  # one server: the venv is the subject
def test_image_install_replayed_in_a_fresh_venv(server: embedded.Server, tmp_path: Path) -> None:
    """The build stage's COPY and RUN lines, run here with its paths under tmp_path; then the daemon
    from that venv serves /livez, /readyz and /metrics, and the HEALTHCHECK command passes."""
    build, final = stages()
    context, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
    context.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    ran = 0
    for instruction, args in build:
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
        elif instruction == "COPY":
            *sources, dest = args.split()
            target = context / dest.removeprefix("./").rstrip("/") if dest not in {"./", "."} else context
            for source in sources:
                path = ROOT / source
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(path, context / source if dest in {"./", "."} else target)
        elif instruction == "RUN":
            for command in args.split("&&"):
                argv = shlex.split(command.replace("/wheels", str(wheels)).replace("/opt/janitor", str(venv)))
                if argv[0] in {"pip", "python"}:
                    argv = [sys.executable, *(["-m", "pip"] if argv[0] == "pip" else []), *argv[1:]]
                done = run(*argv, cwd=context, env=env)
                assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
                ran += 1
    assert ran == 3  # pip wheel, python -m venv, pip install
    (wheel,) = [p for p in wheels.iterdir() if p.name.startswith("celery_janitor-")]
    with zipfile.ZipFile(wheel) as archive:  # pyproject's license-files: the LICENSE ships in the wheel
        shipped = archive.read(f"celery_janitor-{__version__}.dist-info/licenses/LICENSE")
    assert shipped == (ROOT / "LICENSE").read_bytes()
    where = run(str(venv / "bin" / "python"), "-c", "import janitor; print(janitor.__file__)", cwd=tmp_path, env=env)
    assert str(venv) in where.stdout, where  # the installed wheel, not the work tree

    port = embedded.free_port()
    daemon = daemon_env(server, port)
    with running_daemon([str(venv / "bin" / "celery-janitor"), "run"], daemon, port, tmp_path / "d.log", tmp_path) as j:
        wait_for(lambda: j.get("/readyz")[0] == 200, 15, "/readyz 200")
        assert j.get("/livez") == (200, "ok\n")
        status, text = j.get("/metrics")
        assert status == 200
        assert 'janitor_build_info{version="' in text
        # The Kubernetes memory limit (128Mi) is sized from this: ~53 MB measured, keep headroom.
        status_lines = Path(f"/proc/{j.process.pid}/status").read_text().splitlines()
        rss_kib = next(int(line.split()[1]) for line in status_lines if line.startswith("VmRSS:"))
        print(f"daemon RSS from the image's venv: {rss_kib / 1024:.1f} MiB")
        assert rss_kib < 96 * 1024
        check = json.loads(dict(final)["HEALTHCHECK"].split(" CMD ", 1)[1])
        assert check[0] == "python"
        health = run(str(venv / "bin" / "python"), *check[1:], cwd=tmp_path, env=daemon)
        assert health.returncode == 0, health.stderr
        j.process.terminate()  # STOPSIGNAL SIGTERM: a clean stop
        assert j.process.wait(15) == 0
    health = run(str(venv / "bin" / "python"), *check[1:], cwd=tmp_path, env=daemon)
    assert health.returncode != 0  # and the check does fail once nothing listens


# --- Kubernetes -------------------------------------------------------------------


def render(name: str) -> list[dict[str, Any]]:
    done = run(tool("kubectl"), "kustomize", str(DEPLOY / "kubernetes" / name))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def k8s_versions() -> list[str]:
    """1.29 (first with native sidecars on by default) and every newer minor the validator knows."""
    latest = kubernetes_validate.latest_version()
    major, minor = (int(p) for p in latest.split(".")[:2])
    assert (major, minor) >= (1, 29)
    return [f"1.{m}.0" for m in range(29, minor + 1)]


@pytest.mark.parametrize("name", K8S_DIRS)
def test_kustomize_renders_valid_objects(name: str) -> None:
    objects = render(name)
    kinds = sorted(o["kind"] for o in objects)
    core = ["ConfigMap", "Deployment", "Service"] if name.endswith("base") else ["ConfigMap", "Deployment"]
    assert kinds == sorted(core + (sorted(OPERATOR_KINDS) if name in WITH_OPERATOR else []))
    checked = 0
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            continue  # checked structurally below
        for version in k8s_versions():
            kubernetes_validate.validate(obj, version, strict=True)  # raises on any error
            checked += 1
    assert checked == len(core) * len(k8s_versions())


@pytest.mark.parametrize("name", PLAIN)
def test_the_operator_component_only_adds_its_objects(name: str) -> None:
    """With the component: the same objects, plus the PodMonitor and PrometheusRule, nothing else changed."""
    plain, monitored = render(name), render(f"with-prometheus-operator/{name}")
    assert [o for o in monitored if o["kind"] not in OPERATOR_KINDS] == plain
    assert {o["kind"] for o in plain} & OPERATOR_KINDS == set()


def janitor_container(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, janitor container) of the rendered Deployment."""
    (deployment,) = [o for o in render(name) if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    (container,) = [c for c in containers if c["name"] == "celery-janitor"]
    return pod, container


@pytest.mark.parametrize("name", K8S_DIRS)
def test_janitor_container_is_locked_down(name: str) -> None:
    _pod, c = janitor_container(name)
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["resources"] == {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    assert c["image"] == "ghcr.io/your-org/celery-janitor:0.1.0"
    assert c["args"] == ["celery-janitor", "run"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9810, "protocol": "TCP"}]
    (url,) = [e for e in c["env"] if e["name"] == "JANITOR_REDIS_URL"]
    assert url["valueFrom"] == {"secretKeyRef": {"name": "celery-janitor-redis", "key": "url"}}
    assert c["envFrom"] == [{"configMapRef": {"name": "celery-janitor"}}]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"


@pytest.mark.parametrize("name", [n for n in K8S_DIRS if n.endswith("base")])
def test_base_runs_two_replicas_with_readiness(name: str) -> None:
    pod, c = janitor_container(name)
    (deployment,) = [o for o in render(name) if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2  # safe: the lease
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", [n for n in K8S_DIRS if n.endswith("sidecar")])
def test_sidecar_is_a_native_sidecar_of_the_worker(name: str) -> None:
    objects = render(name)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["metadata"]["name"] == "celery-worker"  # the standalone janitor is gone
    pod, c = janitor_container(name)
    assert [x["name"] for x in pod["initContainers"]] == ["celery-janitor"]
    assert [x["name"] for x in pod["containers"]] == ["worker"]
    assert c["restartPolicy"] == "Always"
    assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert "readinessProbe" not in c  # a sidecar's readiness would gate the worker's


@pytest.mark.parametrize("name", WITH_OPERATOR)
def test_operator_objects(name: str) -> None:
    """PodMonitor and PrometheusRule, checked by hand: kubernetes-validate has no CRD schemas. The
    PodMonitor selects the pods that run the janitor (the worker's, for the sidecar) on their port."""
    objects = render(name)
    by_kind = {o["kind"]: o for o in objects}
    assert {o["kind"] for o in objects} & OPERATOR_KINDS == OPERATOR_KINDS
    for kind in OPERATOR_KINDS:
        assert by_kind[kind]["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(by_kind[kind]) == {"apiVersion", "kind", "metadata", "spec"}
    monitor = by_kind["PodMonitor"]["spec"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ports = {p["name"] for c in template["spec"].get("initContainers", []) for p in c.get("ports", [])}
    ports |= {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in ports
    assert set(monitor["podMetricsEndpoints"][0]) <= {"port", "path", "interval", "scrapeTimeout"}
    # The PrometheusRule carries exactly the rules of deploy/prometheus/alerts.yml.
    assert by_kind["PrometheusRule"]["spec"] == alert_rules()


def test_configmap_settings_are_real_and_valid() -> None:
    (cm,) = [o for o in render("base") if o["kind"] == "ConfigMap"]
    data = cm["data"]
    fields = {f"JANITOR_{name.upper()}" for name in config.Settings.model_fields}
    assert set(data) <= fields, set(data) - fields
    assert all(isinstance(v, str) for v in data.values())
    settings = config.load({**data, "JANITOR_REDIS_URL": "redis://redis:6379/0"})
    assert settings.metrics_port == 9810


# --- KEDA: the example ScaledObject on janitor_queue_backlog ---------------------------

KEDA = DEPLOY / "kubernetes" / "keda"


def keda_validator() -> Any:
    import jsonschema

    schema = json.loads((KEDA / "keda.sh_scaledobjects.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_keda_scaledobject_matches_the_crd_schema() -> None:
    """The example is a valid ScaledObject, scales the worker Deployment on a metric the janitor exports."""
    from janitor.service.metrics import METRICS

    (obj,) = list(yaml.safe_load_all((KEDA / "scaledobject.yaml").read_text()))
    errors = [e.message for e in keda_validator().iter_errors(obj)]
    assert errors == []
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert set(re.findall(r"\b(janitor_\w+|celery_\w+)\b", query)) == {"janitor_queue_backlog"}
    assert METRICS["janitor_queue_backlog"].labels == ("queue_name",)
    assert obj["spec"]["scaleTargetRef"]["name"] == "celery-worker"


def test_keda_schema_rejects_what_the_crd_rejects() -> None:
    """The schema kept in the repository bites: a trigger without metadata, a number as a metadata value,
    an unknown field and an unknown metricType are each refused."""
    (obj,) = list(yaml.safe_load_all((KEDA / "scaledobject.yaml").read_text()))
    validator = keda_validator()
    broken = [
        {**obj, "spec": {**obj["spec"], "triggers": [{"type": "prometheus"}]}},
        {**obj, "spec": {**obj["spec"], "triggers": [{"type": "prometheus", "metadata": {"threshold": 20}}]}},
        {**obj, "spec": {**obj["spec"], "maxReplicas": 3}},
        {**obj, "spec": {**obj["spec"], "triggers": [{**obj["spec"]["triggers"][0], "metricType": "Average"}]}},
    ]
    assert [bool(list(validator.iter_errors(b))) for b in broken] == [True] * len(broken)


def test_keda_is_in_no_kustomization() -> None:
    """KEDA may not be installed: no kustomization pulls the ScaledObject in."""
    for path in (DEPLOY / "kubernetes").rglob("kustomization.yaml"):
        assert "keda" not in path.read_text(), path


# --- The release workflow and the image deploy/ names ---------------------------------

WORKFLOWS = ROOT / ".github" / "workflows"
IMAGE_REF = re.compile(r"ghcr\.io/[\w.-]+/celery-janitor(?::[\w.-]+)?")


def release() -> dict[Any, Any]:
    return yaml.safe_load((WORKFLOWS / "release.yml").read_text())  # type: ignore[no-any-return]


def release_step(job: str, name: str) -> dict[str, Any]:
    (step,) = [s for s in release()["jobs"][job]["steps"] if s.get("name") == name]
    return step  # type: ignore[no-any-return]


def version_step(
    tag: str, owner: str, cwd: Path, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """The build job's version step, run by bash as GitHub runs it (`bash -e`), for ``tag`` and ``owner``."""
    script = release_step("build", "The tag is v + janitor.__version__")["run"]
    output = tmp_path / "github_output"
    output.write_text("")
    env = {"PATH": os.environ["PATH"], "GITHUB_REF_NAME": tag, "GITHUB_REPOSITORY_OWNER": owner}
    done = run("bash", "-e", "-c", script, cwd=cwd, env=env | {"GITHUB_OUTPUT": str(output)})
    return done, dict(line.split("=", 1) for line in output.read_text().splitlines())


def test_workflows_pass_actionlint() -> None:
    """actionlint (with shellcheck on the run: steps) finds nothing in .github/workflows."""
    tool("shellcheck")  # actionlint lints the run: scripts with it when it is on PATH
    files = sorted(str(p.relative_to(ROOT)) for p in WORKFLOWS.glob("*.y*ml"))
    assert files == [".github/workflows/release.yml"]
    done = run(tool("actionlint"), "-no-color", *files)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_release_publishes_on_a_version_tag() -> None:
    """PyPI by trusted publishing, the image for both architectures, every action pinned to a major version."""
    workflow = release()
    assert workflow[True] == {"push": {"tags": ["v*"]}}  # YAML reads the key `on` as True
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    assert release_step("build", "Build the sdist and wheel")["run"].splitlines()[-1] == "python -m build"
    pypi = jobs["pypi"]
    assert pypi["needs"] == "build"
    assert pypi["permissions"] == {"id-token": "write"}
    assert pypi["environment"]["name"] == "pypi"
    assert pypi["steps"][-1] == {"uses": "pypa/gh-action-pypi-publish@release/v1"}
    image = jobs["image"]
    assert image["needs"] == "build"
    assert image["permissions"] == {"contents": "read", "packages": "write"}
    uses = {s["uses"].split("@")[0]: s for s in image["steps"] if "uses" in s}
    assert {"docker/setup-qemu-action", "docker/setup-buildx-action", "docker/login-action"} <= set(uses)
    push = uses["docker/build-push-action"]["with"]
    assert push["platforms"] == "linux/amd64,linux/arm64"
    assert push["push"] is True
    assert push["tags"] == "${{ needs.build.outputs.tags }}"
    assert uses["docker/login-action"]["with"]["registry"] == "ghcr.io"
    refs = [s["uses"] for job in jobs.values() for s in job["steps"] if "uses" in s]
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@(release/)?v\d+", ref) for ref in refs), refs


def test_release_tag_must_match_the_version(tmp_path: Path) -> None:
    done, outputs = version_step(f"v{__version__}", "Your-Org", ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    image = "ghcr.io/your-org/celery-janitor"  # GHCR wants the owner in lower case
    assert outputs == {"version": __version__, "tags": f"{image}:{__version__},{image}:latest"}

    done, outputs = version_step("v9.9.9", "your-org", ROOT, tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith(f"::error::tag v9.9.9 does not match janitor/__init__.py __version__ ({__version__})")
    assert outputs == {}  # nothing is published

    (tmp_path / "janitor").mkdir()
    (tmp_path / "janitor" / "__init__.py").write_text('__version__ = "0.2.0rc1"\n')
    done, outputs = version_step("v0.2.0rc1", "your-org", tmp_path, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert outputs["tags"] == "ghcr.io/your-org/celery-janitor:0.2.0rc1"  # a pre-release is not `latest`


def test_deploy_names_the_image_the_release_pushes(tmp_path: Path) -> None:
    """Every variant's container image, and every image the deploy docs name, is one the release pushes
    for this version (with `your-org` for the repository owner)."""
    done, outputs = version_step(f"v{__version__}", "your-org", ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    pushed = set(outputs["tags"].split(","))
    for name in K8S_DIRS:
        _pod, container = janitor_container(name)
        assert container["image"] in pushed, name
    docs = [*DEPLOY.rglob("*.md"), ROOT / "README.md", ROOT / "Dockerfile"]
    named = {str(path.relative_to(ROOT)): set(IMAGE_REF.findall(path.read_text())) for path in docs}
    assert named["deploy/railway/README.md"]
    assert named["deploy/kubernetes/README.md"]
    repository = {tag.rsplit(":", 1)[0] for tag in pushed}
    for path, refs in named.items():
        assert refs <= pushed | repository, (path, refs - pushed - repository)


def test_release_build_makes_the_sdist_and_wheel(tmp_path: Path) -> None:
    """The build job's `python -m build`, in a fresh venv: both files carry this version and the LICENSE."""
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    source = tmp_path / "src"
    ignored = [line.rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()]
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", *ignored))  # what a checkout has
    for line in release_step("build", "Build the sdist and wheel")["run"].splitlines():
        done = run(*shlex.split(line), cwd=source, env=env)
        assert done.returncode == 0, f"{line}:\n{done.stdout}\n{done.stderr}"
    built = sorted(p.name for p in (source / "dist").iterdir())
    assert built == [f"celery_janitor-{__version__}-py3-none-any.whl", f"celery_janitor-{__version__}.tar.gz"]
    with tarfile.open(source / "dist" / built[1]) as sdist:
        assert f"celery_janitor-{__version__}/LICENSE" in sdist.getnames()
    with zipfile.ZipFile(source / "dist" / built[0]) as wheel:
        metadata = wheel.read(f"celery_janitor-{__version__}.dist-info/METADATA").decode()
        assert f"celery_janitor-{__version__}.dist-info/licenses/LICENSE" in wheel.namelist()
    assert "License-Expression: MIT" in metadata.splitlines()


# --- Prometheus -------------------------------------------------------------------


def alert_rules() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())  # type: ignore[no-any-return]


def test_promtool_check_rules() -> None:
    done = run(tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    rules = sum(len(g["rules"]) for g in alert_rules()["groups"])
    assert f"SUCCESS: {rules} rules found" in done.stdout


def test_promtool_unit_tests_cover_every_alert() -> None:
    done = run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    cases = [case for t in tests for case in t["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    names = {r["alert"] for g in alert_rules()["groups"] for r in g["rules"]}
    assert fired == names
    assert quiet == names


def test_every_alert_is_documented() -> None:
    for group in alert_rules()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
            assert rule["annotations"]["summary"].endswith("."), rule["alert"]
            assert rule["alert"].startswith("Celery"), rule["alert"]


def test_promtool_check_config() -> None:
    done = run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


# --- Grafana and the metric names -------------------------------------------------

METRIC = re.compile(r"\b(?:janitor|celery)_[a-z_]+\b")
PROMETHEUS_OWN = {"up"}


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "celery-janitor.json").read_text())  # type: ignore[no-any-return]


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_exprs() -> list[str]:
    return [r["expr"] for g in alert_rules()["groups"] for r in g["rules"]]


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] == 39
    assert dash["uid"] == "celery-janitor"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"]
            assert all(t["datasource"] == p["datasource"] for t in p["targets"])
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("redis memory", "without ttl", "sweep", "freed keys", "freed bytes", "queue", "stuck", "workers"):
        assert topic in titles, topic


def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses PromQL only inside a rule file: each dashboard query becomes a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$job", ".*")}
        for i, e in enumerate(dashboard_exprs())
        if not e.startswith("label_values(")
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(tool("promtool"), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_queries_name_only_exported_metrics(server: embedded.Server, client: redis.Redis, tmp_path: Path) -> None:
    """A live scrape after a sweep, a census, an INFO read and a broker check: every metric name
    the dashboard and the alerts use is one the daemon exports."""
    demo.fill(client, results=300)  # results without TTL, queued and unacked messages, reply lists
    port = embedded.free_port()
    env = daemon_env(server, port)
    with running_daemon([sys.executable, "-m", "janitor", "run"], env, port, tmp_path / "d.log", ROOT) as j:
        wait_for(lambda: j.sample("janitor_result_oldest_age_seconds") is not None, 20, "a census")
        wait_for(lambda: j.sample("janitor_redis_memory_used_bytes") is not None, 10, "INFO gauges")
        wait_for(lambda: j.sample("celery_queue_length", queue_name="celery") is not None, 20, "a broker check")
        status, text = j.get("/metrics")
    assert status == 200
    exported = exported_names(text) | PROMETHEUS_OWN
    assert "janitor_sweep_duration_seconds_bucket" in exported
    used: dict[str, set[str]] = {}
    for where, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs())):
        for expr in exprs:
            for name in METRIC.findall(expr):
                used.setdefault(name, set()).add(where)
    assert "janitor_result_keys" in used
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"not exported by the daemon: {unknown}"
    assert "up" in " ".join(alert_exprs())


def write_prometheusrule() -> None:
    """Regenerate the component's prometheusrule.yaml from alerts.yml."""

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    labels = {"app.kubernetes.io/name": "celery-janitor", "app.kubernetes.io/component": "janitor"}
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "celery-janitor", "labels": labels},
        "spec": alert_rules(),
    }
    target = DEPLOY / "kubernetes" / "components" / "prometheus-operator" / "prometheusrule.yaml"
    head = "".join(line + "\n" for line in target.read_text().splitlines() if line.startswith("#"))
    target.write_text(head + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1000, allow_unicode=True))


if __name__ == "__main__" and sys.argv[1:] == ["--write-prometheusrule"]:
    write_prometheusrule()
