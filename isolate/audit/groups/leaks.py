"""Information leaks: the host's environment, name, kernel logs and symbols, processes, users
and files, and other sandboxes' data."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from .. import probes
from ..battery import Audit, case
from ..canaries import SECRET_VARIABLE

GROUP = "leaks"
# The variables a command starts with: isolate's allowlist (sandbox.BASE_ENV), what sh adds,
# and nothing of the host's.
ALLOWED_VARIABLES = {"PATH", "HOME", "USER", "LANG", "TERM", "HOSTNAME", "PWD", "SHLVL", "_", "OLDPWD"}


@case(GROUP, "host-environment", "only the allowlisted variables")
def host_environment(audit: Audit) -> str:
    """A command's environment holds isolate's allowlisted variables only, none of the host's."""
    names = {line.split("=", 1)[0] for line in audit.exec(audit.sandbox(GROUP), "env").stdout.splitlines() if "=" in line}
    extra = sorted(names - ALLOWED_VARIABLES)
    return "only the allowlisted variables" if not extra else "also " + " ".join(extra)


ENVIRON_SEARCH = (
    "import os, sys\nwanted = (sys.argv[1] + '=').encode()\nfound = []\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try: data = open('/proc/%s/environ' % pid, 'rb').read()\n"
    "    except OSError: continue\n"
    "    if wanted in data: found.append(pid)\n"
    "print('in pids ' + ' '.join(found) if found else 'absent')"
)


@case(GROUP, "host-secret-anywhere", "absent")
def host_secret_anywhere(audit: Audit) -> str:
    """The variable holding the host program's secret is in no process's environment inside
    (and the secret itself in no output: the canary checks that after every case)."""
    return audit.python(audit.sandbox(GROUP), ENVIRON_SEARCH, SECRET_VARIABLE).stdout.strip()


@case(GROUP, "hostname", "sandbox")
def hostname(audit: Audit) -> str:
    """The host's name is not the sandbox's: uname and /etc/hostname say `sandbox`."""
    sandbox = audit.sandbox(GROUP)
    names = {audit.exec(sandbox, "uname", ["-n"]).stdout.strip(), audit.exec(sandbox, "cat", ["/etc/hostname"]).stdout.strip()}
    if socket.gethostname() in names and socket.gethostname() != "sandbox":
        return "the host's name"
    return " ".join(sorted(names))


@case(GROUP, "host-boot-command-line", "empty",
      differs=(("gvisor", "not the host's", "gVisor's kernel shows a fixed command line of its own"),))
def host_boot_command_line(audit: Audit) -> str:
    """/proc/cmdline, the host's boot command line (it can hold addresses, tokens, the host's setup), is empty inside."""
    text = audit.exec(audit.sandbox(GROUP), "cat", ["/proc/cmdline"]).stdout
    if not text.strip():
        return "empty"
    with open("/proc/cmdline") as handle:
        return f"{len(text)} bytes of the host's" if text.strip() == handle.read().strip() else "not the host's"


@case(GROUP, "host-shell-setup-files", "none of the host's")
def host_shell_setup_files(audit: Audit) -> str:
    """/etc/environment, /etc/profile and /etc/bash.bashrc set variables for every login: the
    sandbox has isolate's own, never the host's (which may carry proxies and their credentials)."""
    copied = []
    for path in ("/etc/environment", "/etc/profile", "/etc/bash.bashrc"):
        try:
            host = Path(path).read_text()
        except OSError:
            continue
        inside = audit.exec(audit.sandbox(GROUP), "cat", [path])
        if inside.exit_code == 0 and host.strip() and inside.stdout == host:
            copied.append(path)
    return "none of the host's" if not copied else " ".join(copied)


@case(GROUP, "kernel-log", "EPERM")
def kernel_log(audit: Audit) -> str:
    """Read the kernel log (`dmesg`: the syslog call)."""
    return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, "libc('klogctl', 3, ctypes.create_string_buffer(4096), 4096)").stdout.strip()


@case(GROUP, "kernel-log-device", "absent or unreadable")
def kernel_log_device(audit: Audit) -> str:
    """Read /dev/kmsg and /proc/kmsg."""
    seen = {audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, f"os.read(os.open({path!r}, os.O_RDONLY | os.O_NONBLOCK), 64)").stdout.strip()
            for path in ("/dev/kmsg", "/proc/kmsg")}
    return "absent or unreadable" if seen <= {"ENOENT", "EACCES", "EPERM"} else " ".join(sorted(seen))


