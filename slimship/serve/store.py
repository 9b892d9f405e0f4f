"""Put an ONNX artifact into the BentoML model store, and build the bento that serves it.

    import_artifact("runs/demo/model")  -> "slimship-classifier:3f2a9c0d1e4b5a69"
    build_bento("runs/demo/model")      -> "slimship:<version>"

The bento is built from the bentofile that ships inside this package (serve/bentofile.yaml) over a build
context holding a copy of exactly the files it includes, taken from wherever slimship is imported from: a
checkout or site-packages, so `slimship build` works the same from a wheel as from the source tree.

The model's version is the first 16 hex digits of the artifact's manifest sha256, so importing the same artifact
twice reuses the stored copy, and a different artifact can never hide behind the same tag. The stored copy keeps
the artifact's layout (manifest.json included), so the service verifies every file's digest when it loads.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.artifact import stage_log

MODEL_NAME = "slimship-classifier"
BENTOFILE = Path(__file__).resolve().parent / "bentofile.yaml"
# The directory that holds the `slimship` package (a checkout's root, or site-packages): the bentofile's include
# list and `bentoml serve slimship.serve.service:Classify` name files and modules relative to it.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def model_tag_for(model_dir: str | Path, name: str = MODEL_NAME) -> str:
    return f"{name}:{artifact.manifest_digest(model_dir)[:16]}"


def import_artifact(model_dir: str | Path, name: str = MODEL_NAME) -> str:
    """Verify an ONNX artifact and copy it into the model store (once); return its model tag."""
    import bentoml
    from bentoml.exceptions import NotFound

    manifest = artifact.load(model_dir, format="onnx")  # refuses a tampered or incomplete artifact
    tag = model_tag_for(model_dir, name)
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        stored = None
    if stored is not None:
        try:
            artifact.verify_files(Path(stored.path), manifest)
            return tag
        except artifact.ArtifactError:  # the stored copy was damaged: replace it
            stage_log(f"stored model {tag} does not match its manifest; importing it again")
            bentoml.models.delete(tag)
    metadata = {"labels": manifest["labels"], "max_length": manifest["max_length"], "kind": manifest.get("kind"),
                "manifest_sha256": artifact.manifest_digest(model_dir), "metrics": manifest.get("metrics", {}),
                "source": str(Path(model_dir).absolute())}
    with bentoml.models.create(tag, labels={"framework": "onnx", "slimship": "classifier"},
                               metadata=metadata) as model:
        for relative in [*manifest["files"], artifact.MANIFEST]:
            target = Path(model.path) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(model_dir) / relative, target)
    artifact.load(bentoml.models.get(tag).path, format="onnx")  # the stored copy is complete and intact
    stage_log(f"imported {model_dir} into the BentoML model store as {tag}")
    return tag


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_bento(model_dir: str | Path, *, name: str = MODEL_NAME, version: str | None = None) -> str:
    """Import the artifact and build a bento (bentofile.yaml) that pins exactly that model; return the bento tag.

    The service reads its model tag from SLIMSHIP_MODEL when BentoML imports it during the build, so the bento
    records (and packs) that exact model version; the tag is also stored as the bento argument "model", which
    the service reads back whenever the bento is served (`bentoml serve TAG` or inside its container).
    """
    import bentoml

    tag = import_artifact(model_dir, name)
    # The service module binds its model when imported; forget an earlier import so this build sees this tag.
    for module in ("slimship.serve.service", "slimship.serve.settings"):
        sys.modules.pop(module, None)
    with tempfile.TemporaryDirectory(prefix="slimship-bento-") as context, _env(SLIMSHIP_MODEL=tag):
        bentofile = stage_build_context(Path(context))
        bento = bentoml.bentos.build_bentofile(str(bentofile), build_ctx=context, version=version,
                                               args={"model": tag})
    stage_log(f"built bento {bento.tag} with model {tag} at {bento.path}")
    return str(bento.tag)


def stage_build_context(context: Path) -> Path:
    """Copy the bentofile and every file it includes (slimship/...) into ``context``; return the bentofile.

    BentoML walks the whole build context to match the include list, so a context holding only these files
    keeps the build from walking a checkout's .venv or all of site-packages.
    """
    import yaml

    spec = yaml.safe_load(BENTOFILE.read_text(encoding="utf-8"))
    for pattern in spec["include"]:
        sources = [path for path in SOURCE_ROOT.glob(pattern) if path.is_file()]
        if not sources:  # a broken install
            raise UserError(f"{SOURCE_ROOT / pattern} is missing: the slimship installation is incomplete "
                            f"({BENTOFILE.name} includes {pattern})")
        for source in sources:
            target = context / source.relative_to(SOURCE_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copy2(BENTOFILE, context / BENTOFILE.name)
    return context / BENTOFILE.name
