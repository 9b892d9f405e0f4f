"""The container host for tests: make podman usable where it can be (tests/podman-setup.sh), then run, probe and
remove images the way a user would with their own podman or docker.

slimship's library only detects a working docker/podman/buildah; installing and configuring one is the host's
business, done here for the tests (root + apt) and described for people in docs/CONTAINERS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import pytest

from slimship import containers
from slimship.containers import Builder, ContainerError

SETUP_SCRIPT = Path(__file__).resolve().parent / "podman-setup.sh"


@lru_cache(maxsize=1)
def _prepare_host() -> str | None:
    """Run podman-setup.sh once per test session where it can run; returns why it could not, or None."""
    if containers.why_not("docker") is None:
        return None  # a Docker engine answers: nothing to prepare
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root with apt-get, so podman cannot be installed and configured here"
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        # A set-up that fails (apt, debootstrap) is a failure, not a reason to skip.
        pytest.fail(f"{SETUP_SCRIPT.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return None


def builder_or_skip(backend: str = "auto") -> Builder:
    """The builder slimship itself picks, after the host is prepared; skips only where none can be had."""
    reason = _prepare_host()
    try:
        return containers.detect(backend)
    except containers.NoBuilder as e:
        pytest.skip(f"no container builder can be had here: {e}" + (f" ({reason})" if reason else ""))


def inspect(builder: Builder, image: str) -> dict:
    """The image's inspect record (Id, Size, Config with Labels/User/Healthcheck, ...)."""
    if builder.name == "buildah":
        data = json.loads(builder.cmd("inspect", "--type", "image", image).stdout)
        config = data.get("Docker", {}).get("config") or data.get("OCIv1", {}).get("config", {})
        return {"Id": data.get("FromImageID"), "Size": containers.image_size(builder, image), "Config": config}
    return json.loads(builder.cmd("image", "inspect", image).stdout)[0]


def run_container(builder: Builder, image: str, *, port: int, name: str | None = None,
                  env: dict[str, str] | None = None, extra: list[str] | None = None) -> str:
    """Start the image detached, its port 3000 published on 127.0.0.1:``port``; returns the container id."""
    args = ["run", "-d", "-p", f"127.0.0.1:{port}:3000"]
    if name:
        args += ["--name", name]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return runner(builder).cmd(*args, *(extra or []), image).stdout.strip()


def runner(builder: Builder) -> Builder:
    """The tool that runs containers for this builder (podman for buildah), with the same environment."""
    return Builder(builder.runner, builder.env)


def container_logs(builder: Builder, container: str) -> str:
    proc = runner(builder).cmd("logs", container, check=False)
    return (proc.stdout or "") + (proc.stderr or "")


def remove_container(builder: Builder, container: str) -> None:
    runner(builder).cmd("rm", "-f", "-t", "5", container, check=False)


def wait_ready(url: str, timeout: float = 60.0, *, container_alive=None) -> float:
    """Poll ``url`` (e.g. http://127.0.0.1:PORT/readyz) until it answers 200; returns the seconds it took."""
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


def remote_digest(destination: str, env: dict[str, str] | None = None, *, tls_verify: bool | None = None) -> str:
    """The manifest digest the registry serves for ``destination`` (skopeo inspect, nothing pulled)."""
    verify = (not containers.is_loopback(destination)) if tls_verify is None else tls_verify
    proc = subprocess.run(["skopeo", "inspect", f"--tls-verify={'true' if verify else 'false'}",
                           f"docker://{destination}"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ContainerError(f"skopeo inspect {destination} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)["Digest"]
