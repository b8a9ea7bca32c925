"""The root file system of a sandbox: a read-only image below, a writable layer of its own above.

The default image is a read-only view of the host's system folders. It is NOT
`lowerdir=/`: that would show the host's secrets and, through the state folder,
other sandboxes' upper layers (a leak demonstrated on this kind of host). Instead
the lower layer is a small skeleton (empty mount points, the host's /bin -> usr/bin
style links, and a sanitized /etc), and the host's /usr is bound read-only on top.
A user may instead name any root folder (e.g. one made by `scripts/make-image.sh`).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import syscalls
from .errors import HostError, ValidationError

HOST_IMAGE = "host"
HOST_IMAGE_VERSION = 2  # 2: the host's /etc/environment, profile and bash.bashrc no longer copied
# Host folders shown read-only in the host image when they are real folders, not links into /usr.
SYSTEM_FOLDERS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# What of the host's /etc a sandbox gets; nothing that names host users, secrets or services.
ETC_COPIES = (
    "alternatives", "ssl", "ca-certificates", "ca-certificates.conf", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "nsswitch.conf", "mime.types", "localtime", "timezone", "os-release",
    "debian_version", "inputrc", "shells", "protocols", "services",
    "python3", "python3.11", "gitconfig.d", "login.defs", "magic", "magic.mime",
)
ETC_WRITTEN = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\tsandbox\n",
    "hostname": "sandbox\n",
    "resolv.conf": "",
    # written, not copied: the host's versions may set variables of the host's (proxies and their credentials)
    "profile": 'PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\nexport PATH\n',
    "bash.bashrc": "[ -z \"$PS1\" ] && return\nPS1='\\u@\\h:\\w\\$ '\n",
}
SKELETON_FOLDERS = ("proc", "dev", "sys", "tmp", "workspace", "root", "home", "run", "var/tmp", "mnt", "opt", "srv")
# The device nodes a sandbox gets: name -> (major, minor).
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
# Folders made in every new upper layer, owned by the sandbox's own uid so its root can write there.
UPPER_FOLDERS = {"workspace": 0o755, "tmp": 0o1777, "root": 0o700, "home": 0o755, "var/tmp": 0o1777}


# Where a backend that mounts the overlay on the host side (gVisor) mounts it, in a private
# mount namespace only. It sits in the sandbox's own folder, which the sandbox's uid can reach.
MOUNT_POINT = "root"


@dataclass(frozen=True)
class RootfsPlan:
    lower: Path
    upper: Path
    work: Path
    mount_point: Path  # see MOUNT_POINT
    read_only_binds: tuple[str, ...] = field(default=())  # host folders shown at the same path
    # With a disk quota, upper and work live in an ext4 image of the quota's size, loop-mounted at
    # `disk_mount` in the jail's own mount namespace only (the loop device goes with that namespace).
    disk_image: Path | None = None
    disk_mount: Path | None = None
    empty: Path | None = None  # an empty folder, the second lower layer of read-only overlays


def host_image(images_dir: Path) -> tuple[Path, tuple[str, ...]]:
    """Build (once) the skeleton of the host image; return it and the host folders to bind over it."""
    skeleton = images_dir / f"{HOST_IMAGE}-v{HOST_IMAGE_VERSION}"
    binds = tuple(f"/{name}" for name in SYSTEM_FOLDERS if os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}"))
    if skeleton.is_dir():
        return skeleton, binds
    images_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".host-", dir=images_dir))
    try:
        build.chmod(0o755)
        for name in SYSTEM_FOLDERS:
            source = Path("/") / name
            if source.is_symlink():
                os.symlink(os.readlink(source), build / name)
            elif source.is_dir():
                (build / name).mkdir()
        for name in SKELETON_FOLDERS:
            (build / name).mkdir(parents=True, exist_ok=True)
        (build / "tmp").chmod(0o1777)
        etc = build / "etc"
        etc.mkdir()
        for name in ETC_COPIES:
            source = Path("/etc") / name
            if source.is_symlink():
                os.symlink(os.readlink(source), etc / name)
            elif source.is_dir():
                shutil.copytree(source, etc / name, symlinks=True)
            elif source.is_file():
                shutil.copy2(source, etc / name)
        for name, text in ETC_WRITTEN.items():
            (etc / name).write_text(text)
        os.rename(build, skeleton)
    except OSError as exc:
        shutil.rmtree(build, ignore_errors=True)
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise  # else another thread or process built it first
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return skeleton, binds


DISK_IMAGE = "disk.img"
BLANK_DISK_VERSION = 1  # part of the blank image's name: bump when its layout changes
DISK_MOUNT = "disk"


def plan(image: str, images_dir: Path, sandbox_dir: Path) -> RootfsPlan:
    if image == HOST_IMAGE:
        lower, binds = host_image(images_dir)
    else:
        lower, binds = Path(image), ()
        if not lower.is_absolute() or not lower.is_dir():
            raise ValidationError(f"image must be {HOST_IMAGE!r} or an absolute path to a root folder: {image!r}")
        if images_dir.parent.resolve().is_relative_to(lower.resolve()):
            # the image would show the state folder, and through it every sandbox's writable layer
            raise ValidationError(f"image {image!r} contains isolate's state folder; use a root folder of its own")
        if not (lower / "usr/bin/python3").exists() and not (lower / "bin/python3").exists():
            raise HostError(f"image {image} has no python3, which the sandbox agent needs")
    extras = {"empty": empty_folder(images_dir)}
    if (sandbox_dir / DISK_IMAGE).exists():
        mount = sandbox_dir / DISK_MOUNT
        return RootfsPlan(lower, mount / "upper", mount / "work", sandbox_dir / MOUNT_POINT, binds, sandbox_dir / DISK_IMAGE, mount, **extras)
    return RootfsPlan(lower, sandbox_dir / "upper", sandbox_dir / "work", sandbox_dir / MOUNT_POINT, binds, **extras)


def empty_folder(images_dir: Path) -> Path:
    """A root-owned folder that stays empty (overlayfs wants two lower layers when it has no upper one)."""
    folder = images_dir / "empty"
    if not folder.is_dir():
        images_dir.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o755, exist_ok=True)
    return folder


def make_device_nodes(folder: Path) -> None:
    """Make a sandbox's own device nodes in `folder` (on a file system that allows them).

    Own inodes, not binds of the host's /dev/null: a lock or lease taken on a shared
    inode would reach other sandboxes and the host.
    """
    folder.mkdir(mode=0o755)
    for name, (major, minor) in DEVICES.items():
        os.mknod(folder / name, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(folder / name, 0o666)  # mknod's mode passes through the umask


def create_layers(sandbox_dir: Path, uid: int, disk_mb: int | None, images_dir: Path) -> None:
    """Make the writable layer of a new sandbox, for the sandbox's host uid.

    With `disk_mb`, the layer lives in a sparse ext4 image of that size, which caps what the
    sandbox can write: a copy of a blank one (`blank_disk`), handed to the uid when the jail
    first mounts it (`hand_over`). Without, it is a plain folder.
    """
    sandbox_dir.mkdir(mode=0o700)
    os.chown(sandbox_dir, uid, uid)
    try:
        if disk_mb:
            (sandbox_dir / DISK_MOUNT).mkdir(mode=0o755)
            copy_sparse(blank_disk(images_dir, disk_mb), sandbox_dir / DISK_IMAGE)
        else:
            _make_layer_folders(sandbox_dir, uid)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or str(exc)
        raise HostError(f"cannot make the sandbox's disk: {detail!r}") from exc


def blank_disk(images_dir: Path, disk_mb: int) -> Path:
    """An ext4 image of `disk_mb` MiB holding nothing but an empty layer, made once per size.

    mkfs takes ~5 ms and this host's disk ~0.5 ms per file made; copying the ~200 KB this
    image holds takes well under one.
    """
    image = images_dir / f"blank-{disk_mb}m-v{BLANK_DISK_VERSION}.img"
    if image.exists():
        return image
    images_dir.mkdir(parents=True, exist_ok=True)
    # staged on tmpfs when there is one: folders there are made and removed ~10x faster than on disk
    staging = Path(tempfile.mkdtemp(prefix="isolate-layer-", dir="/dev/shm" if os.path.isdir("/dev/shm") else images_dir))
    temp = image.with_name(f".{image.name}.{os.getpid()}")
    try:
        _make_layer_folders(staging, 0)
        subprocess.run(
            # 32 inodes per MiB and no reserved blocks or resize inode: half the default mkfs time
            ["mkfs.ext4", "-q", "-F", "-d", str(staging), "-m", "0", "-N", str(max(4096, disk_mb * 32)), "-O", "^resize_inode",
             "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(temp), f"{disk_mb}M"],
            check=True, capture_output=True,
        )
        os.replace(temp, image)  # whole or not at all, whoever else is making it
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        temp.unlink(missing_ok=True)
    return image


def copy_sparse(source: Path, target: Path) -> None:
    """Copy a sparse file's data, leaving its holes holes (a 2 GiB image is ~200 KB of data)."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        os.ftruncate(dst.fileno(), size)
        offset = 0
        while offset < size:
            try:
                offset = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    return
                raise
            end = os.lseek(src.fileno(), offset, os.SEEK_HOLE)
            while offset < end:
                offset += os.copy_file_range(src.fileno(), dst.fileno(), end - offset, offset, offset)


