"""OCI images of the service: find a builder, build, measure, run, save and push.

Three builders speak (almost) the same language, tried in this order by ``detect("auto")``:
  docker   where a Docker engine answers (the client alone is not enough);
  podman   daemonless, as root: docker/podman-setup.sh installs it where apt can, writes its config and makes
           the python:3.11-slim base locally (no registry is needed; see docs/CONTAINERS.md);
  buildah  daemonless builds only (running an image still needs podman).

The image is built from docker/Dockerfile (or Dockerfile.gpu) over a context directory that
``prepare_context`` assembles: the Dockerfile, the pinned serving requirements and the bento with its model.
Nothing here imports torch or transformers; bentoml only inside ``prepare_context``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from slimship import __version__
from slimship.core.errors import UserError
from slimship.core.artifact import stage_log

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
SETUP_SCRIPT = DOCKER_DIR / "podman-setup.sh"
BACKENDS = ("docker", "podman", "buildah")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ContainerError(UserError):
    """A builder is missing, or building, running or pushing an image failed."""


class NoBuilder(ContainerError):
    """Neither a Docker engine nor podman/buildah is here, and they cannot be installed (not root, no apt)."""


@dataclass
class Builder:
    """A container tool and the environment it runs with (the daemonless config for podman/buildah)."""

    name: str
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def cmd(self, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
            stream: bool = False) -> subprocess.CompletedProcess:
        """Run the tool; with ``stream`` its output goes to stderr as it comes (build logs are the progress)."""
        argv = [self.name, *args]
        try:
            if stream:
                proc = subprocess.run(argv, env=self.env, stdout=sys.stderr, stderr=sys.stderr, timeout=timeout)
            else:
                proc = subprocess.run(argv, env=self.env, capture_output=capture, text=True, timeout=timeout)
        except FileNotFoundError:
            raise ContainerError(f"{self.name} is not installed") from None
        except subprocess.TimeoutExpired:
            raise ContainerError(f"`{' '.join(argv[:3])} ...` did not finish within {timeout:.0f} s") from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:] if capture and not stream else []
            raise ContainerError(f"`{' '.join(argv[:4])} ...` failed (exit {proc.returncode})"
                                 + (": " + " | ".join(detail) if detail else ""))
        return proc

    @property
    def runner(self) -> str:
        """The tool that runs containers: buildah cannot, podman shares its storage."""
        return "podman" if self.name == "buildah" else self.name


# ---- finding a builder --------------------------------------------------------------------------------------

def docker_engine_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def daemonless_env(install: bool = True) -> dict[str, str]:
    """Run docker/podman-setup.sh (idempotent: a second of work once everything is in place) and return the
    environment it exports: our own storage/containers config, chroot isolation, the local base image.

    Set SLIMSHIP_PODMAN_SETUP=0 to use podman/buildah exactly as configured on the machine instead.
    """
    env = dict(os.environ)
    if os.environ.get("SLIMSHIP_PODMAN_SETUP") == "0":
        return env
    if not SETUP_SCRIPT.is_file():
        raise ContainerError(f"{SETUP_SCRIPT} is missing (containerize runs from a slimship checkout)")
    have_tools = shutil.which("podman") or shutil.which("buildah")
    if not have_tools and (not install or os.geteuid() != 0 or not shutil.which("apt-get")):
        raise NoBuilder("no container builder: install Docker, or podman/buildah "
                             "(as root on Debian/Ubuntu: bash docker/podman-setup.sh)")
    stage_log("preparing the daemonless builder (docker/podman-setup.sh)")
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        raise ContainerError(f"docker/podman-setup.sh failed (exit {proc.returncode}): {tail}")
    for line in proc.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            env[key] = value
    return env


def detect(backend: str = "auto") -> Builder:
    """The builder to use: the one named, or Docker (engine up) -> podman -> buildah for ``auto``."""
    if backend not in ("auto", *BACKENDS):
        raise ContainerError(f"unknown backend {backend!r}; choose auto, docker, podman or buildah")
    if backend == "docker" or (backend == "auto" and docker_engine_available()):
        if not docker_engine_available():
            raise ContainerError("--backend docker: no Docker engine answers (is the daemon running?)")
        return Builder("docker")
    env = daemonless_env()
    wanted = (backend,) if backend != "auto" else ("podman", "buildah")
    for name in wanted:
        if shutil.which(name, path=env.get("PATH")):
            return Builder(name, env)
    raise NoBuilder(f"{' or '.join(wanted)} is not installed; run docker/podman-setup.sh as root")


# ---- the build context --------------------------------------------------------------------------------------

@dataclass
class BentoInfo:
    tag: str
    model_tag: str
    model_sha256: str   # sha256 of the model artifact's manifest.json, as the service's /metadata reports it


def prepare_context(bento_tag: str, out: Path, *, gpu: bool = False) -> BentoInfo:
    """Assemble a build context in ``out``: Dockerfile, requirements-serve.txt and bento/, a copy of the bento
    from the BentoML store with its model packed into bento/models (as `bentoml export` packs it)."""
    import bentoml
    from _bentoml_sdk.models import BentoModel
    from bentoml.exceptions import NotFound

    from slimship.core.artifact import manifest_digest

    try:
        bento = bentoml.bentos.get(bento_tag)
    except NotFound:
        raise ContainerError(f"no bento {bento_tag!r} in the BentoML store (BENTOML_HOME="
                             f"{os.environ.get('BENTOML_HOME', '~/bentoml')}); build one with "
                             "`slimship build --model DIR` or pass --model DIR") from None
    models = [m for m in bento.info.all_models if m.registry == "bentoml"]
    if len(models) != 1:
        raise ContainerError(f"bento {bento.tag} pins {len(models)} models; the slimship image serves exactly one")
    dockerfile = DOCKER_DIR / ("Dockerfile.gpu" if gpu else "Dockerfile")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(dockerfile, out / "Dockerfile")
    shutil.copy2(DOCKER_DIR / "requirements-serve.txt", out / "requirements-serve.txt")
    shutil.copytree(bento.path, out / "bento", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    model_store = out / "bento" / "models"
    model_store.mkdir(exist_ok=True)
    BentoModel(models[0].tag).resolve(model_store)
    model_dir = model_store / models[0].tag.name / models[0].tag.version
    if not (model_dir / "manifest.json").is_file():
        raise ContainerError(f"model {models[0].tag} of bento {bento.tag} is not a slimship artifact "
                             "(no manifest.json)")
    return BentoInfo(str(bento.tag), str(models[0].tag), manifest_digest(model_dir))


# ---- build, inspect, run ------------------------------------------------------------------------------------

def build(builder: Builder, context: Path, tag: str, build_args: dict[str, str] | None = None,
          *, target: str | None = None) -> None:
    """Build ``context/Dockerfile`` as ``tag``; the build log streams to stderr."""
    args = ["build", "-t", tag, "-f", str(context / "Dockerfile")]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    if target:
        args += ["--target", target]
    if builder.name in ("podman", "buildah"):
        # Docker format keeps HEALTHCHECK (OCI image configs have no field for it); the base comes from local
        # storage when present; RUN steps get the host's network and, for pip behind a TLS-inspecting proxy,
        # the host's CA bundle.
        args += ["--format", "docker", "--pull=missing", "--layers"]
        if builder.name == "podman":
            args += ["--isolation", "chroot"]
        if HOST_CA_BUNDLE.is_file():
            args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", "--build-arg", f"PIP_CERT={HOST_CA_BUNDLE}"]
    if builder.name == "buildah":
        args[0] = "bud"
    stage_log(f"building {tag} with {builder.name}")
    builder.cmd(*args, str(context), stream=True)


def inspect(builder: Builder, image: str) -> dict:
    """The image's inspect record (Id, Size, Config with Labels/User/Healthcheck, ...)."""
    if builder.name == "buildah":
        raw = builder.cmd("inspect", "--type", "image", image).stdout
        data = json.loads(raw)
        config = data.get("Docker", {}).get("config") or data.get("OCIv1", {}).get("config", {})
        return {"Id": data.get("FromImageID"), "Size": image_size(builder, image), "Config": config}
    raw = builder.cmd("image", "inspect", image).stdout
    return json.loads(raw)[0]


