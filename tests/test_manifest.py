"""Artifacts: atomic writes, recorded digests and versions, refusal of tampered or incomplete artifacts."""

from __future__ import annotations

import json

import pytest

from slimship.core import artifact
from slimship.core.artifact import ArtifactError


def make(tmp_path, name="a", **extra):
    with artifact.create(tmp_path / name, "test", format="pytorch", config={"x": 1}) as art:
        (art.dir / "weights.bin").write_bytes(b"\x00\x01" * 100)
        (art.dir / "sub").mkdir()
        (art.dir / "sub" / "vocab.txt").write_text("a\nb\n")
        art.manifest.update(labels=["a", "b"], max_length=16, **extra)
    return tmp_path / name


def test_manifest_records_digests_versions_and_parent(tmp_path):
    parent = make(tmp_path, "parent")
    with artifact.create(tmp_path / "child", "test", format="onnx", parent=parent) as art:
        (art.dir / "model.onnx").write_bytes(b"onnx")
        art.manifest.update(labels=["a", "b"], max_length=16)
    m = artifact.load(tmp_path / "child")
    assert m["format_version"] == artifact.FORMAT_VERSION and m["kind"] == "test" and m["format"] == "onnx"
    assert set(m["files"]) == {"model.onnx"}
    assert m["files"]["model.onnx"] == artifact.sha256_file(tmp_path / "child" / "model.onnx")
    assert m["parent"]["manifest_sha256"] == artifact.manifest_digest(parent)
    assert "python" in m["versions"] and "numpy" in m["versions"]
    assert set(artifact.load(parent)["files"]) == {"weights.bin", "sub/vocab.txt"}


def test_a_flipped_byte_is_refused(tmp_path):
    path = make(tmp_path)
    data = bytearray((path / "weights.bin").read_bytes())
    data[10] ^= 0xFF
    (path / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.bin does not match its sha256"):
        artifact.load(path)


def test_a_missing_file_is_refused(tmp_path):
    path = make(tmp_path)
    (path / "sub" / "vocab.txt").unlink()
    with pytest.raises(ArtifactError, match="incomplete artifact, sub/vocab.txt is missing"):
        artifact.load(path)


def test_wrong_format_and_not_an_artifact(tmp_path):
    path = make(tmp_path)
    with pytest.raises(ArtifactError, match="needs 'onnx'"):
        artifact.load(path, format="onnx")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        artifact.load(tmp_path)


def test_a_crash_inside_the_stage_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with artifact.create(tmp_path / "out", "test", format="pytorch") as art:
            (art.dir / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_rewriting_replaces_the_old_artifact_whole(tmp_path):
    make(tmp_path, extra_field=1)
    make(tmp_path, extra_field=2)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["extra_field"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_stage_must_record_labels_and_max_length(tmp_path):
    with pytest.raises(RuntimeError, match="labels"):
        with artifact.create(tmp_path / "out", "test", format="pytorch") as art:
            (art.dir / "w").write_bytes(b"x")
    assert not (tmp_path / "out").exists()
