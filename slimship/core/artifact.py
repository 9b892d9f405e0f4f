"""Artifact directories and their manifest.json.

Every stage reads one artifact directory and writes another. An artifact is a directory with its files and a
``manifest.json`` that records what it is (format version, kind, labels, max_length, metrics, config, library
versions), where it came from (the parent artifact) and the sha256 of every file, so any reader can refuse a
tampered or half-copied artifact.

Writing is atomic: a stage fills a hidden temporary directory next to the destination and renames it into
place only after the manifest is written, so a crash never leaves a half-written artifact behind.

This module is imported by the serving code, so it must not import torch or transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from slimship import __version__
from slimship.core.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Libraries whose versions decide whether an artifact reproduces; recorded when installed.
TRACKED_LIBRARIES = (
    "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers",
    "torch-pruning", "bentoml", "numpy", "accelerate",
)


class ArtifactError(UserError):
    """An artifact directory is missing, incomplete, tampered with or of the wrong kind."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "slimship": __version__}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _file_digests(root: Path) -> dict[str, str]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(root).as_posix()] = sha256_file(path)
    return files


def manifest_digest(artifact_dir: str | Path) -> str:
    """sha256 of an artifact's manifest.json: names one exact artifact (its files' digests are inside)."""
    return sha256_file(Path(artifact_dir) / MANIFEST)


class ArtifactBuilder:
    """The artifact being written: ``dir`` is the temporary directory, ``manifest`` the fields to record."""

    def __init__(self, tmp_dir: Path, manifest: dict[str, Any]):
        self.dir = tmp_dir
        self.manifest = manifest


@contextmanager
def create(
    out_dir: str | Path,
    kind: str,
    *,
    format: str,
    parent: str | Path | None = None,
    config: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Iterator[ArtifactBuilder]:
    """Write an artifact atomically.

    ``kind`` names the stage that made it (train, distill, prune, export, quantize, ...); ``format`` says how to
    load it (``pytorch`` or ``onnx``). Inside the ``with`` block, write files into ``builder.dir`` and add fields
    (labels, max_length, metrics, ...) to ``builder.manifest``. On a clean exit the manifest is written with
    every file's sha256 and the directory is renamed to ``out_dir``; on an exception nothing is left behind.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a writer that was killed mid-stage
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is read by other users (e.g. a container's)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "format": format,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parent": None,
        "config": config or {},
        "versions": library_versions(),
    }
    if parent is not None:
        parent_path = Path(parent).absolute()
        manifest["parent"] = {"path": str(parent_path), "manifest_sha256": manifest_digest(parent_path)}
    try:
        builder = ArtifactBuilder(tmp, manifest)
        yield builder
        for required in ("labels", "max_length"):
            if required not in manifest:
                raise RuntimeError(f"stage {kind!r} did not record {required!r} in its manifest")
        manifest["files"] = _file_digests(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(src: Path, dst: Path) -> None:
    """Move src to dst; an existing dst is swapped out first so a reader never sees a mixture."""
    if dst.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, trash / dst.name)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def load(artifact_dir: str | Path, *, verify: bool = True, format: str | None = None) -> dict[str, Any]:
    """Read an artifact's manifest; with ``verify`` check every listed file's sha256.

    Raises ArtifactError with a message that names the artifact and the file at fault.
    """
    root = Path(artifact_dir)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact directory (it does not exist)")
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root}: no {MANIFEST} here; is this a slimship artifact?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{root}: manifest format_version {version!r}; this slimship reads {FORMAT_VERSION}")
    if format is not None and manifest.get("format") != format:
        raise ArtifactError(f"{root}: is a {manifest.get('format')!r} artifact; this command needs {format!r}")
    if verify:
        verify_files(root, manifest)
    return manifest


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{root}: manifest lists no files")
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{root}: incomplete artifact, {name} is missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{root}: {name} does not match its sha256 in the manifest (tampered or corrupt)")


def stage_log(message: str) -> None:
    """One line of progress on stderr (stdout stays free for results)."""
    print(f"[slimship] {message}", file=sys.stderr, flush=True)