def image_size(builder: Builder, image: str) -> int:
    """Bytes the image takes unpacked (all layers), as `podman images` / `docker images` report it."""
    if builder.name == "buildah":
        return int(json.loads(builder.cmd("images", "--json", image).stdout)[0]["size"])
    return int(builder.cmd("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def human_size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def run_container(builder: Builder, image: str, *, port: int, name: str | None = None,
                  env: dict[str, str] | None = None, extra: list[str] | None = None) -> str:
    """Start the image detached, its port 3000 published on 127.0.0.1:``port``; returns the container id."""
    tool = Builder(builder.runner, builder.env)
    args = ["run", "-d", "-p", f"127.0.0.1:{port}:3000"]
    if name:
        args += ["--name", name]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return tool.cmd(*args, *(extra or []), image).stdout.strip()


def container_logs(builder: Builder, container: str) -> str:
    tool = Builder(builder.runner, builder.env)
    proc = tool.cmd("logs", container, check=False)
    return (proc.stdout or "") + (proc.stderr or "")


def remove_container(builder: Builder, container: str) -> None:
    Builder(builder.runner, builder.env).cmd("rm", "-f", "-t", "5", container, check=False)


def wait_ready(url: str, timeout: float = 60.0, *, container_alive=None) -> float:
    """Poll ``url`` (e.g. http://127.0.0.1:PORT/readyz) until it answers 200; returns the seconds it took."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if container_alive is not None and not container_alive():
            raise ContainerError(f"the container exited before {url} was ready")
        time.sleep(0.05)
    raise ContainerError(f"{url} was not ready within {timeout:.0f} s")


# ---- ship: save and push ------------------------------------------------------------------------------------

def save(builder: Builder, image: str, path: Path) -> Path:
    """Write the image as an OCI archive (``docker load``/``podman load``/``skopeo copy`` read it back)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    if builder.name == "docker":
        # `docker save` writes an archive that is both a Docker and (Docker 25+) an OCI image layout.
        builder.cmd("save", "-o", str(tmp), image)
    elif builder.name == "podman":
        builder.cmd("save", "--format", "oci-archive", "-o", str(tmp), image)
    else:
        builder.cmd("push", image, f"oci-archive:{tmp}:{image}")
    os.replace(tmp, path)
    return path


def _loopback(reference: str) -> bool:
    host = urlsplit("//" + reference).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_destination(destination: str) -> None:
    """A push destination must name its registry: REGISTRY/NAME[:TAG] (no transport prefix)."""
    if "/" not in destination or "://" in destination or destination.split("/", 1)[0] == "":
        raise ContainerError(f"--push {destination!r}: expected REGISTRY/NAME:TAG, e.g. 127.0.0.1:5000/demo:1")


def push(builder: Builder, image: str, destination: str, *, tls_verify: bool | None = None) -> str:
    """Push ``image`` to ``destination`` (REGISTRY/NAME:TAG); returns the pushed manifest digest.

    As Docker does, a registry on the loopback interface is spoken to over plain HTTP unless ``tls_verify``.
    """
    check_destination(destination)
    verify = (not _loopback(destination)) if tls_verify is None else tls_verify
    stage_log(f"pushing {image} to {destination}")
    if builder.name == "docker":
        builder.cmd("tag", image, destination)
        builder.cmd("push", destination, stream=True)
        digests = json.loads(builder.cmd("image", "inspect", "--format", "{{json .RepoDigests}}",
                                         destination).stdout)
        repo = destination.rsplit(":", 1)[0] if ":" in destination.split("/")[-1] else destination
        for ref in digests:
            if ref.startswith(repo + "@"):
                return ref.split("@", 1)[1]
        raise ContainerError(f"docker push gave no digest for {destination}")
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        builder.cmd("push", f"--tls-verify={'true' if verify else 'false'}", "--digestfile", str(digest_file),
                    image, f"docker://{destination}")
        return digest_file.read_text().strip()


def remote_digest(destination: str, env: dict[str, str] | None = None, *, tls_verify: bool | None = None) -> str:
    """The manifest digest the registry serves for ``destination`` (skopeo inspect, nothing pulled)."""
    verify = (not _loopback(destination)) if tls_verify is None else tls_verify
    proc = subprocess.run(["skopeo", "inspect", f"--tls-verify={'true' if verify else 'false'}",
                           f"docker://{destination}"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ContainerError(f"skopeo inspect {destination} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)["Digest"]


def default_build_args(*, model_sha256: str, model_tag: str, bento_tag: str) -> dict[str, str]:
    return {
        "VERSION": __version__,
        "MODEL_SHA256": model_sha256,
        "MODEL_TAG": model_tag,
        "BENTO_TAG": bento_tag,
        "CREATED": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---- the whole job ------------------------------------------------------------------------------------------

def containerize(*, bento: str, tag: str | None = None, gpu: bool = False, backend: str = "auto",
                 save_to: str | Path | None = None, push_to: str | None = None,
                 context_dir: str | Path | None = None, builder: Builder | None = None) -> dict:
    """Build the image of a bento (and save/push it); what `slimship containerize` and `slimship run --image` do.

    Returns {"tag", "size", "size_mb", "builder", "bento", "model", "model_sha256"} plus "saved" and "pushed"
    (DEST@DIGEST) when asked.
    """
    if push_to:
        check_destination(push_to)
    builder = builder or detect(backend)
    with tempfile.TemporaryDirectory(prefix="slimship-image-") as tmp:
        context = Path(context_dir) if context_dir else Path(tmp) / "context"
        if context_dir and context.exists() and any(context.iterdir()):
            raise ContainerError(f"build context {context} is not empty")
        info = prepare_context(bento, context, gpu=gpu)
        tag = tag or f"slimship:{info.tag.split(':', 1)[1]}{'-gpu' if gpu else ''}"
        build(builder, context, tag, default_build_args(model_sha256=info.model_sha256, model_tag=info.model_tag,
                                                        bento_tag=info.tag))
    size = image_size(builder, tag)
    result = {"tag": tag, "size": size, "size_mb": round(size / 1e6), "builder": builder.name, "bento": info.tag,
              "model": info.model_tag, "model_sha256": info.model_sha256}
    if save_to:
        result["saved"] = str(save(builder, tag, Path(save_to)))
    if push_to:
        result["pushed"] = f"{push_to}@{push(builder, tag, push_to)}"
    return result


def image_exists(tag: str, backend: str = "auto") -> bool:
    """Whether the local image store (Docker's, or the daemonless one) holds ``tag``."""
    try:
        builder = detect(backend)
    except ContainerError:
        return False
    if builder.name == "buildah":
        return builder.cmd("inspect", "--type", "image", tag, check=False).returncode == 0
    return builder.cmd("image", "inspect", tag, check=False).returncode == 0
