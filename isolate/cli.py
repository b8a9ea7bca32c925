"""The `isolate` command: exec, run, ls, rm, stop, read, write, cp, network, expose, git, gc and doctor."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

from . import doctor
from .errors import IsolateError
from .manager import SandboxManager
from .net.policy import MODES, NetworkPolicy
from .sandbox import Sandbox


def _sandbox(manager: SandboxManager, name: str, backend: str | None = None, network: object = None) -> Sandbox:
    return Sandbox(manager, manager.open(name, backend=backend, network=network))


def _network_option(args: argparse.Namespace) -> object:
    """--network none|open, or --allow ENTRY (repeatable) for an allowlist; None when neither was given."""
    if args.allow:
        if args.network not in (None, "allowlist"):
            raise IsolateError("--allow makes an allowlist: drop --network, or use --network allowlist", code="VALIDATION_FAILED")
        return {"allow": args.allow}
    return {"allow": []} if args.network == "allowlist" else args.network


def _describe(policy: NetworkPolicy) -> str:
    return policy.mode + "".join(f"\n  allow {entry}" for entry in policy.allow)


def _checkout(sandbox: Sandbox, args: argparse.Namespace) -> int:
    stream = sandbox.git_checkout(args.url, branch=args.branch, target_dir=args.target, depth=args.depth, timeout=args.timeout,
                                  stream=True, submodules=args.submodules)
    for event in stream:
        if event.type == "progress" and not args.quiet:
            print(event.text, file=sys.stderr)
    if stream.result is None:
        return 1
    print(f"{stream.result.target_dir} ({stream.result.branch})")
    return 0


def _exec(sandbox: Sandbox, argv: list[str], args: argparse.Namespace) -> int:
    """Stream a command's output to this terminal and return its exit status."""
    if not argv:
        raise IsolateError("no command given: isolate exec NAME -- CMD [ARGS...]", code="VALIDATION_FAILED")
    env = dict(item.split("=", 1) for item in args.env or [])
    stream = sandbox.exec(argv[0], argv[1:], stream=True, env=env, cwd=args.cwd, timeout=args.timeout)
    for event in stream:
        if event.type == "stdout":
            sys.stdout.write(event.data)
            sys.stdout.flush()
        elif event.type == "stderr":
            sys.stderr.write(event.data)
            sys.stderr.flush()
    result = stream.result
    if result is None:
        return 1
    if result.reason not in ("exited", "signaled"):
        print(f"isolate: command ended: {result.reason}", file=sys.stderr)
    return result.exit_code


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024:
            return f"{value:.0f}{unit}"
        value /= 1024
    return f"{value:.0f}T"


def _age(created_at: str) -> str:
    try:
        seconds = time.time() - datetime.fromisoformat(created_at.replace("Z", "+00:00")).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _split_target(target: str) -> tuple[str | None, str]:
    """`name:/path` names a file in a sandbox; anything else is a host path."""
    name, sep, path = target.partition(":")
    if sep and name and not name.startswith(("/", ".")):
        return name, path
    return None, target


