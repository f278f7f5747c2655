"""The deployment check that scripts/check-deploy runs (it installs what this needs first).

1. Kubernetes manifests (deploy/kubernetes/*.yaml) against Kubernetes' own JSON schemas, strict
   (unknown fields refused), for the oldest and newest version checked; then what a schema cannot
   see: the grace period against --shutdown-grace, the probes against the ports and paths the
   server really serves, the volume against --data-dir, the Secret references, the selectors,
   the cluster's node ids, PodDisruptionBudget and anti-affinity. A self-test first proves that
   both checks refuse a broken manifest.
2. The container image: docker/Dockerfile's runtime stage (its last FROM to the end), built with
   buildah on a Debian bookworm root filesystem made here by mmdebstrap (no registry is
   reachable: neither `rust:` nor `debian:` can be pulled), with the release binary cargo built.
3. The image run with podman, as an orchestrator would run it (read-only root file system, the
   image's own non-root user, the journal on a volume), checked from outside the container:
   - the image's defaults (`CMD ["serve"]`, a token secret, nothing else): /readyz, /metrics,
     gRPC health Check, Publish and ListEvents with the project's CLI, the compose files' health
     check command, SIGTERM within the grace, and the journal still there after a restart;
   - each manifest's container command line and environment exactly as written (Secret values
     and the pod name filled in as the kubelet would), with `serve --check`, then started against
     the real RabbitMQ: the single node until /readyz is 200, the cluster as two nodes that
     share one stream, where an event a producer publishes to the exchange is read back from
     both nodes at the same cursor.
   Broker names are made unique per run and removed afterwards (RabbitMQ is shared).

Nothing here needs a Kubernetes cluster, and nothing Kubernetes itself does (scheduling, the
kubelet's probes, volumes, the PodDisruptionBudget's effect) is exercised: docs/operating.md says which
parts ran and which were only validated.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pika
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = {
    "single-node": ROOT / "deploy/kubernetes/single-node.yaml",
    "cluster": ROOT / "deploy/kubernetes/cluster.yaml",
}
COMPOSE_FILES = [ROOT / "docker/compose.yaml", ROOT / "docker/compose.cluster.yaml"]
DOCKERFILE = ROOT / "docker/Dockerfile"
# The oldest Kubernetes the manifests are meant for (gRPC probes are GA from 1.27) and the newest
# the validator ships schemas of.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
CONTAINER = "notify-backbone"
BASE_IMAGE = "localhost/notify-backbone-base:bookworm"
IMAGE = "localhost/notify-backbone:check-deploy"
# A container reaches the host's loopback (where the machine's RabbitMQ listens) at this address
# through slirp4netns with allow_host_loopback.
HOST_FROM_CONTAINER = "10.0.2.2"
# How long a server in the image may take to answer /readyz after its start.
READY_TIMEOUT_S = 60.0
# One attempt at making the base root file system (1.5 minutes on a busy machine).
MMDEBSTRAP_TIMEOUT_S = 360.0

results: list[tuple[str, bool, str]] = []


class CheckFailed(Exception):
    """A check that did not hold; its message says what and why."""


def record(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(
        f"check-deploy: {'ok' if ok else 'FAILED'}: {name}{': ' + detail if detail else ''}",
        flush=True,
    )
    if not ok:
        raise CheckFailed(f"{name}: {detail}")


def run(
    cmd: list[str], *, check: bool = True, capture: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, text=True, capture_output=capture, **kwargs)
    if check and done.returncode != 0:
        raise CheckFailed(
            f"{' '.join(cmd[:6])} ... exited {done.returncode}: {(done.stderr or '')[-2000:]}"
        )
    return done


def run_bounded(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess | None:
    """`cmd` in a process group of its own; None if it ran longer than `timeout_s` (then the
    whole group gets SIGTERM, which lets mmdebstrap unmount and remove its chroot, and SIGKILL
    30 s later)."""
    process = subprocess.Popen(
        cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        return None
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


# ---------------------------------------------------------------------------------------------
# 1. Manifests


def load_manifest(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == kind]


def duration_seconds(text: str) -> float:
    """A humantime duration as the server's flags take it (`20s`, `1m30s`, `500ms`)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise CheckFailed(f"cannot read the duration {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def serve_flags(args: list[str]) -> dict[str, str]:
    """`serve --name=value ...` as a dict; manifests write every flag in the `=` form, so a flag
    cannot be misread as another's value."""
    if not args or args[0] != "serve":
        raise CheckFailed(f"args must start with `serve`: {args}")
    flags = {}
    for arg in args[1:]:
        match = re.fullmatch(r"--([a-z0-9-]+)(?:=(.*))?", arg)
        if not match:
            raise CheckFailed(f"write each flag as --name=value: {arg!r}")
        flags[match.group(1)] = match.group(2) if match.group(2) is not None else "true"
    return flags


