"""Sandboxes on an image other than the host's: any root folder with python3 in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from isolate import HostError, Sandbox, ValidationError
from tests.conftest import unique_name


@pytest.fixture(scope="module")
def custom_image():
    """A root folder made of hard links to the host's /usr (fast, no download), with a marker of its own."""
    root = Path(tempfile.mkdtemp(prefix="isolate-image-", dir="/var/tmp"))
    root.chmod(0o755)
    subprocess.run(["cp", "-al", "/usr", str(root / "usr")], check=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{name}"):
            os.symlink(os.readlink(f"/{name}"), root / name)
    for name in ("etc", "tmp", "proc", "dev", "workspace", "root"):
        (root / name).mkdir()
    (root / "etc" / "image-marker").write_text("custom image\n")
    yield root
    shutil.rmtree(root)


def test_a_custom_image_is_the_root_and_the_host_one_is_not(manager, custom_image):
    name = unique_name("img")
    try:
        sandbox = Sandbox(manager, manager.open(name, image=str(custom_image)))
        assert sandbox.exec("cat", ["/etc/image-marker"]).stdout == "custom image\n"
        assert not sandbox.exists("/etc/passwd")  # the host image's sanitized /etc is not there
        sandbox.write_file("/workspace/kept", "yes")
        sandbox.stop()
        assert sandbox.read_file("/workspace/kept").content == "yes"
        assert not (custom_image / "workspace" / "kept").exists()  # the image itself is never written
    finally:
        manager.destroy(name)


def test_an_image_must_be_an_absolute_folder_with_python(manager, tmp_path):
    with pytest.raises(ValidationError):
        manager.open(unique_name(), image="relative/path")
    for holds_state in ("/", "/var", str(manager.settings.state_dir)):
        with pytest.raises(ValidationError, match="state folder"):
            manager.open(unique_name(), image=holds_state)
    empty = tmp_path / "empty-root"
    empty.mkdir()
    with pytest.raises(HostError):
        manager.open(unique_name(), image=str(empty))


def test_bad_creation_options_leave_nothing_behind(manager):
    before = sorted(p.name for p in manager.settings.uids_dir.iterdir())
    for options in ({"image": "relative"}, {"policy": "no-such-policy"}, {"backend": "nope"}, {"env": {"A=B": "x"}}):
        with pytest.raises(ValidationError):
            manager.open(unique_name(), **options)
    assert sorted(p.name for p in manager.settings.uids_dir.iterdir()) == before
