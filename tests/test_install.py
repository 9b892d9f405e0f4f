"""slimship as a new user gets it: the wheel, installed into a fresh virtualenv outside the checkout, used from an
empty working directory. The wheel must carry every subpackage and the data files the commands read at run time
(the bentofile, the Dockerfiles, the serving requirements); `slimship run`, `slimship build` and, where a
container builder works, `slimship containerize` must work without the source tree anywhere on the path.

To stay fast and offline the new virtualenv borrows the third-party packages of the one running the tests (a
plain path entry after its own site-packages, so the dev install's .pth files, the editable checkout among them,
are not processed); slimship itself comes only from the wheel, and the test checks that.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "slimship"
# What the installed commands read besides Python modules (see [tool.setuptools.package-data]).
DATA_FILES = ["slimship/serve/bentofile.yaml", "slimship/deploy/Dockerfile", "slimship/deploy/Dockerfile.gpu",
              "slimship/deploy/requirements-serve.txt", "slimship/deploy/compose.yaml"]
WORDS = {"pos": ["great", "wonderful", "loved", "brilliant", "moving", "fun"],
         "neg": ["dull", "boring", "awful", "hated", "weak", "tedious"]}
RUN_CONFIG = """
data: data
model: tiny
max_length: 16
max_accuracy_drop: 100     # `tiny` on a few rows is noise; this test is about installation, not accuracy
train:
  epochs: 1
  learning_rate: 1.0e-3
  patience: 0
compress:
  allow_batch_dependent: true
  latency_rows: 8
  throughput_rows: 16
  grid:
    layers: [1]
    prune: [{}]
    optimize: [none]
    quantize: [dynamic]
    embedding_bits: [8]
    include_teacher: false
    distill: {epochs: 1, learning_rate: 1.0e-3}
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (no stale build/ or egg-info of the checkout can leak in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "slimship", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (tmp / "dist").glob("slimship-*.whl")
    return built


def test_wheel_holds_every_module_and_the_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the wheel"
    packages = {str(p.parent.relative_to(ROOT)) for p in PACKAGE.rglob("__init__.py")}
    assert {"slimship/core", "slimship/train", "slimship/serve", "slimship/compress", "slimship/commands"} <= packages
    assert set(DATA_FILES) - names == set(), "package data missing from the wheel"
    # Everything the bento includes is in the wheel, so `slimship build` can copy it from site-packages.
    include = yaml.safe_load((PACKAGE / "serve" / "bentofile.yaml").read_text())["include"]
    assert set(include) - names == set()
    assert not any(n.startswith(("tests/", "bench/", "docker/")) for n in names)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv outside the checkout with slimship installed from the wheel."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Third-party packages from the dev environment, after the new venv's own site-packages.
    Path(site, "zz_dev_third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def user_env(venv: Path, home: Path) -> dict[str, str]:
    """A new user's shell: the venv's bin first on PATH, no PYTHONPATH, their own BentoML store."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SLIMSHIP_MODEL")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="true", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    return env


def write_tiny_dataset(directory: Path) -> None:
    rng = random.Random(0)
    directory.mkdir()
    for split, rows in (("train", 48), ("validation", 24)):
        lines = ["text,label"]
        for _ in range(rows):
            label = rng.choice(["pos", "neg"])
            lines.append(f"the film was {rng.choice(WORDS[label])} and {rng.choice(WORDS[label])},{label}")
        (directory / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def user(venv, tmp_path_factory):
    """An empty working directory outside the checkout, the user's environment, and the installed CLI."""
    work = tmp_path_factory.mktemp("user")
    env = user_env(venv, work)

    def slimship(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "slimship"), *args], capture_output=True, text=True, env=env,
                              cwd=work, timeout=timeout)

    return work, env, slimship


def test_slimship_comes_from_the_wheel_not_the_checkout(venv, user):
    work, env, _ = user
    probe = "import sys, slimship; print(slimship.__file__); print('\\n'.join(sys.path))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=env,
                         cwd=work, check=True).stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(venv.resolve())
    assert not any(p and Path(p).resolve() == ROOT for p in out[1:]), "the checkout is on the path"


@pytest.fixture(scope="module")
def chain(user):
    """`slimship run` (train -> compress -> bento) on a tiny generated dataset, then `slimship build` again."""
    work, _, slimship = user
    write_tiny_dataset(work / "data")
    (work / "run.yaml").write_text(RUN_CONFIG)
    ran = slimship("run", "--config", "run.yaml", "--out", "out")
    assert ran.returncode == 0, ran.stderr[-3000:]
    model = work / "out" / "compress" / "model"
    assert (model / "manifest.json").is_file()
    built = slimship("build", "--model", str(model), timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    return model, built.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_installed_cli_runs_the_chain_and_builds_the_bento(chain, user):
    work, _, _ = user
    _, bento = chain
    name, version = bento.split(":")
    source = work / "bentoml" / "bentos" / name / version / "src"
    include = yaml.safe_load((PACKAGE / "serve" / "bentofile.yaml").read_text())["include"]
    for relative in include:  # copied from the installed package, byte for byte what the wheel holds
        assert (source / relative).read_bytes() == (ROOT / relative).read_bytes(), relative


@pytest.mark.slow
@pytest.mark.container
def test_installed_containerize_builds_an_image_the_users_podman_lists(chain, user):
    import container_host as host

    builder = host.builder_or_skip()
    _, _, slimship = user
    _, bento = chain
    tag = f"localhost/slimship-install-test:{uuid.uuid4().hex[:8]}"
    proc = slimship("containerize", "--bento", bento, "--tag", tag, "--backend", builder.name, timeout=900)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
        assert out["image"] == tag
        assert out["run"] == f"{builder.runner} run --rm -p 3000:3000 {tag}"
        listed = subprocess.run([builder.runner, "image", "inspect", tag], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
    finally:
        builder.cmd("rmi", "-f", tag, check=False)