def image_user() -> str:
    users = [
        line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("USER ")
    ]
    if len(users) != 1:
        raise CheckFailed(f"docker/Dockerfile must have one USER line, has {users}")
    return users[0]


def manifest_problems(mode: str, docs: list[dict]) -> list[str]:
    """What is inconsistent in one manifest; empty when it holds together."""
    problems: list[str] = []

    def expect(cond: bool, text: str) -> None:
        if not cond:
            problems.append(text)

    sets = of_kind(docs, "StatefulSet")
    if len(sets) != 1:
        return [f"one StatefulSet expected, found {len(sets)}"]
    sts = sets[0]
    pod = sts["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    containers = [c for c in spec["containers"] if c["name"] == CONTAINER]
    if len(containers) != 1:
        return [f"one container named {CONTAINER} expected"]
    ctr = containers[0]
    try:
        flags = serve_flags(ctr.get("args", []))
    except CheckFailed as error:
        return [str(error)]
    expect(
        sts["spec"]["selector"]["matchLabels"].items() <= labels.items(),
        "StatefulSet selector does not match its pods",
    )

    # Shutdown: the kubelet's SIGKILL comes after terminationGracePeriodSeconds; the server stops
    # by itself after --shutdown-grace. A little above, not much (a stuck pod should go soon).
    if "shutdown-grace" not in flags:
        problems.append(
            "--shutdown-grace must be given explicitly, to match terminationGracePeriodSeconds"
        )
    else:
        grace = duration_seconds(flags["shutdown-grace"])
        period = spec.get("terminationGracePeriodSeconds", 30)
        expect(
            grace < period <= grace + 10,
            f"terminationGracePeriodSeconds {period} is not a little above --shutdown-grace {grace:g}s",
        )

    # Ports and probes against what the server serves: gRPC (and its health service) on --listen,
    # /metrics and /readyz on --metrics-listen (src/telemetry.rs).
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}

    def port_of(flag: str) -> int | None:
        value = flags.get(flag)
        return int(value.rsplit(":", 1)[1]) if value else None

    expect(
        flags.get("listen", "").startswith("0.0.0.0:"),
        "--listen must listen beyond loopback in a pod",
    )
    expect(
        flags.get("metrics-listen", "").startswith("0.0.0.0:"),
        "--metrics-listen must listen beyond loopback in a pod",
    )
    expect(
        ports.get("grpc") == port_of("listen"),
        f"containerPort grpc {ports.get('grpc')} is not --listen's port",
    )
    expect(
        ports.get("metrics") == port_of("metrics-listen"),
        f"containerPort metrics {ports.get('metrics')} is not --metrics-listen's port",
    )

    def probe_port(port) -> int | None:
        return ports.get(port) if isinstance(port, str) else port

    ready = ctr.get("readinessProbe", {}).get("httpGet", {})
    expect(
        ready.get("path") == "/readyz"
        and probe_port(ready.get("port")) == port_of("metrics-listen"),
        "readinessProbe must GET /readyz on the metrics port",
    )
    for name in ("livenessProbe", "startupProbe"):
        probe = ctr.get(name, {})
        if "grpc" in probe:
            expect(
                probe["grpc"].get("service", "") == ""
                and probe_port(probe["grpc"]["port"]) == port_of("listen"),
                f'{name}: gRPC health of service "" on the gRPC port',
            )
        elif "httpGet" in probe:
            expect(
                probe["httpGet"].get("path") == "/healthz"
                and probe_port(probe["httpGet"].get("port")) == port_of("metrics-listen"),
                f"{name}: GET /healthz on the metrics port",
            )
        else:
            problems.append(f"{name} missing")

    # The journal on the claim's volume; everything else read-only, non-root as the image is.
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for m in ctr.get("volumeMounts", [])}
    expect(
        any(mounts.get(c) == flags.get("data-dir") for c in claims),
        f"--data-dir {flags.get('data-dir')} is not a volumeClaimTemplate's mount",
    )
    sec = ctr.get("securityContext", {})
    expect(sec.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    expect(sec.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    pod_sec = spec.get("securityContext", {})
    expect(pod_sec.get("runAsNonRoot") is True, "runAsNonRoot must be true")
    user = image_user().split(":")
    expect(
        str(pod_sec.get("runAsUser")) == user[0],
        f"runAsUser {pod_sec.get('runAsUser')} is not the image's USER {user[0]}",
    )
    expect(
        str(pod_sec.get("fsGroup")) == user[-1],
        f"fsGroup {pod_sec.get('fsGroup')} is not the image's group {user[-1]}",
    )
    requests = ctr.get("resources", {}).get("requests", {})
    expect("cpu" in requests and "memory" in requests, "resource requests for cpu and memory")

    # Secrets come from a Secret, never from the manifest.
    env = {e["name"]: e for e in ctr.get("env", [])}
    for name in ("JWT_SECRET", "AMQP_URL"):
        expect(
            "secretKeyRef" in env.get(name, {}).get("valueFrom", {}),
            f"{name} must come from a Secret",
        )
    for flag in ("jwt-secret", "amqp-url"):
        expect(
            flag not in flags,
            f"--{flag} on the command line would show in the pod spec: use the Secret",
        )

    # Services select these pods and name their ports.
    for svc in of_kind(docs, "Service"):
        expect(
            svc["spec"]["selector"].items() <= labels.items(),
            f"Service {svc['metadata']['name']} selects no pod of the StatefulSet",
        )
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            expect(
                target in ports or target in ports.values(),
                f"Service {svc['metadata']['name']} targets a port the container does not have: {target}",
            )
    expect(
        any(
            s["metadata"]["name"] == sts["spec"].get("serviceName")
            for s in of_kind(docs, "Service")
        ),
        "serviceName names no Service",
    )

    node_id_env = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    expect(
        flags.get("node-id") == "$(POD_NAME)" and node_id_env == "metadata.name",
        "--node-id must be the pod's name ($(POD_NAME) from metadata.name): stable and unique",
    )
    if mode == "cluster":
        expect(
            flags.get("journal") == "rabbitmq-stream",
            "cluster mode needs --journal=rabbitmq-stream",
        )
        expect(sts["spec"].get("replicas", 1) >= 2, "a cluster has several replicas")
        pdbs = of_kind(docs, "PodDisruptionBudget")
        expect(
            len(pdbs) == 1 and pdbs[0]["spec"]["selector"]["matchLabels"].items() <= labels.items(),
            "one PodDisruptionBudget selecting the cluster's pods",
        )
        expect("podAntiAffinity" in spec.get("affinity", {}), "pod anti-affinity spreads the nodes")
    else:
        expect(
            sts["spec"].get("replicas", 1) == 1,
            "a single node has one replica (a second would keep a journal of its own)",
        )
        expect(flags.get("journal", "redb") == "redb", "a single node journals in redb")
    return problems


def kubernetes_validate(paths: list[Path]) -> subprocess.CompletedProcess:
    tool = str(Path(sys.executable).parent / "kubernetes-validate")
    outputs = []
    returncode = 0
    for version in KUBERNETES_VERSIONS:
        done = run([tool, "--strict", "--quiet", "-k", version, *map(str, paths)], check=False)
        returncode = returncode or done.returncode
        outputs.append(done.stdout + done.stderr)
    return subprocess.CompletedProcess([tool], returncode, "".join(outputs), "")


def check_manifests() -> dict[str, list[dict]]:
    manifests = {mode: load_manifest(path) for mode, path in MANIFESTS.items()}
    # Self-test: each check must refuse a manifest broken in a way it is there to see.
    with tempfile.TemporaryDirectory() as tmp:
        broken = Path(tmp) / "broken.yaml"
        broken.write_text(
            MANIFESTS["cluster"]
            .read_text()
            .replace("terminationGracePeriodSeconds:", "terminationGracePeriod:")
        )
        done = kubernetes_validate([broken])
        record(
            "self-test: the schema validator refuses an unknown field",
            done.returncode != 0 and "terminationGracePeriod" in done.stdout,
        )
    for mutate, what, reason in [
        (
            lambda s: s["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=5),
            "a grace period below --shutdown-grace",
            "terminationGracePeriodSeconds",
        ),
        (
            lambda s: s["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
                "httpGet"
            ].update(path="/ready"),
            "a readiness path the server does not serve",
            "readinessProbe",
        ),
        (
            lambda s: s["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0].update(
                mountPath="/var/lib/notify"
            ),
            "a volume that is not --data-dir",
            "--data-dir",
        ),
        (
            lambda s: s["spec"]["template"]["spec"]["containers"][0]["args"].remove(
                "--journal=rabbitmq-stream"
            ),
            "a cluster without the stream journal",
            "--journal",
        ),
    ]:
        docs = copy.deepcopy(manifests["cluster"])
        mutate(of_kind(docs, "StatefulSet")[0])
        problems = manifest_problems("cluster", docs)
        record(
            f"self-test: the consistency check refuses {what}",
            len(problems) == 1 and reason in problems[0],
            "; ".join(problems),
        )

    done = kubernetes_validate(list(MANIFESTS.values()))
    record(
        f"manifests valid against Kubernetes {' and '.join(KUBERNETES_VERSIONS)} (strict schemas)",
        done.returncode == 0,
        done.stdout.strip(),
    )
    for mode, docs in manifests.items():
        problems = manifest_problems(mode, docs)
        record(
            f"{mode}.yaml consistent with the server (grace, ports, probes, volume, secrets, selectors)",
            not problems,
            "; ".join(problems),
        )
    return manifests


# ---------------------------------------------------------------------------------------------
# 2. The image


class Engine:
    """buildah and podman on storage of this run's own: overlay where the kernel mounts it (a
    container starts at once), else vfs (a full copy of the image per container, no mounts)."""

    def __init__(self, work: Path, runroot: Path):
        # podman refuses a runroot path of more than 50 characters: that one is under /tmp.
        for driver in ("overlay", "vfs"):
            self.driver = driver
            self.storage = [
                "--root",
                str(work / driver),
                "--runroot",
                str(runroot / driver),
                "--storage-driver",
                driver,
            ]
            probe = run(["buildah", *self.storage, "from", "scratch"], check=False)
            if probe.returncode == 0:
                mounted = run(
                    ["buildah", *self.storage, "mount", probe.stdout.strip()], check=False
                )
                run(["buildah", *self.storage, "rm", probe.stdout.strip()], check=False)
                if mounted.returncode == 0:
                    break
        # crun refuses this machine's hybrid cgroup layout; runc runs on it.
        self.podman_cmd = ["podman", *self.storage, "--runtime", "runc"]
        self.buildah_cmd = ["buildah", *self.storage]
        # podman's own nproc limit is 32768; without CAP_SYS_RESOURCE (none here) a container may
        # not ask for more than the limits it inherits, and podman's defaults ask for more.
        nofile = os.sysconf("SC_OPEN_MAX")
        nproc = min(
            32768,
            int(
                subprocess.run(
                    ["sh", "-c", "ulimit -Hu"], capture_output=True, text=True
                ).stdout.strip()
                or 32768
            ),
        )
        self.limits = [
            "--ulimit",
            f"nofile={nofile}:{nofile}",
            "--ulimit",
            f"nproc={nproc}:{nproc}",
        ]

    def podman(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run([*self.podman_cmd, *args], **kwargs)

    def buildah(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run([*self.buildah_cmd, *args], **kwargs)


def runtime_stage() -> str:
    """docker/Dockerfile's last stage, built on the local base with the binary cargo built: its
    FROM and its one COPY --from=build are the only lines replaced."""
    lines = DOCKERFILE.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    stage = lines[start:]
    if stage[0] != "FROM debian:bookworm-slim":
        raise CheckFailed(
            f"the runtime stage starts with {stage[0]!r}; the check builds it on Debian bookworm"
        )
    copies = [i for i, line in enumerate(stage) if line.startswith("COPY --from=build ")]
    if len(copies) != 1 or not stage[copies[0]].endswith(" /usr/local/bin/notify-backbone"):
        raise CheckFailed(
            "the runtime stage must take the binary with one COPY --from=build ... /usr/local/bin/notify-backbone"
        )
    stage[0] = f"FROM {BASE_IMAGE}"
    stage[copies[0]] = "COPY notify-backbone /usr/local/bin/notify-backbone"
    return "\n".join(stage) + "\n"


def build_image(engine: Engine, work: Path, binary: Path) -> None:
    started = time.monotonic()
    rootfs = work / "bookworm.tar"
    # What debian:bookworm-slim is made of: Debian's required packages (minbase), without the
    # documentation, manuals and translations the slim image leaves out.
    slim = [
        f"--dpkgopt=path-exclude=/usr/share/{d}/*"
        for d in ("doc", "man", "info", "locale", "lintian", "linda")
    ]
    # The host's own Debian sources where it has them (the mirror this machine reaches), else
    # mmdebstrap's default. Unsafe I/O: the tree is packed into a tar and thrown away.
    sources = [str(p) for p in [Path("/etc/apt/sources.list.d/debian.sources")] if p.is_file()]
    command = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        "--dpkgopt=force-unsafe-io",
        *slim,
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        # A stalled download fails and is retried instead of hanging (seen once: apt's http
        # method waited 25 minutes on one connection).
        '--aptopt=Acquire::http::Timeout "30"',
        '--aptopt=Acquire::Retries "3"',
        "bookworm",
        str(rootfs),
        *sources,
    ]
    for attempt in (1, 2):
        done = run_bounded(command, MMDEBSTRAP_TIMEOUT_S)
        if done is not None and done.returncode == 0:
            break
        reason = "timed out" if done is None else f"exited {done.returncode}: {done.stderr[-2000:]}"
        print(f"check-deploy: mmdebstrap (attempt {attempt}) {reason}", file=sys.stderr)
        rootfs.unlink(missing_ok=True)
    else:
        raise CheckFailed("mmdebstrap could not make the base root file system")
    base = engine.buildah("from", "scratch").stdout.strip()
    engine.buildah("add", base, str(rootfs), "/")
    engine.buildah("commit", "--quiet", "--rm", base, BASE_IMAGE)
    rootfs.unlink()
    record(
        "base image: a Debian bookworm minbase root filesystem (mmdebstrap), imported with buildah",
        True,
        f"{time.monotonic() - started:.0f} s, storage driver {engine.driver}",
    )

    context = work / "context"
    context.mkdir()
    (context / "Containerfile").write_text(runtime_stage())
    shutil.copy2(binary, context / "notify-backbone")
    started = time.monotonic()
    engine.buildah(
        "bud",
        "--quiet",
        "--pull=never",
        "--isolation",
        "chroot",
        "--layers=false",
        "-f",
        str(context / "Containerfile"),
        "-t",
        IMAGE,
        str(context),
    )
    size = engine.podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip()
    config = json.loads(engine.podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    record(
        "image built from docker/Dockerfile's runtime stage (buildah bud, chroot isolation, no registry)",
        config.get("User") == image_user() and config.get("Entrypoint") == ["notify-backbone"],
        f"{int(size) / 1e6:.0f} MB, user {config.get('User')}, {time.monotonic() - started:.0f} s",
    )


# ---------------------------------------------------------------------------------------------
# 3. Running it


class Container:
    """One detached container and its published ports on 127.0.0.1."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        volume: str,
        mount: str,
        user: str | None = None,
    ):
        self.engine = engine
        self.name = name
        options = [
            "run",
            "--detach",
            "--name",
            name,
            "--pull=never",
            "--read-only",
            *engine.limits,
            "--network",
            "slirp4netns:allow_host_loopback=true",
            "--publish",
            "127.0.0.1::50051",
            "--publish",
            "127.0.0.1::9464",
            "--volume",
            f"{volume}:{mount}",
        ]
        if user:
            options += ["--user", user]
        for key, value in env.items():
            options += ["--env", f"{key}={value}"]
        self.started = time.monotonic()
        engine.podman(*options, IMAGE, *args)
        self.grpc = self.port(50051)
        self.metrics = self.port(9464)

    def port(self, inner: int) -> int:
        return int(
            self.engine.podman("port", self.name, str(inner)).stdout.strip().rsplit(":", 1)[1]
        )

    def logs(self) -> str:
        done = self.engine.podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics}{path}", timeout=5
            ) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            return 0, str(error)

    def wait_ready(self) -> float:
        """Seconds from `podman run` until /readyz answered 200."""
        while time.monotonic() - self.started < READY_TIMEOUT_S:
            status, _ = self.get("/readyz")
            if status == 200:
                return time.monotonic() - self.started
            state = self.engine.podman(
                "inspect", self.name, "--format", "{{.State.Status}}"
            ).stdout.strip()
            if state != "running":
                raise CheckFailed(f"{self.name} is {state}: {self.logs()[-3000:]}")
            time.sleep(0.25)
        raise CheckFailed(
            f"{self.name}: /readyz not 200 after {READY_TIMEOUT_S:g} s: {self.get('/readyz')}; {self.logs()[-3000:]}"
        )

    def stop(self, timeout_s: int) -> tuple[int, float]:
        """SIGTERM, then SIGKILL after `timeout_s` (what a container engine or the kubelet does);
        the exit code and how long the stop took."""
        started = time.monotonic()
        self.engine.podman("stop", "--time", str(timeout_s), self.name, check=False)
        took = time.monotonic() - started
        code = int(
            self.engine.podman(
                "inspect", self.name, "--format", "{{.State.ExitCode}}"
            ).stdout.strip()
        )
        return code, took

    def remove(self) -> None:
        self.engine.podman("rm", "--force", self.name, check=False)


def cli(binary: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = run([str(binary), *args], env={**os.environ, **(env or {})}, timeout=60)
    return done.stdout


def grpc_health(port: int) -> str:
    """grpc.health.v1.Health/Check over gRPC with the project's pinned buf CLI (schema by the
    server's reflection), as a kubelet's gRPC probe asks."""
    done = run(
        [
            str(ROOT / "scripts/buf"),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            "{}",
            f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check",
        ],
        timeout=60,
    )
    return json.loads(done.stdout).get("status", "")


def compose_health_command() -> list[str]:
    """The compose files' health check of notify-backbone: every service built from the
    Dockerfile has one, and it is the same command in both files."""
    tests = set()
    for path in COMPOSE_FILES:
        compose = yaml.safe_load(path.read_text())
        for name, service in compose["services"].items():
            if "build" not in service:
                continue
            if "healthcheck" not in service:
                raise CheckFailed(f"{path.name}: service {name} has no health check")
            tests.add(tuple(service["healthcheck"]["test"]))
    if len(tests) != 1:
        raise CheckFailed(
            f"one health check command for notify-backbone in the compose files, found {tests}"
        )
    test = list(tests.pop())
    if test[0] != "CMD":
        raise CheckFailed(f'compose health check must be the exec form ["CMD", ...]: {test}')
    return test[1:]


def run_defaults(engine: Engine, binary: Path, tag: str) -> None:
    """The image as `docker run -e JWT_SECRET=... image` runs it: its ENV, USER, WORKDIR, CMD."""
    secret = f"check-deploy-{tag}"
    volume = f"nb-{tag}-defaults"
    engine.podman("volume", "create", volume)
    box = Container(
        engine, f"nb-{tag}-defaults", [], {"JWT_SECRET": secret}, volume=volume, mount="/data"
    )
    try:
        took = box.wait_ready()
        record(
            "image defaults: the server starts as the image's non-root user on a read-only root, /readyz 200",
            True,
            f"ready {took:.1f} s after `podman run`",
        )
        status, body = box.get("/metrics")
        record(
            "image defaults: /metrics answers from outside the container",
            status == 200 and "# TYPE notify_subscribers gauge" in body,
            f"HTTP {status}",
        )
        status, body = box.get("/healthz")
        record(
            "image defaults: /healthz (the liveness probe's call) answers from outside",
            status == 200 and body == "alive\n",
            f"HTTP {status}",
        )
        health = grpc_health(box.grpc)
        record("image defaults: gRPC health Check from outside", health == "SERVING", health)
        token = cli(
            binary,
            "token",
            "--sub",
            "check-deploy",
            "--role",
            "service",
            env={"JWT_SECRET": secret},
        ).strip()
        published = json.loads(
            cli(
                binary,
                "publish",
                "--server",
                f"http://127.0.0.1:{box.grpc}",
                "--token",
                token,
                "billing.payment_success",
                '{"userId":"u1","paymentId":"p-check-deploy","paymentMethod":"alipay","amount":99.9,"newBalance":120.5}',
            )
        )
        admin = cli(
            binary, "token", "--sub", "ops", "--role", "admin", env={"JWT_SECRET": secret}
        ).strip()
        history = cli(
            binary,
            "history",
            "--server",
            f"http://127.0.0.1:{box.grpc}",
            "--token",
            admin,
            "--user",
            "*",
        )
        record(
            "image defaults: Publish then ListEvents with the project's CLI from outside",
            published["id"] in history,
            f"cursor {published['cursor']}",
        )
        command = compose_health_command()
        done = engine.podman("exec", box.name, *command, check=False)
        record(
            "compose files' health check command, run in the container",
            done.returncode == 0,
            " ".join(command)[:60] + " ...",
        )
        # Self-test: the same command against /metrics' port with a path that answers 404.
        wrong = [part.replace("GET /readyz", "GET /nothing-here") for part in command]
        done = engine.podman("exec", box.name, *wrong, check=False)
        record("self-test: the health check command fails on a non-200 answer", done.returncode != 0)
        code, stop_took = box.stop(15)
        logs = box.logs()
        record(
            "SIGTERM: graceful shutdown, exit code 0 within the grace",
            code == 0 and "stopped" in logs and stop_took < 15,
            f"exit {code} after {stop_took:.1f} s",
        )
        box.remove()
        # The journal is on the volume, not in the container: a new container has the event.
        box = Container(
            engine, f"nb-{tag}-defaults-2", [], {"JWT_SECRET": secret}, volume=volume, mount="/data"
        )
        box.wait_ready()
        history = cli(
            binary,
            "history",
            "--server",
            f"http://127.0.0.1:{box.grpc}",
            "--token",
            admin,
            "--user",
            "*",
        )
        record(
            "journal on the volume: a new container on it still has the event",
            published["id"] in history and published["cursor"] in history,
        )
        box.stop(15)
    finally:
        box.remove()
        engine.podman("volume", "rm", "--force", volume, check=False)


def pod_environment(
    container: dict, pod_name: str, secret_values: dict[str, str]
) -> dict[str, str]:
    """The container's environment as the kubelet makes it: values, the pod name from the
    downward API, and each Secret key's value (here, this run's own)."""
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        source = entry["valueFrom"]
        if source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[entry["name"]] = pod_name
        elif "secretKeyRef" in source:
            env[entry["name"]] = secret_values[source["secretKeyRef"]["key"]]
        else:
            raise CheckFailed(f"no stand-in for env {entry['name']}: {source}")
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


class Broker:
    """This run's own names on the shared RabbitMQ, and their removal."""

    def __init__(self, tag: str):
        self.url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        self.names = {
            "exchange": f"check-deploy-{tag}.events",
            "dead-letter-exchange": f"check-deploy-{tag}.dlx",
            "dead-letter-queue": f"check-deploy-{tag}.dead-letter",
            "stream": f"check-deploy-{tag}.journal",
            "ingest-queue": f"check-deploy-{tag}.ingest",
        }
        self.node_queues: list[str] = []

    def url_from_container(self) -> str:
        return re.sub(r"@(127\.0\.0\.1|localhost)([:/])", f"@{HOST_FROM_CONTAINER}\\2", self.url)

    def args(self) -> list[str]:
        """Flags that put a node on this run's names; appended after the manifest's own."""
        # A node's queue of a run that died goes away by itself.
        return [f"--{flag}={name}" for flag, name in self.names.items()] + ["--queue-expires=120s"]

    def publish(self, routing_key: str, body: dict) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(
                self.names["exchange"],
                routing_key,
                json.dumps(body).encode(),
                pika.BasicProperties(content_type="application/json", delivery_mode=2),
                mandatory=True,
            )
        finally:
            connection.close()

    def clean_up(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
        except pika.exceptions.AMQPError as error:
            print(
                f"check-deploy: could not remove this run's broker objects: {error}",
                file=sys.stderr,
            )
            return
        try:
            for queue in [
                self.names["stream"],
                self.names["ingest-queue"],
                self.names["dead-letter-queue"],
                *self.node_queues,
            ]:
                channel = connection.channel()
                try:
                    channel.queue_delete(queue)
                except pika.exceptions.ChannelClosedByBroker:
                    pass
            for exchange in (self.names["exchange"], self.names["dead-letter-exchange"]):
                channel = connection.channel()
                try:
                    channel.exchange_delete(exchange)
                except pika.exceptions.ChannelClosedByBroker:
                    pass
        finally:
            connection.close()


def manifest_container(docs: list[dict]) -> tuple[dict, dict, str]:
    sts = of_kind(docs, "StatefulSet")[0]
    spec = sts["spec"]["template"]["spec"]
    ctr = next(c for c in spec["containers"] if c["name"] == CONTAINER)
    user = f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
    return sts, ctr, user


def run_manifest(
    engine: Engine, binary: Path, mode: str, docs: list[dict], tag: str, broker: Broker
) -> None:
    sts, ctr, user = manifest_container(docs)
    replicas = 2 if mode == "cluster" else 1
    jwt = f"check-deploy-{tag}"
    secrets = {"jwt-secret": jwt, "amqp-url": broker.url_from_container()}
    mount = ctr["volumeMounts"][0]["mountPath"]
    boxes: list[Container] = []
    volumes: list[str] = []
    try:
        for ordinal in range(replicas):
            # The pod's name as the StatefulSet makes it, with this run's tag so that parallel runs
            # on one broker keep to their own node queues.
            pod = f"{sts['metadata']['name']}-{tag}-{ordinal}"
            env = pod_environment(ctr, pod, secrets)
            args = [expand(arg, env) for arg in ctr["args"]]
            volume = f"nb-{tag}-{mode}-{ordinal}"
            engine.podman("volume", "create", volume)
            volumes.append(volume)
            # `serve --check` with the manifest's own command line, in the image, as its user.
            check = engine.podman(
                "run",
                "--rm",
                "--pull=never",
                "--read-only",
                *engine.limits,
                "--user",
                user,
                "--volume",
                f"{volume}:{mount}",
                *[f"--env={k}={v}" for k, v in env.items()],
                IMAGE,
                *args,
                "--check",
                check=False,
            )
            expected = "cluster mode" if mode == "cluster" else "ingest from"
            record(
                f"{mode}.yaml: the container's args and env pass `serve --check` in the image (pod {ordinal})",
                check.returncode == 0 and expected in check.stdout,
                (check.stdout + check.stderr).strip(),
            )
            if ordinal == 0:
                # Self-test: the same command line with one flag misspelt is refused.
                misspelt = [arg.replace("--shutdown-grace=", "--shutdown-grase=") for arg in args]
                refused = engine.podman(
                    "run",
                    "--rm",
                    "--pull=never",
                    "--read-only",
                    *engine.limits,
                    "--user",
                    user,
                    "--volume",
                    f"{volume}:{mount}",
                    *[f"--env={k}={v}" for k, v in env.items()],
                    IMAGE,
                    *misspelt,
                    "--check",
                    check=False,
                )
                record(
                    f"self-test: `serve --check` in the image refuses {mode}.yaml's args with a misspelt flag",
                    refused.returncode == 2 and "--shutdown-grase" in refused.stderr,
                    f"exit {refused.returncode}",
                )
            broker.node_queues.append(f"notify-backbone.{env['POD_NAME']}")
            boxes.append(
                Container(
                    engine,
                    f"nb-{tag}-{mode}-{ordinal}",
                    args + broker.args(),
                    env,
                    volume=volume,
                    mount=mount,
                    user=user,
                )
            )
        for ordinal, box in enumerate(boxes):
            took = box.wait_ready()
            record(
                f"{mode}.yaml: pod {ordinal} runs with the manifest's command line, /readyz 200 (RabbitMQ connected)",
                True,
                f"{took:.1f} s after `podman run`",
            )
        health = grpc_health(boxes[0].grpc)
        record(
            f"{mode}.yaml: gRPC health Check",
            health == "SERVING",
            health,
        )
        status, body = boxes[0].get("/healthz")
        record(
            f"{mode}.yaml: /healthz (the liveness probe's call)",
            status == 200 and body == "alive\n",
            f"HTTP {status}",
        )
        if mode == "cluster":
            payment = f"p-{tag}"
            broker.publish(
                "billing.payment_success",
                {
                    "userId": "u1",
                    "paymentId": payment,
                    "paymentMethod": "alipay",
                    "amount": 1,
                    "newBalance": 2,
                },
            )
            admin = cli(
                binary, "token", "--sub", "ops", "--role", "admin", env={"JWT_SECRET": jwt}
            ).strip()
            seen = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seen = []
                for box in boxes:
                    lines = cli(
                        binary,
                        "history",
                        "--server",
                        f"http://127.0.0.1:{box.grpc}",
                        "--token",
                        admin,
                        "--user",
                        "*",
                    ).splitlines()
                    seen.append([json.loads(line)["cursor"] for line in lines if payment in line])
                if all(seen):
                    break
                time.sleep(0.5)
            record(
                "cluster.yaml: an event published to the exchange is on both nodes, at the same cursor",
                all(seen) and len({c for cursors in seen for c in cursors}) == 1,
                str(seen),
            )
        grace = duration_seconds(serve_flags(ctr["args"])["shutdown-grace"])
        period = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for ordinal, box in enumerate(boxes):
            code, took = box.stop(period)
            record(
                f"{mode}.yaml: pod {ordinal} stops on SIGTERM with exit code 0 within --shutdown-grace",
                code == 0 and took < grace,
                f"exit {code} after {took:.1f} s (grace {grace:g} s, SIGKILL at {period} s)",
            )
    finally:
        for box in boxes:
            box.remove()
        for volume in volumes:
            engine.podman("volume", "rm", "--force", volume, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--binary", type=Path, help="the release notify-backbone cargo built (for the image)"
    )
    parser.add_argument(
        "--manifests-only",
        action="store_true",
        help="only the manifests' schema and consistency checks",
    )
    options = parser.parse_args()
    tag = uuid.uuid4().hex[:10]
    stopped_by: str | None = None
    try:
        manifests = check_manifests()
        if not options.manifests_only:
            if options.binary is None or not options.binary.is_file():
                raise CheckFailed(f"--binary {options.binary}: no such file")
            work = ROOT / "target" / "check-deploy" / tag
            work.mkdir(parents=True)
            runroot = Path(tempfile.mkdtemp(prefix="nb-"))
            engine = Engine(work, runroot)
            broker = Broker(tag)
            try:
                build_image(engine, work, options.binary)
                run_defaults(engine, options.binary, tag)
                for mode, docs in manifests.items():
                    run_manifest(engine, options.binary, mode, docs, tag, broker)
            finally:
                broker.clean_up()
                engine.podman("rm", "--all", "--force", check=False)
                engine.podman("rmi", "--all", "--force", check=False)
                # vfs keeps a full copy of every layer: this run's storage goes with it.
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(runroot, ignore_errors=True)
    except CheckFailed as error:
        stopped_by = str(error)
        print(f"check-deploy: stopped: {error}", file=sys.stderr)
    passed = sum(ok for _, ok, _ in results)
    # A failure stops the checks after it; one that was not a recorded check (a command that
    # failed) counts too, so that a short count is never taken for a pass.
    failed = sum(not ok for _, ok, _ in results) or (1 if stopped_by else 0)
    print(f"check-deploy: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
