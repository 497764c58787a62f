"""The container image and deploy/, tested on a machine without a Docker engine.

- The Dockerfile is linted (hadolint), and the image it describes is reproduced outside a container: a wheel
  built from the same files, installed the same way into a fresh venv, started with the Dockerfile's own
  ENV and CMD (parsed from it, so the two cannot drift) from a directory that is not the repository.
- deploy/ is linted (yamllint), the Kubernetes manifests are validated against the API schemas
  (kubernetes-validate, offline) and checked against each other and the Dockerfile.
- The compose topology runs on loopback: two gateway processes on one Redis behind an nginx that reads
  deploy/nginx.conf itself, with a request flow that crosses replicas.

Missing tools (hadolint, yamllint, kubernetes-validate, nginx) fail the tests rather than skip them: CI
installs them, and a silently skipped deploy test is how a broken image ships.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from app.settings import Settings
from tests.conftest import leak_checked_client, wait_completed
from tests.invalid_bodies import KLING, VALID_BODIES
from tests.redis_server import redis_url
from tests.servers import ROOT, Server, free_port, start_emulator, start_gateway, wait_completed_flow

DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NGINX_TEMPLATE = DEPLOY / "nginx.conf"
# The oldest Kubernetes minor the manifests promise to work on; kubernetes-validate ships its schemas in
# the package (no download), for a window of versions that includes this one.
K8S_VERSION = "1.30.0"
REDIS_URL = redis_url(12)  # a db of its own: test_callers uses 13
# Where the image keeps its venv (the builder creates it there and the final stage copies it as is).
IMAGE_VENV = "/opt/venv"


def tool(name: str) -> str:
    """A test tool from the project venv (the `test` extra), or a clear failure."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it comes with the test extra (pip install -e '.[test]')")
    return found


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


# --- the Dockerfile, as data -----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in the stage FROM {self.base}, found {len(found)}"
        return found[0]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of instructions, with Docker's own line rules: comments dropped, continuations joined."""
    stages: list[Stage] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue  # Docker drops comment lines even inside a continuation
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = (pending + raw).strip(), ""
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(base=parts[0], name=parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD in exec form: the JSON array Docker runs without a shell."""
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), f"not an exec-form array: {args}"
    return argv


def image_env(stage: Stage, base_env: dict[str, str]) -> dict[str, str]:
    """The environment the stage's ENV lines produce over `base_env` (the base image's), $VAR expanded."""
    env = dict(base_env)
    for args in stage.all("ENV"):
        for token in shlex.split(args):
            assert "=" in token, f"ENV must use key=value (the legacy `ENV key value` is ambiguous): {args}"
            key, value = token.split("=", 1)
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


def healthcheck_argv(stage: Stage) -> list[str]:
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(\[.*\])", stage.one("HEALTHCHECK"))
    assert match, "HEALTHCHECK must be `[--options] CMD [exec form]`"
    return exec_form(match.group(1))


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    return stages[0]


# --- Dockerfile: lint and static properties ----------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    # .hadolint.yaml does not exist on purpose: no rule is ignored. Add one only with the reason next to it.
    result = run([tool("hadolint"), "--format", "json", str(DOCKERFILE)])
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], (
        "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings) or result.stderr
    )


def test_dockerfile_shape(stages: list[Stage], builder: Stage, final: Stage) -> None:
    assert len(stages) == 2, "a builder stage and a final stage"
    assert builder.name == "builder"
    # Same base for both: the venv's python symlink points into the base image's /usr/local.
    assert final.base == builder.base
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), f"an official slim Python 3.11, by tag: {final.base}"

    copies_from = [args for args in final.all("COPY") if args.startswith("--from")]
    assert copies_from == [f"--from=builder {IMAGE_VENV} {IMAGE_VENV}"], (
        "the final stage takes the venv and nothing else"
    )
    assert not final.all("ADD")
    for command in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apk|pip|gcc|curl|wget)\b", command), (
            f"build tools in the final stage: {command}"
        )

    user = final.one("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"a fixed non-root uid, numeric so runAsNonRoot can verify it: {user}"
    assert final.one("EXPOSE") == "8000"
    assert final.one("STOPSIGNAL") == "SIGTERM"
    assert json.loads(final.one("VOLUME")) == ["/data"]

    env = image_env(final, {"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert env["FALGATE_HOST"] == "0.0.0.0"
    assert env["FALGATE_PORT"] == "8000"
    assert env["FALGATE_STORE_URL"] == "sqlite:////data/falgate.db"
    # Proxy headers stay trusted from loopback only unless the operator names the load balancer.
    assert "FALGATE_TRUSTED_PROXIES" not in env
    for stage in stages:
        for keyword in ("ENV", "ARG"):
            for args in stage.all(keyword):
                assert not re.search(r"FAL_KEY|SECRET|TOKEN|API_KEYS|PASSWORD", args), (
                    f"a secret baked in: {keyword} {args}"
                )

    assert exec_form(final.one("CMD")) == ["falgate", "serve"]
    assert not final.all("ENTRYPOINT"), "CMD alone, so that `docker run IMAGE falgate keys new NAME` works"
    check = healthcheck_argv(final)
    assert check[0] == "python" and "urllib" in check[-1] and "/healthz" in check[-1]


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (
        ".git",
        ".venv",
        "**/node_modules",
        "**/__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "tests/artifacts",
        ".env",
        "**/*.db",
    ):
        assert entry in ignored, f".dockerignore should exclude {entry}"


# --- the image, reproduced outside a container -------------------------------------------------------------


def remap(value: str, mapping: dict[str, Path]) -> str:
    """Container paths to host paths, like the bind mounts a `docker run -v` would add."""
    for inside, outside in mapping.items():
        value = re.sub(rf"(?<![\w.]){re.escape(inside)}(?=/|:|$)", str(outside), value)
    return value


def wheel_members(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def package_data_files() -> list[str]:
    """Non-Python files under app/ that pyproject's package-data promises to ship."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    files = {p for pattern in patterns for p in (ROOT / "app").rglob(pattern) if p.is_file()}
    return sorted(str(p.relative_to(ROOT)) for p in files)


