"""Named sandboxes: created on first use, found again by name from any process, until destroyed.

On disk, under the state folder (default /var/lib/isolate, never visible inside a sandbox):
  sandboxes/<name>/meta.json   what the sandbox was created with (backend, uid, limits, image)
  sandboxes/<name>/upper,work  its writable layer: what persists
  run/<name>/agent.sock        the door its agent holds while it runs (host-only; see agent/client.py)
  sandboxes/<name>/net/        its /etc/hosts and /etc/resolv.conf, bound read-only into the jail
  network/slots.json           each sandbox's /30 of the address pool (see isolate.net)
  locks/<name>.lock            serializes start and destroy across processes
A running sandbox is a detached jail; any process that knocks at its door uses it,
and one that finds nobody holding the door starts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from . import cgroups, rootfs
from . import policy as seccomp_policy
from .agent.client import AgentClient, door_is_open
from .config import UID_SLOTS, Settings
from .errors import IsolateError, ValidationError
from .jail import BACKENDS, Backend, JailSpec, get_backend, log_tail
from .net.network import SandboxNetworks
from .net.policy import NetworkPolicy
from .pool import WarmPool, is_spare
from .record import SandboxRecord
from .types import ExposedPort, Limits, SandboxInfo, now_iso
from .validation import check_name


class SandboxManager:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self._clients: dict[str, AgentClient] = {}
        self._clients_lock = threading.Lock()
        self._prepared = False
        self.pool = WarmPool(self, self.settings.warm_pool)
        self.networks = SandboxNetworks(self.settings)

    # --- paths ---

    def sandbox_dir(self, name: str) -> Path:
        return self.settings.sandboxes_dir / name

    def run_dir(self, name: str) -> Path:
        return self.settings.run_dir / name

    def socket_path(self, name: str) -> Path:
        return self.run_dir(name) / "agent.sock"

    def cgroup(self, record: SandboxRecord) -> cgroups.SandboxCgroup:
        """Named by the sandbox's uid, which stays when a name changes (cgroup v2 cannot rename)."""
        return cgroups.SandboxCgroup(self.settings.instance, f"uid-{record.uid}")

    def _prepare(self) -> None:
        """Create the state folders once: traversable (not listable) so each sandbox uid reaches only its own layer."""
        if self._prepared:
            return
        if os.geteuid() != 0:
            raise IsolateError("isolate needs root to create sandboxes (namespaces, cgroups, uid maps)", code="HOST_NOT_READY")
        s = self.settings
        for folder, mode in ((s.state_dir, 0o711), (s.sandboxes_dir, 0o711), (s.images_dir, 0o755), (s.uids_dir, 0o700),
                             (s.runtime_dir.parent, 0o711), (s.runtime_dir, 0o711), (s.run_dir, 0o711), (s.locks_dir, 0o700)):
            folder.mkdir(mode=mode, parents=True, exist_ok=True)
            if folder.is_symlink() or folder.stat().st_uid != 0:  # the runtime root may be /dev/shm, which anyone can write
                raise IsolateError(f"{folder} is not a folder of root's; remove it and retry", code="HOST_NOT_READY")
            folder.chmod(mode)
        if s.favor_cgroup_moves:
            cgroups.favor_dynamic_moves()
        self._prepared = True

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self._prepare()
        with open(self.settings.locks_dir / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- records ---

    def load(self, name: str) -> SandboxRecord | None:
        try:
            return SandboxRecord.from_json((self.sandbox_dir(name) / "meta.json").read_text())
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.settings.sandboxes_dir.iterdir() if (p / "meta.json").is_file() and not is_spare(p.name))
        except FileNotFoundError:
            return []

    def open(self, name: str, *, backend: str | None = None, image: str | None = None, limits: Limits | None = None,
             policy: str | None = None, env: dict[str, str] | None = None, network: object = None) -> SandboxRecord:
        """The record of sandbox `name`, created with these options if it does not exist yet.

        Options only shape a new sandbox; an existing one keeps what it was created with
        (its network policy can change later: `set_network`).
        """
        check_name(name)
        record = self.load(name)
        if record is not None:
            return record
        wanted = SandboxRecord(
            name=name,
            uid=0,
            backend=backend or self.settings.backend,
            image=image or rootfs.HOST_IMAGE,
            policy=policy or self.settings.policy,
            limits=limits or self.settings.limits,
            env=dict(env or {}),
            network=NetworkPolicy.parse(network),
        )
        self._validate(wanted)
        with self._lock(name):
            record = self.load(name)
            if record is None and self.pool.serves(wanted):
                record = self.pool.claim(name)
                if record is not None and record.network != wanted.network:
                    record = self._apply_network(record, replace(record, network=wanted.network))  # live: the spare runs
            if record is None:
                record = self._create(wanted, start=True)  # a new sandbox is for use: its first call finds it running
        self.pool.refill_soon()
        return record

    def _validate(self, wanted: SandboxRecord) -> None:
        """Bad options fail before anything is made."""
        if wanted.backend not in BACKENDS:
            raise ValidationError(f"unknown backend {wanted.backend!r} (known: {', '.join(BACKENDS)})")
        rootfs.plan(wanted.image, self.settings.images_dir, self.sandbox_dir(wanted.name))
        self.backend(wanted.backend).check(seccomp_policy.load(wanted.policy))
        if not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k for k, v in wanted.env.items()):
            raise ValidationError("env must map variable names to string values")

    def _create(self, wanted: SandboxRecord, start: bool = False) -> SandboxRecord:
        """Make a sandbox's uid, writable layer and record (the caller holds its lock); with
        `start`, start its jail too, before the record is written: the jail does not need it, so
        the write (~1 ms on a slow disk) overlaps the jail's boot. A failure undoes it all."""
        name = wanted.name
        record = replace(wanted, uid=self._claim_uid(name), created_at=now_iso())
        try:
            rootfs.create_layers(self.sandbox_dir(name), record.uid, record.limits.disk_mb, self.settings.images_dir)
            if start:
                self._start(record)
            self.save(record)
        except BaseException:
            self._remove(name, record)
            raise
        return record

    def save(self, record: SandboxRecord) -> None:
        temp = self.sandbox_dir(record.name) / "meta.json.tmp"
        temp.write_text(record.to_json())
        temp.rename(temp.with_name("meta.json"))

    def _claim_uid(self, name: str) -> int:
        """A host uid no other sandbox holds, claimed atomically as the link uids/<uid> -> name."""
        start = zlib.crc32(name.encode()) % UID_SLOTS
        for step in range(UID_SLOTS):
            uid = self.settings.uid_base + (start + step) % UID_SLOTS
            try:
                os.symlink(name, self.settings.uids_dir / str(uid))
                return uid
            except FileExistsError:
                continue
        raise IsolateError("no free sandbox uid left", code="RESOURCE_BUSY")

    def _release_uid(self, name: str, uid: int) -> None:
        marker = self.settings.uids_dir / str(uid)
        with contextlib.suppress(OSError):
            if os.readlink(marker) == name:
                marker.unlink()

    # --- running ---

    def client(self, name: str) -> AgentClient:
        with self._clients_lock:
            client = self._clients.get(name)
            if client is None:
                client = AgentClient(self.socket_path(name), lambda: self.start(name), lambda: self.failure_report(name))
                self._clients[name] = client
            return client

    def is_running(self, name: str) -> bool:
        return door_is_open(self.socket_path(name))

    def start(self, name: str) -> None:
        """Start the sandbox's jail unless it already runs; the agent then answers on its socket."""
        with self._lock(name):
            record = self.load(name)
            if record is None:
                raise IsolateError(f"sandbox {name!r} does not exist", code="SANDBOX_NOT_FOUND")
            if not self.is_running(name):
                self._start(record)

    def _start(self, record: SandboxRecord) -> None:
        """Start the jail of a sandbox that is not running (the caller holds its lock)."""
        name = record.name
        backend = self.backend(record.backend)
        cgroup = self.cgroup(record)
        cgroup.kill()  # leftovers of a jail that died half-way
        cgroup.create(backend.host_limits(record.limits))
        run_dir = self.run_dir(name)
        run_dir.mkdir(mode=0o711, exist_ok=True)  # traversable: nsjail, as the sandbox uid, binds /etc/hosts from here
        sock_path = self.socket_path(name)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        door = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # the network namespace is held open until the jail is in it, then it lives as long as the jail
        with contextlib.ExitStack() as stack:
            stack.callback(door.close)  # the jail holds it now; if the jail dies, knocking fails at once
            door.bind(str(sock_path))
            network = stack.enter_context(self.networks.attached(record, run_dir))
            spec = JailSpec(
                name=name,
                uid=record.uid,
                rootfs=rootfs.plan(record.image, self.settings.images_dir, self.sandbox_dir(name)),
                limits=record.limits,
                cgroup=cgroup,
                run_dir=run_dir,
                door_fd=door.fileno(),
                idle_timeout=self.settings.idle_timeout,
                policy=record.policy,
                env=dict(record.env),
                netns=network.netns,
                files=network.files,
            )
            pid = backend.start(spec)
            (run_dir / "pid").write_text(str(pid))

    def backend(self, name: str) -> Backend:
        return get_backend(name, self.settings.libexec_dir)

    def failure_report(self, name: str) -> str:
        return log_tail(self.run_dir(name) / "jail.log")

    def stop(self, name: str) -> None:
        """End every process of the sandbox; its files stay."""
        with self._lock(name):
            self._drop_client(name)
            record = self.load(name)
            if record is not None:
                self.cgroup(record).kill()
                self.backend(record.backend).cleanup(self.run_dir(name), self.sandbox_dir(name))
                self.networks.release(record)
            with contextlib.suppress(FileNotFoundError):
                self.socket_path(name).unlink()

    def destroy(self, name: str) -> bool:
        """Remove the sandbox: processes, cgroups, run folder and files. False if it did not exist."""
        return self._destroy(check_name(name))

    def _destroy(self, name: str) -> bool:
        with self._lock(name):
            record = self.load(name)
            self._remove(name, record)
        with contextlib.suppress(FileNotFoundError):
            (self.settings.locks_dir / f"{name}.lock").unlink()
        return record is not None

    def _remove(self, name: str, record: SandboxRecord | None) -> None:
        """Remove whatever exists of sandbox `name` (the caller holds its lock)."""
        self._drop_client(name)
        if record is not None:
            self.cgroup(record).remove()
            self.backend(record.backend).cleanup(self.run_dir(name), self.sandbox_dir(name))
            self.networks.forget(record)
        shutil.rmtree(self.run_dir(name), ignore_errors=True)
        shutil.rmtree(self.sandbox_dir(name), ignore_errors=True)
        if record is not None:
            self._release_uid(name, record.uid)

    def _drop_client(self, name: str) -> None:
        with self._clients_lock:
            client = self._clients.pop(name, None)
        if client is not None:
            client.close()

    def info(self, name: str) -> SandboxInfo:
        record = self.load(name)
        if record is None:
            raise IsolateError(f"sandbox {name!r} does not exist", code="SANDBOX_NOT_FOUND")
        running = self.is_running(name)
        return SandboxInfo(
            name=name,
            backend=record.backend,
            state="running" if running else "stopped",
            created_at=record.created_at,
            disk_bytes=rootfs.disk_usage(self.sandbox_dir(name)),
            memory_bytes=self.cgroup(record).pss_bytes() if running else 0,
        )

    def list(self) -> list[SandboxInfo]:
        return [self.info(name) for name in self.names()]

    def discard(self) -> None:
        """Destroy every sandbox, then the state folder itself and what it keeps elsewhere on the
        host (cgroup parents, runtime folder): for throwaway state folders (benchmarks, checks)."""
        for name in self.names():
            self.destroy(name)
        self.pool.drain()
        self.clean_leftovers()
        cgroups.remove_parent(self.settings.instance)
        shutil.rmtree(self.settings.state_dir, ignore_errors=True)
        shutil.rmtree(self.settings.runtime_dir, ignore_errors=True)

    def clean_leftovers(self) -> list[str]:
        """After a crash: unmount what is mounted under the state folder, remove cgroups, run
        folders and processes that belong to no sandbox, and stop sandboxes whose agent no
        longer answers (a healthy one keeps running: any process can use it by name).
        What a creation under way holds (its name's lock) is left alone. Returns what was removed."""
        removed = [f"mount:{point}" for point in rootfs.unmount_under(self.settings.state_dir)]
        for group in cgroups.list_sandbox_cgroups(self.settings.instance):
            owner = self._uid_owner(group.removeprefix("uid-"))
            with self._unless_busy(owner) as free:
                if free and (owner is None or self.load(owner) is None):
                    cgroups.SandboxCgroup(self.settings.instance, group).remove()
                    removed.append(f"cgroup:{group}")
        removed += [f"process:{pid}" for pid in self._kill_strays()]
        if self.settings.run_dir.is_dir():
            for folder in self.settings.run_dir.iterdir():
                with self._unless_busy(folder.name) as free:
                    if free and self.load(folder.name) is None:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed.append(f"run:{folder.name}")
        records = {r.name: r for r in (self.load(n) for n in [*self.names(), *self.pool.spares()]) if r is not None}
        for name, record in records.items():
            if not self.is_running(name) and (self.cgroup(record).pids() or (self.run_dir(name) / "runsc").is_dir()):
                had_processes = bool(self.cgroup(record).pids())
                self.stop(name)  # also removes what the backend left beside (runsc's state and bundle)
                if had_processes:
                    removed.append(f"processes:{name}")
        for name, record in records.items():
            if not self.is_running(name):
                with self._lock(name):  # a start under way in another process holds it
                    if not self.is_running(name) and self.networks.release(record):
                        removed.append(f"network:{name}")
        removed += self.networks.clean_leftovers(list(records.values()))
        if self.settings.uids_dir.is_dir():
            for marker in self.settings.uids_dir.iterdir():
                owner = self._uid_owner(marker.name)
                with self._unless_busy(owner) as free:
                    if free and (owner is None or self.load(owner) is None):
                        marker.unlink()  # claimed by a creation that never finished
                        removed.append(f"uid:{marker.name}")
        if self.settings.sandboxes_dir.is_dir():
            for folder in self.settings.sandboxes_dir.iterdir():
                with self._unless_busy(folder.name) as free:
                    if free and not (folder / "meta.json").exists():
                        shutil.rmtree(folder, ignore_errors=True)  # a creation that never finished
                        removed.append(f"sandbox:{folder.name}")
        return removed

    def _uid_owner(self, uid: str) -> str | None:
        try:
            return os.readlink(self.settings.uids_dir / uid)
        except OSError:
            return None

    @contextlib.contextmanager
    def _unless_busy(self, name: str | None) -> Iterator[bool]:
        """Holds `name`'s lock if nobody else does (yields True), else yields False at once:
        a creation under way (the warm pool's, say) holds it until its record is written."""
        if name is None:
            yield True
            return
        try:
            fd = os.open(self.settings.locks_dir / f"{name}.lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _kill_strays(self) -> list[int]:
        """Processes outside every sandbox cgroup that still run from this state folder (runsc's
        name their state root there). None should exist: jails join their cgroups before they start."""
        marker = f"--root={self.settings.run_dir}/".encode()
        ours = f":/{self.settings.instance}/"
        killed = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                if marker in (entry / "cmdline").read_bytes() and ours not in (entry / "cgroup").read_text():
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
        return killed

    # --- network ---

    def _apply_network(self, record: SandboxRecord, updated: SandboxRecord) -> SandboxRecord:
        """Apply changed network settings live if the sandbox runs, then keep them (the caller holds the lock)."""
        run_dir, members = self.run_dir(record.name), self.cgroup(record).pids()
        try:
            self.networks.update(updated, run_dir, members)
        except BaseException:
            self.networks.update(record, run_dir, members)
            raise
        self.save(updated)
        return updated

    def _change_network(self, name: str, change: Callable[[SandboxRecord], SandboxRecord]) -> SandboxRecord:
        with self._lock(name):
            record = self.load(name)
            if record is None:
                raise IsolateError(f"sandbox {name!r} does not exist", code="SANDBOX_NOT_FOUND")
            return self._apply_network(record, change(record))

    def set_network(self, name: str, network: object) -> SandboxRecord:
        """A new policy ("none", "open", {"allow": [...]}), in force at once: nothing restarts."""
        policy = NetworkPolicy.parse(network)
        return self._change_network(name, lambda record: replace(record, network=policy))

    def expose_port(self, name: str, port: int) -> ExposedPort:
        """Make a service listening on `port` inside reachable from the host at 127.128.x.y:`port`."""
        port = check_port(port)
        record = self._change_network(name, lambda r: replace(r, exposed_ports=tuple(sorted({*r.exposed_ports, port}))))
        return self.exposed_port(record, port)

    def unexpose_port(self, name: str, port: int) -> None:
        port = check_port(port)
        self._change_network(name, lambda r: replace(r, exposed_ports=tuple(p for p in r.exposed_ports if p != port)))

    def exposed_port(self, record: SandboxRecord, port: int) -> ExposedPort:
        address = self.networks.expose_slot(record).expose_address
        return ExposedPort(port=port, host=address, url=f"http://{address}:{port}")


def check_port(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValidationError(f"port must be an integer from 1 to 65535, not {port!r}")
    return port