@case(GROUP, "kernel-symbols", "no addresses")
def kernel_symbols(audit: Audit) -> str:
    """Read kernel symbol addresses: /proc/kallsyms and System.map."""
    sandbox = audit.sandbox(GROUP)
    kallsyms = audit.exec(sandbox, "head", ["-c", "4096", "/proc/kallsyms"]).stdout
    has_addresses = any(line.split()[0].strip("0") for line in kallsyms.splitlines() if line.split())
    maps = audit.exec(sandbox, "ls /boot/System.map* /lib/modules 2>/dev/null").stdout.strip()
    return "no addresses" if not has_addresses and not maps else f"addresses in {'kallsyms' if has_addresses else maps[:40]}"


@case(GROUP, "cgroup-path", "/ only")
def cgroup_path(audit: Audit) -> str:
    """/proc/self/cgroup names no host cgroup (which would name the sandbox and the host's layout)."""
    paths = {line.split(":", 2)[2] for line in audit.exec(audit.sandbox(GROUP), "cat", ["/proc/self/cgroup"]).stdout.splitlines()}
    return "/ only" if paths == {"/"} else " ".join(sorted(paths))[:60]


@case(GROUP, "host-processes", "invisible")
def host_processes(audit: Audit) -> str:
    """No host process shows: not the canary, not the host's init, not the jail's supervisor."""
    listing = audit.exec(audit.sandbox(GROUP), "ps", ["-eo", "pid,args"]).stdout
    seen = [name for name in ("sleep 86400", "nsjail", "systemd", "isolate-supervisor", "pytest") if name in listing]
    return "invisible" if not seen else "sees " + " ".join(seen)


@case(GROUP, "host-users", "nobody root")
def host_users(audit: Audit) -> str:
    """/etc/passwd names no host user."""
    text = audit.exec(audit.sandbox(GROUP), "cat", ["/etc/passwd"]).stdout
    return " ".join(sorted(line.split(":")[0] for line in text.splitlines() if line))


@case(GROUP, "host-secrets-files", "absent")
def host_secrets_files(audit: Audit) -> str:
    """The host's shadow file, SSH keys, root's home and the machine id are not in the tree."""
    paths = ["/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/machine-id", "/root/.ssh", "/root/.bash_history", "/var/log", "/home/*/.ssh"]
    found = audit.exec(audit.sandbox(GROUP), f"ls -d {' '.join(paths)} 2>/dev/null").stdout.split()
    return "absent" if not found else " ".join(found)


@case(GROUP, "host-home-contents", "none of the host's files")
def host_home_contents(audit: Audit) -> str:
    """What is in the host's /root is not in the sandbox's /root."""
    host = {name for name in os.listdir("/root")} if os.path.isdir("/root") else set()
    inside = set(audit.exec(audit.sandbox(GROUP), "ls", ["-A", "/root"]).stdout.split())
    shared = sorted(host & inside)
    return "none of the host's files" if not shared else " ".join(shared[:5])


@case(GROUP, "neighbour-files", "absent")
def neighbour_files(audit: Audit) -> str:
    """A file another sandbox wrote (in /workspace, /tmp and /root) is nowhere in this one."""
    name = f"{audit.canaries.marker}-neighbour"
    neighbour = audit.sandbox("leaks-neighbour")
    for folder in ("/workspace", "/tmp", "/root"):
        neighbour.write_file(f"{folder}/{name}", "neighbour's data")
    found = audit.exec(audit.sandbox(GROUP), f"find / -xdev -name '{name}' 2>/dev/null").stdout.split()
    return "absent" if not found else " ".join(found)


@case(GROUP, "neighbour-environment", "absent")
def neighbour_environment(audit: Audit) -> str:
    """A variable given to another sandbox's commands is in no process of this one."""
    variable = f"NEIGHBOUR_SECRET_{secrets.token_hex(4).upper()}"
    neighbour = audit.fresh(env={variable: secrets.token_hex(8)})
    audit.exec(neighbour, "sleep 30 >/dev/null 2>&1 &")
    if audit.python(neighbour, ENVIRON_SEARCH, variable).stdout.strip() == "absent":  # the control
        return "the neighbour's own commands lack it"
    return audit.python(audit.sandbox(GROUP), ENVIRON_SEARCH, variable).stdout.strip()