def test_the_image_runs_from_its_wheel_with_its_own_env_and_cmd(builder: Stage, final: Stage, tmp_path: Path) -> None:
    # 1. The builder's inputs, copied as its COPY lines name them: the wheel sees nothing else.
    src = tmp_path / "src"
    src.mkdir()
    for args in builder.all("COPY"):
        assert not args.startswith("--"), f"a plain COPY of the build inputs: {args}"
        *sources, _dest = args.split()
        for name in sources:
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, src / name)

    # 2. The builder's RUN, step for step: a wheel, a pip-less venv, the wheel installed into it by an
    #    outside pip (here the project venv's, there the base image's).
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(src)])
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("falgate-*.whl")
    members = wheel_members(wheel)
    assert "app/emulator/assets/sample.mp4" in members
    missing = [name for name in package_data_files() if name not in members]
    assert not missing, f"package data left out of the wheel: {missing}"
    assert not [m for m in members if m.startswith(("tests/", "bench/", "deploy/"))]

    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    installed = run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", str(wheel)]
    )
    assert installed.returncode == 0, installed.stderr

    # 3. The image's environment: the base image's PATH and LANG, then the Dockerfile's ENV lines, with its
    #    paths mapped to this machine. Nothing of this process's environment leaks in (no FAL_KEY, no
    #    PYTHONPATH): emulator mode, and only the venv can provide `app`.
    data, workdir = tmp_path / "data", tmp_path / "workdir"
    data.mkdir()
    workdir.mkdir()
    mapping = {IMAGE_VENV: venv, json.loads(final.one("VOLUME"))[0]: data}
    base_env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    env = {key: remap(value, mapping) for key, value in image_env(final, base_env).items()}
    assert "FAL_KEY" not in env
    port = free_port()
    # What `docker run -p PORT:PORT -e ...` would add: another port (8000 may be taken here), shorter jobs.
    env.update(FALGATE_PORT=str(port), FALGATE_EMULATOR_JOB_SECONDS="1")

    located = run([str(venv / "bin" / "python"), "-c", "import app; print(app.__file__)"], cwd=workdir, env=env)
    assert located.stdout.startswith(str(venv)), f"app imported from outside the venv: {located.stdout}{located.stderr}"

    cmd = exec_form(final.one("CMD"))
    executable = shutil.which(cmd[0], path=env["PATH"])
    assert executable and executable.startswith(str(venv)), f"{cmd[0]} should be the venv's entry point: {executable}"
    healthcheck = healthcheck_argv(final)
    assert (shutil.which(healthcheck[0], path=env["PATH"]) or "").startswith(str(venv))

    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", proc, lines)
        health = httpx.get(url + "/healthz")
        assert health.status_code == 200 and health.json()["upstream"] == "emulator", health.text
        # Listening on FALGATE_HOST=0.0.0.0, not just loopback: reachable at this machine's own address.
        own_address = outbound_address()
        if own_address:
            assert httpx.get(f"http://{own_address}:{port}/healthz", timeout=5, trust_env=False).status_code == 200

        # The HEALTHCHECK, exactly as Docker would run it inside the container.
        probe = run(healthcheck, cwd=workdir, env=env)
        assert probe.returncode == 0, probe.stderr

        with httpx.Client(base_url=url, timeout=30) as client:
            result = wait_completed_flow(client, KLING, VALID_BODIES[KLING])
            video = client.get(result["video"]["url"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        assert video.content[4:8] == b"ftyp", "the MP4 asset shipped in the wheel"
        assert (data / "falgate.db").exists(), "the default SQLite store lives in the data volume"
        assert not list(workdir.iterdir()), "nothing is written to the working directory"

        # STOPSIGNAL SIGTERM: a graceful shutdown well within the grace period. uvicorn re-raises the signal
        # once done, so the status is "killed by SIGTERM" (143 to Docker) either way; the log tells them apart.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM), "".join(lines)
        reader.join(timeout=5)
        assert "Application shutdown complete" in "".join(lines)
        # FALGATE_LOG_FORMAT=json: every line is one JSON object, as log collectors expect.
        assert all(json.loads(line) for line in lines if line.strip()), "".join(lines)
        failing = run(healthcheck, cwd=workdir, env=env)
        assert failing.returncode != 0, "the HEALTHCHECK must fail when nothing answers"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen, lines: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            time.sleep(0.2)
            raise AssertionError(f"exited with {proc.returncode}:\n{''.join(lines)}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{''.join(lines)}")


def outbound_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: routable in form only
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


# --- deploy/: lint, schemas, consistency --------------------------------------------------------------------


def test_yamllint_deploy() -> None:
    result = run([tool("yamllint"), "--strict", "--config-file", str(ROOT / ".yamllint.yaml"), str(DEPLOY)])
    assert result.returncode == 0, result.stdout + result.stderr


def k8s_files() -> list[Path]:
    # kustomization.yaml is kustomize's, not an API object: it has no schema and is checked separately.
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> dict[str, dict]:
    objects: dict[str, dict] = {}
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def test_kubernetes_manifests_validate_offline() -> None:
    # --strict also rejects unknown fields, so a misspelt key fails here instead of being dropped by the API.
    result = run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", K8S_VERSION, *map(str, k8s_files())])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_kubernetes_manifests_agree_with_each_other_and_the_image(final: Stage) -> None:
    objects = k8s_objects()
    for kind in (
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ):
        assert any(key.startswith(kind + "/") for key in objects), f"no {kind} in deploy/k8s"
    deployment = objects["Deployment/falgate"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] >= 2

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == final.one("USER").split(":")[0], "the image's uid"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp_mount["name"])
    assert container["ports"][0]["containerPort"] == int(final.one("EXPOSE"))

    sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
    config = objects[f"ConfigMap/{sources[0]}"]["data"]
    secret = objects[f"Secret/{sources[1]}"]["stringData"]
    assert "FAL_KEY" in secret and "FAL_KEY" not in config
    assert all(v.startswith("REPLACE") for v in secret.values()), "the Secret in the repository is a template"
    assert config["FALGATE_STORE_URL"].startswith(("redis://", "rediss://")), "replicas share one store"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = float(pre_stop[-1]) if pre_stop[0] == "sleep" else 0.0
    assert spec["terminationGracePeriodSeconds"] > pause + float(config["FALGATE_SHUTDOWN_GRACE_SECONDS"])
    for key in config:
        assert key.removeprefix("FALGATE_").lower() in Settings.model_fields, f"{key} is not a setting"

    service = objects["Service/falgate"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    hpa = objects["HorizontalPodAutoscaler/falgate"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == "falgate"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = objects["PodDisruptionBudget/falgate"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    redis_service = config["FALGATE_STORE_URL"].split("//")[1].split(":")[0]
    assert f"Service/{redis_service}" in objects, "the trial Redis answers at the name FALGATE_STORE_URL uses"

    # apply -k: everything but the Secret template (which would overwrite the real Secret) and the trial Redis.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in k8s_files()} - {"secret.example.yaml", "redis.yaml"}
    assert set(kustomization["resources"]) == expected


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def compose_env(service: dict) -> dict[str, str | None]:
    """A service's environment as a dict; None marks a name passed through from the host unchanged."""
    raw = service.get("environment", {})
    if isinstance(raw, dict):
        return {k: None if v is None else str(v) for k, v in raw.items()}
    return {item.partition("=")[0]: (item.partition("=")[2] if "=" in item else None) for item in raw}


def test_compose_topology(final: Stage) -> None:
    spec = compose()
    services = spec["services"]
    assert {"falgate-1", "falgate-2", "nginx", "redis"} <= set(services)
    port = image_env(final, {})["FALGATE_PORT"]
    subnet = spec["networks"]["falgate"]["ipam"]["config"][0]["subnet"]
    for name in ("falgate-1", "falgate-2"):
        service = services[name]
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        env = compose_env(service)
        for secret in ("FAL_KEY", "FALGATE_API_KEYS", "FALGATE_WEBHOOK_SECRET"):
            assert env.get(secret, "absent") is None, f"{secret} is passed through, never written in the file"
        assert env["FALGATE_STORE_URL"] == "redis://redis:6379/0"
        assert env["FALGATE_PUBLIC_URL"].endswith(":8080}"), "the load balancer's URL by default"
        assert env["FALGATE_TRUSTED_PROXIES"] == subnet
        assert float(service["stop_grace_period"].rstrip("s")) > float(env["FALGATE_SHUTDOWN_GRACE_SECONDS"])
        assert "healthcheck" not in service, "the image's HEALTHCHECK applies"
        assert services["nginx"]["depends_on"][name]["condition"] == "service_healthy"

    nginx = services["nginx"]
    assert "8080:8080" in nginx["ports"]
    assert "./nginx.conf:/etc/nginx/templates/nginx.conf.template:ro" in nginx["volumes"]
    nginx_env = compose_env(nginx)
    assert nginx_env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert nginx_env["LB_LISTEN"] == "8080"
    assert [nginx_env["LB_UPSTREAM_1"], nginx_env["LB_UPSTREAM_2"]] == [f"falgate-1:{port}", f"falgate-2:{port}"]
    # The compose file fills in exactly the template's placeholders, as the loopback test below does.
    assert {k for k in nginx_env if k.startswith(nginx_env["NGINX_ENVSUBST_FILTER"])} == placeholders()
    assert "healthcheck" in nginx and "healthcheck" in services["redis"]


# --- nginx.conf: its settings, then the topology on loopback -------------------------------------------------


def placeholders() -> set[str]:
    return set(re.findall(r"\$\{(LB_\w+)\}", NGINX_TEMPLATE.read_text()))


def render_nginx_conf(values: dict[str, str]) -> str:
    """deploy/nginx.conf with its ${LB_*} placeholders filled in, as the nginx image's entrypoint does."""
    assert set(values) == placeholders(), f"the template's placeholders are {sorted(placeholders())}"
    return re.sub(r"\$\{(LB_\w+)\}", lambda m: values[m.group(1)], NGINX_TEMPLATE.read_text())


def directive(conf: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", conf, re.MULTILINE)


def size_in_bytes(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def test_nginx_conf_suits_streams_uploads_and_websockets() -> None:
    conf = NGINX_TEMPLATE.read_text()
    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    assert directive(conf, "proxy_buffering") == ["off"], "SSE must not be buffered"
    assert directive(conf, "proxy_http_version") == ["1.1"]
    assert directive(conf, "keepalive"), "upstream keep-alive"
    assert size_in_bytes(directive(conf, "client_max_body_size")[0]) > defaults["max_body_bytes"]
    read_timeouts = [int(v.rstrip("s")) for v in directive(conf, "proxy_read_timeout")]
    assert min(read_timeouts) > defaults["run_timeout"], "sync runs may take FALGATE_RUN_TIMEOUT"
    headers = {h.split()[0].lower(): h.split(None, 1)[1] for h in directive(conf, "proxy_set_header")}
    assert {"x-forwarded-for", "x-forwarded-proto", "upgrade", "connection"} <= set(headers)
    assert re.search(r"location\s+/v1/ws\s*\{", conf)
    for log_format in directive(conf, "log_format"):
        # EventSource and WebSocket clients send their key as ?access_token=: no variable with the query.
        assert not re.search(r"\$(request|request_uri|args|query_string)\b", log_format), log_format


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        pytest.fail("nginx is not installed: apt-get install nginx (Debian's package; `make test` installs it as root)")
    return found


class Nginx:
    def __init__(self, binary: str, conf: str, port: int) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="falgate-nginx-"))
        (self.prefix / "nginx.conf").write_text(conf)
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            # pid goes on the command line: the template names no path so it runs under any prefix.
            [
                binary,
                "-p",
                f"{self.prefix}/",
                "-c",
                str(self.prefix / "nginx.conf"),
                "-g",
                f"daemon off; pid {self.prefix}/nginx.pid;",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{''.join(self.lines)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nginx did not listen in time:\n{''.join(self.lines)}")

    def upstreams_used(self) -> set[str]:
        return set(re.findall(r"upstream=(\S+)", "".join(self.lines)))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


KEYS = {"alice": "alice-key-" + uuid.uuid4().hex, "bob": "bob-key-" + uuid.uuid4().hex}


@dataclass
class Topology:
    nginx: Nginx
    gateways: list[Server]

    def client(self, who: str, via: str | Server) -> httpx.Client:
        base = via.url if isinstance(via, Server) else via
        return leak_checked_client(base, headers={"Authorization": f"Bearer {KEYS[who]}"})


@pytest.fixture(scope="module")
def topology(nginx_binary: str) -> Iterator[Topology]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    emulator = start_emulator(job_seconds=2.0)
    lb_port = free_port()
    env = {
        "FALGATE_STORE_URL": REDIS_URL,
        "FALGATE_PUBLIC_URL": f"http://127.0.0.1:{lb_port}",
        "FALGATE_AUTH": "api_key",
        "FALGATE_API_KEYS": ",".join(f"{who}:{key}" for who, key in KEYS.items()),
        # Three submits a minute per caller, counted across both replicas.
        "FALGATE_RATE_LIMIT_SUBMIT": "3/minute",
    }
    gateways: list[Server] = []
    nginx = None
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(start_gateway, emulator, **env) for _ in range(2)]:
                gateways.append(future.result())
        conf = render_nginx_conf(
            {
                "LB_LISTEN": f"127.0.0.1:{lb_port}",
                "LB_UPSTREAM_1": f"127.0.0.1:{gateways[0].port}",
                "LB_UPSTREAM_2": f"127.0.0.1:{gateways[1].port}",
            }
        )
        nginx = Nginx(nginx_binary, conf, lb_port)
        yield Topology(nginx, gateways)
    finally:
        if nginx is not None:
            nginx.stop()
        for gateway in gateways:
            gateway.stop()
        emulator.stop()


def test_a_request_flow_crosses_replicas(topology: Topology) -> None:
    lb, (g1, g2) = topology.nginx, topology.gateways
    with topology.client("alice", lb.url) as alice, topology.client("bob", lb.url) as bob:
        assert alice.get("/healthz").status_code == 200

        submitted = alice.post(f"/{KLING}", json=VALID_BODIES[KLING])
        assert submitted.status_code == 200, submitted.text
        body = submitted.json()
        assert body["status_url"].startswith(lb.url + "/"), "URLs point at the load balancer"
        wait_completed(alice, body["status_url"])
        assert alice.get(body["response_url"]).status_code == 200
        assert lb.upstreams_used() == {f"127.0.0.1:{g1.port}", f"127.0.0.1:{g2.port}"}, "nginx used both replicas"

        # Each replica, asked directly, knows the request and its owner from the shared store.
        path = body["status_url"].removeprefix(lb.url)
        for gateway in (g1, g2):
            with topology.client("alice", gateway) as owner, topology.client("bob", gateway) as other:
                assert owner.get(path).status_code == 200, f"the owner, via {gateway.url}"
                assert other.get(path).status_code == 404, f"another caller, via {gateway.url}"
        assert bob.get(path).status_code == 404

        # The status stream comes through as it happens: the first event arrives while the job still runs.
        # (The gateway's X-Accel-Buffering: no would lift nginx's buffering for this response anyway; the
        # proxy_buffering check above covers the responses that do not send it.)
        second = alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
        events: list[dict] = []
        with alice.stream("GET", second["status_url"] + "/stream") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1]["status"] == "COMPLETED":
                        break
        assert events[0]["status"] in ("IN_QUEUE", "IN_PROGRESS"), events
        assert events[-1]["status"] == "COMPLETED"

    # The submit limit is one budget across replicas: two used through nginx, one on g1, none left on g2.
    with topology.client("alice", g1) as on_g1, topology.client("alice", g2) as on_g2:
        assert on_g1.post(f"/{KLING}", json=VALID_BODIES[KLING]).status_code == 200
        refused = on_g2.post(f"/{KLING}", json=VALID_BODIES[KLING])
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0


def test_nginx_lets_the_gateway_answer_oversized_bodies(topology: Topology) -> None:
    # Bigger than the gateway's FALGATE_MAX_BODY_BYTES, within nginx's client_max_body_size: the caller
    # gets the gateway's JSON 413, not nginx's HTML page.
    limit = Settings.model_fields["max_body_bytes"].default
    oversized = b'{"prompt": "' + b"x" * (limit + 1024) + b'"}'
    with topology.client("bob", topology.nginx.url) as bob:
        response = bob.post(f"/{KLING}", content=oversized, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]