def _copy(manager: SandboxManager, source: str, destination: str) -> None:
    src_name, src_path = _split_target(source)
    dst_name, dst_path = _split_target(destination)
    if (src_name is None) == (dst_name is None):
        raise IsolateError("cp needs exactly one side written as NAME:PATH", code="VALIDATION_FAILED")
    if src_name is not None:
        data = _sandbox(manager, src_name).read_file(src_path, encoding="bytes").data
        with open(dst_path, "wb") as handle:
            handle.write(data)
    else:
        with open(src_path, "rb") as handle:
            _sandbox(manager, dst_name or "").write_file(dst_path, handle.read())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isolate", description="Named, persistent, isolated Linux sandboxes.")
    commands = parser.add_subparsers(dest="command", required=True)

    def network_options(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--network", choices=MODES, help=f"network policy {what} (default none: only loopback)")
        sub.add_argument("--allow", action="append", metavar="HOST[:PORT]|CIDR[:PORT]", help="allowlist entry (repeatable)")

    def exec_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--backend", help="backend for a new sandbox (nsjail or gvisor)")
        network_options(sub, "for a new sandbox")
        sub.add_argument("--timeout", type=float, help="seconds before the command is killed")
        sub.add_argument("--cwd", help="working directory inside the sandbox")
        sub.add_argument("-e", "--env", action="append", metavar="KEY=VALUE", help="environment variable (repeatable)")
        sub.add_argument("argv", nargs="*", help="-- CMD [ARGS...]")

    sub = commands.add_parser("exec", help="run a command in a named sandbox (created on first use)")
    sub.add_argument("name")
    exec_options(sub)
    exec_options(commands.add_parser("run", help="run a command in a throwaway sandbox"))
    commands.add_parser("ls", help="list sandboxes")
    sub = commands.add_parser("rm", help="destroy sandboxes with their files")
    sub.add_argument("names", nargs="+")
    sub = commands.add_parser("stop", help="stop a sandbox's processes, keeping its files")
    sub.add_argument("name")
    sub = commands.add_parser("read", help="print a file from a sandbox")
    sub.add_argument("name")
    sub.add_argument("path")
    sub = commands.add_parser("write", help="write stdin (or --from FILE) to a file in a sandbox")
    sub.add_argument("name")
    sub.add_argument("path")
    sub.add_argument("--from", dest="source", help="host file to copy in")
    sub = commands.add_parser("cp", help="copy a file: NAME:PATH to a host path, or a host path to NAME:PATH")
    sub.add_argument("source")
    sub.add_argument("destination")
    sub = commands.add_parser("network", help="show a sandbox's network policy, or set it (applies live)")
    sub.add_argument("name")
    network_options(sub, "to set")
    sub = commands.add_parser("expose", help="make a port of a sandbox reachable from the host; prints the address")
    sub.add_argument("name")
    sub.add_argument("port", type=int)
    sub = commands.add_parser("unexpose", help="stop exposing a port")
    sub.add_argument("name")
    sub.add_argument("port", type=int)
    sub = commands.add_parser("git", help="clone a repository into a sandbox (git runs inside, with its network)")
    sub.add_argument("name")
    sub.add_argument("url")
    sub.add_argument("--branch")
    sub.add_argument("--depth", type=int)
    sub.add_argument("--target", help="folder inside (default /workspace/<repo name>)")
    sub.add_argument("--timeout", type=float, help="seconds before the clone is abandoned")
    sub.add_argument("--submodules", action="store_true", help="clone submodules too")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    commands.add_parser("gc", help="remove what crashed runs left behind (cgroups, processes, run folders, networks)")
    sub = commands.add_parser("serve", help="serve Cloudflare's sandbox container API over HTTP (the worker)")
    sub.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT or unix:/path (default 127.0.0.1:8080)")
    sub.add_argument("--token-file", help="file holding the token clients send as X-Isolate-Token (else ISOLATE_TOKEN)")
    sub.add_argument("--max-body-mb", type=int, default=64, help="largest request body accepted (413 past it)")
    sub.add_argument("--threads", type=int, default=256, help="sandbox calls served at once (streams included)")
    sub.add_argument("--shutdown-timeout", type=float, default=20.0, help="seconds in-flight requests get after SIGTERM")
    sub.add_argument("--warm-pool", type=int, default=2, help="spare sandboxes kept started for fast creation (0: none)")
    sub.add_argument("--backend", help="backend of sandboxes a request does not choose (X-Sandbox-Backend); default nsjail")
    commands.add_parser("doctor", help="check this host and say how to fix what is missing")
    sub = commands.add_parser("audit", help="attack this host's sandboxes with the security battery; non-zero exit if any attack succeeds")
    sub.add_argument("--backend", default="nsjail", help="backend to attack (default nsjail)")
    sub.add_argument("--group", action="append", help="run only this group of cases (repeatable)")
    sub.add_argument("--list", action="store_true", help="list the cases instead of running them")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if argv[:1] in (["exec"], ["run"]) and "--" in argv:  # options may come after NAME: split at `--` first
        command = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = build_parser().parse_args(argv)
    if command is not None:
        args.argv = command
    manager = SandboxManager()
    try:
        return _dispatch(manager, args)
    except IsolateError as exc:
        print(f"isolate: {exc.code}: {exc.message}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 130


def _dispatch(manager: SandboxManager, args: argparse.Namespace) -> int:
    if args.command == "exec":
        return _exec(_sandbox(manager, args.name, args.backend, _network_option(args)), args.argv, args)
    if args.command == "run":
        name = "run-" + secrets.token_hex(6)
        try:
            return _exec(_sandbox(manager, name, args.backend, _network_option(args)), args.argv, args)
        finally:
            manager.destroy(name)
    if args.command == "ls":
        print(f"{'NAME':24} {'BACKEND':8} {'STATE':8} {'AGE':>6} {'DISK':>7} {'MEMORY':>7}")
        for info in manager.list():
            print(f"{info.name:24} {info.backend:8} {info.state:8} {_age(info.created_at):>6} "
                  f"{_human(info.disk_bytes):>7} {_human(info.memory_bytes):>7}")
        return 0
    if args.command == "rm":
        missing = [name for name in args.names if not manager.destroy(name)]
        for name in missing:
            print(f"isolate: no sandbox named {name!r}", file=sys.stderr)
        return 1 if missing else 0
    if args.command == "stop":
        manager.stop(args.name)
        return 0
    if args.command == "read":
        sys.stdout.buffer.write(_sandbox(manager, args.name).read_file(args.path, encoding="bytes").data)
        return 0
    if args.command == "write":
        if args.source:
            with open(args.source, "rb") as handle:
                data = handle.read()
        else:
            data = sys.stdin.buffer.read()
        _sandbox(manager, args.name).write_file(args.path, data)
        return 0
    if args.command == "cp":
        _copy(manager, args.source, args.destination)
        return 0
    if args.command == "network":
        change = _network_option(args)
        sandbox = _sandbox(manager, args.name)
        print(_describe(sandbox.set_network(change) if change is not None else sandbox.network))
        return 0
    if args.command == "expose":
        print(_sandbox(manager, args.name).expose_port(args.port).url)
        return 0
    if args.command == "unexpose":
        _sandbox(manager, args.name).unexpose_port(args.port)
        return 0
    if args.command == "git":
        return _checkout(_sandbox(manager, args.name), args)
    if args.command == "gc":
        for item in manager.clean_leftovers():
            print(f"removed {item}")
        return 0
    if args.command == "serve":
        from .worker.auth import load_token
        from .worker.server import WorkerOptions, parse_listen, run

        options = WorkerOptions(listen=parse_listen(args.listen), token=load_token(args.token_file), max_body=args.max_body_mb << 20,
                                threads=args.threads, shutdown_timeout=args.shutdown_timeout)
        settings = replace(manager.settings, warm_pool=args.warm_pool, backend=args.backend or manager.settings.backend)
        return run(SandboxManager(settings), options)
    if args.command == "doctor":
        text, healthy = doctor.report(doctor.run_checks())
        print(text)
        return 0 if healthy else 1
    if args.command == "audit":
        return _audit(manager, args)
    raise AssertionError(args.command)


def _audit(manager: SandboxManager, args: argparse.Namespace) -> int:
    """One line per case (group, case, expected, observed, PASS/FAIL), then a summary."""
    from . import audit

    cases = [c for c in audit.all_cases() if not args.group or c.group in args.group]
    if args.list:
        for item in cases:
            print(f"{item.group:13} {item.name:34} {item.expected:26} {item.doc.splitlines()[0] if item.doc else ''}")
        return 0
    reason = audit.unavailable(manager, args.backend)
    if reason:
        print(f"isolate audit: cannot run: {reason}", file=sys.stderr)
        return 2
    print(f"{'GROUP':13} {'CASE':34} {'EXPECTED':26} {'OBSERVED':30} RESULT")
    started, results = time.monotonic(), []
    for result in audit.run_all(manager, args.backend, cases):
        results.append(result)
        print(result.line(), flush=True)
    print(audit.summary(results, args.backend, time.monotonic() - started))
    return 1 if any(r.passed is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