def hand_over(plan: RootfsPlan, uid: int) -> None:
    """Give a fresh disk's layer folders to the sandbox's uid (root owns the blank they were
    copied from). Run where the disk is mounted, before the jail starts; only the first time:
    a layer the uid owns is left as it is, and links are never followed."""
    if plan.disk_mount is None or os.lstat(plan.upper).st_uid == uid:
        return
    owned = {plan.disk_mount, plan.upper, plan.work}
    for name in UPPER_FOLDERS:
        owned.update((plan.upper / name, (plan.upper / name).parent))
    for path in owned:
        os.chown(path, uid, uid, follow_symlinks=False)


def _make_layer_folders(root: Path, uid: int) -> None:
    for name in ("upper", "work"):
        (root / name).mkdir(mode=0o755)
        os.chown(root / name, uid, uid)
    for name, mode in UPPER_FOLDERS.items():
        folder = root / "upper" / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(mode)
        os.chown(folder, uid, uid)
        if folder.parent != root / "upper":
            os.chown(folder.parent, uid, uid)


def unmount_under(folder: Path) -> list[str]:
    """Detach whatever is mounted at or below `folder` in this mount namespace, deepest first.

    No backend mounts anything in the host's namespace; this is for what a crash or a
    bug could leave, and it runs before any recursive delete of a sandbox's folders.
    """
    prefix = str(folder.resolve()).rstrip("/") + "/"
    points = [point for _, point, _, _ in syscalls.mount_table()]
    found = sorted((point for point in points if (point + "/").startswith(prefix)), key=len, reverse=True)
    for point in found:
        syscalls.umount_detached(point)
    return found


WALK_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_WALK_DEPTH = 256  # folders deeper than this are not counted (one descriptor is held per level)


def disk_usage(sandbox_dir: Path) -> int:
    """Bytes the sandbox's writable layer takes on the host disk: its image, or its layer folder.

    The folder is a tree the sandbox controls, so it is walked by descriptor (openat with
    O_NOFOLLOW, fstatat without following): a sandbox swapping a folder for a symlink
    mid-walk cannot lead the walk outside its layer.
    """
    image = sandbox_dir / DISK_IMAGE
    if image.exists():
        return image.stat().st_blocks * 512
    try:
        top = os.open(sandbox_dir / "upper", WALK_FLAGS)
    except OSError:
        return 0
    total = 0
    stack = [(top, os.scandir(top))]
    try:
        while stack:
            fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                os.close(fd)
                stack.pop()
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode) and len(stack) < MAX_WALK_DEPTH:
                try:
                    child = os.open(entry.name, WALK_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # replaced by a symlink or removed since
                stack.append((child, os.scandir(child)))
    finally:
        for fd, entries in stack:
            entries.close()
            os.close(fd)
    return total
