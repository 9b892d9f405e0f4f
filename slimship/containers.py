"""OCI images of the service: find a builder, build, measure, save and push.

Three builders speak (almost) the same language, tried in this order by ``detect("auto")``:
  docker   where a Docker engine answers (the client alone is not enough);
  podman   daemonless, rootless or as root;
  buildah  daemonless builds only (running the image takes podman, which reads the same storage).
Each is used exactly as the machine configures it, so the image lands in the storage the user's own
`podman images` / `docker images` lists. Preparing a host that has none of them (installing podman, making a
base image where no registry is reachable) is the administrator's job: docs/CONTAINERS.md says how.

The image is built from deploy/Dockerfile (or Dockerfile.gpu), shipped inside this package, over a context
directory that ``prepare_context`` assembles: the Dockerfile, the pinned serving requirements and the bento with
its model. Nothing here imports torch or transformers; bentoml only inside ``prepare_context``.
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

DEPLOY_DIR = Path(__file__).resolve().parent / "deploy"
BACKENDS = ("docker", "podman", "buildah")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
INSTALL_HINT = "install Docker (engine running), podman or buildah; see docs/CONTAINERS.md"
# A cheap command that succeeds only when the tool can really work here (an engine answers, storage opens).
PROBES = {
    "docker": ("version", "--format", "{{.Server.Version}}"),
    "podman": ("info", "--format", "{{.Store.GraphRoot}}"),
    "buildah": ("info",),
}


class ContainerError(UserError):
    """A builder is missing, or building, running or pushing an image failed."""


class NoBuilder(ContainerError):
    """None of Docker, podman or buildah works on this machine."""


@dataclass
class Builder:
    """A container tool and the environment it runs with (the caller's, unchanged, unless a test says otherwise)."""

    name: str
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

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

def why_not(name: str, env: dict[str, str] | None = None) -> str | None:
    """None when ``name`` works here, else a few words on why not."""
    if not shutil.which(name, path=(env or os.environ).get("PATH")):
        return "not installed"
    try:
        proc = subprocess.run([name, *PROBES[name]], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        return f"`{name} {PROBES[name][0]}` hung"
    if proc.returncode == 0 and proc.stdout.strip():
        return None
    last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return "no engine answers" if name == "docker" else f"`{name} {PROBES[name][0]}` failed: {last[0][:160]}"


def detect(backend: str = "auto") -> Builder:
    """The builder to use: the one named, or the first of Docker (engine up), podman, buildah that works."""
    if backend not in ("auto", *BACKENDS):
        raise ContainerError(f"unknown backend {backend!r}; choose auto, docker, podman or buildah")
    wanted = BACKENDS if backend == "auto" else (backend,)
    reasons = []
    for name in wanted:
        reason = why_not(name)
        if reason is None:
            return Builder(name)
        reasons.append(f"{name}: {reason}")
    raise NoBuilder(f"no container builder works here ({'; '.join(reasons)}): {INSTALL_HINT}")


def run_command(builder: Builder, tag: str, *, gpu: bool = False) -> str:
    """How the user starts the image with their own tool, which reads the storage the build wrote to."""
    devices = ("--gpus all " if builder.runner == "docker" else "--device nvidia.com/gpu=all ") if gpu else ""
    return f"{builder.runner} run --rm {devices}-p 3000:3000 {tag}"


# ---- the build context --------------------------------------------------------------------------------------

@dataclass
class BentoInfo:
    tag: str
    model_tag: str
    model_sha256: str   # sha256 of the model artifact's manifest.json, as the service's /metadata reports it


def check_gpu_model(manifest: dict, where: str) -> None:
    """Refuse an INT8 model (static or dynamic quantization) for the GPU image.

    ONNX Runtime's CUDA provider has no integer kernels for these graphs: it dequantizes and multiplies in float,
    and requantizes the activations. Measured on an H200 (docs/BENCHMARKS.md, GPU checks): a static INT8 MiniLM
    gave another label than on the CPU for 0.4% of 3,000 texts, changed 8 labels with the batching, and ran at a
    third of its FP32 export's rows/s. Weight-only models (MatMulNBits) have CUDA kernels and are let through."""
    quantization = manifest.get("quantization") or {}
    mode = quantization.get("mode") if isinstance(quantization, dict) else None
    if mode not in ("static", "dynamic"):
        return
    export = next((step.get("name") for step in manifest.get("chain") or [] if step.get("stage") == "export"), None)
    source = f" (the search's candidates/{export})" if export else ""
    raise ContainerError(f"{where} is a {mode} INT8 model: on CUDA it runs slower than FP32 and its labels depend "
                         f"on the batch; build the GPU image from its FP32 export{source}")


def prepare_context(bento_tag: str, out: Path, *, gpu: bool = False) -> BentoInfo:
    """Assemble a build context in ``out``: Dockerfile, requirements-serve.txt, compose.yaml and bento/, a copy of the bento
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
    dockerfile = DEPLOY_DIR / ("Dockerfile.gpu" if gpu else "Dockerfile")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(dockerfile, out / "Dockerfile")
    for name in ("requirements-serve.txt", "compose.yaml"):  # compose.yaml: for whoever keeps --context-dir
        shutil.copy2(DEPLOY_DIR / name, out / name)
    shutil.copytree(bento.path, out / "bento", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    model_store = out / "bento" / "models"
    model_store.mkdir(exist_ok=True)
    BentoModel(models[0].tag).resolve(model_store)
    model_dir = model_store / models[0].tag.name / models[0].tag.version
    if not (model_dir / "manifest.json").is_file():
        raise ContainerError(f"model {models[0].tag} of bento {bento.tag} is not a slimship artifact "
                             "(no manifest.json)")
    if gpu:
        check_gpu_model(json.loads((model_dir / "manifest.json").read_text()), f"model {models[0].tag}")
    return BentoInfo(str(bento.tag), str(models[0].tag), manifest_digest(model_dir))


# ---- build and measure --------------------------------------------------------------------------------------

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
        # chroot isolation needs no network namespace or nested runtime, so it also builds inside a container.
        args += ["--format", "docker", "--pull=missing", "--layers", "--isolation", "chroot"]
        if HOST_CA_BUNDLE.is_file():
            args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", "--build-arg", f"PIP_CERT={HOST_CA_BUNDLE}"]
    if builder.name == "buildah":
        args[0] = "bud"
    stage_log(f"building {tag} with {builder.name}")
    builder.cmd(*args, str(context), stream=True)


def image_size(builder: Builder, image: str) -> int:
    """Bytes the image takes unpacked (all layers), as `podman images` / `docker images` report it."""
    if builder.name == "buildah":
        return int(json.loads(builder.cmd("images", "--json", image).stdout)[0]["size"])
    return int(builder.cmd("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def human_size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


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


def is_loopback(reference: str) -> bool:
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
    verify = (not is_loopback(destination)) if tls_verify is None else tls_verify
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

    Returns {"tag", "size", "size_mb", "builder", "bento", "model", "model_sha256", "run"} ("run": the command
    that starts the image) plus "saved" and "pushed" (DEST@DIGEST) when asked.
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
              "model": info.model_tag, "model_sha256": info.model_sha256, "run": run_command(builder, tag, gpu=gpu)}
    if save_to:
        result["saved"] = str(save(builder, tag, Path(save_to)))
    if push_to:
        result["pushed"] = f"{push_to}@{push(builder, tag, push_to)}"
    return result


def image_exists(tag: str, backend: str = "auto") -> bool:
    """Whether the local image store (Docker's, or podman's/buildah's) holds ``tag``."""
    try:
        builder = detect(backend)
    except ContainerError:
        return False
    if builder.name == "buildah":
        return builder.cmd("inspect", "--type", "image", tag, check=False).returncode == 0
    return builder.cmd("image", "inspect", tag, check=False).returncode == 0
