"""The Kafel subset isolate's policies are written in, and its rendering as an OCI seccomp profile.

nsjail compiles a policy itself; gVisor takes an OCI profile, applied by its Sentry
(`runsc --oci-seccomp`). One policy file serves both: this module reads it and
renders the same deny rules for runsc. What the subset covers:

    #define NAME VALUE
    POLICY name { ACTION(errno) { syscall, SYSCALL[nr], syscall(a, b) { expr } }, ... }
    USE name DEFAULT ALLOW

with expr made of `||`, `&&`, parentheses and comparisons `arg OP value` or
`(arg & mask) OP value`. Anything else is refused with a clear error rather than
translated loosely. The rendering errs on the safe side: deny rules compare only the
low 32 bits when the value fits in them (as the kernel does for int arguments, so a
deny cannot be dodged through the high bits), and an allow list (`a != x && a != y`)
becomes exact allow rules followed by the deny, relying on runsc's first-match order.
"""

from __future__ import annotations

import errno
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ValidationError

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
# Kafel's own names where they differ from the kernel's.
KAFEL_ALIASES = {"umount": "umount2"}
TOKEN = re.compile(r"\s+|//[^\n]*|/\*.*?\*/|(#define)|(0x[0-9a-fA-F]+|\d+)|([A-Za-z_]\w*)|(&&|\|\||==|!=|<=|>=|[<>&(){}\[\],])", re.S)
OCI_OPS = {"==": "SCMP_CMP_EQ", "!=": "SCMP_CMP_NE", "<": "SCMP_CMP_LT", "<=": "SCMP_CMP_LE", ">": "SCMP_CMP_GT", ">=": "SCMP_CMP_GE"}
OCI_ACTIONS = {"ALLOW": "SCMP_ACT_ALLOW", "ERRNO": "SCMP_ACT_ERRNO", "KILL": "SCMP_ACT_KILL"}
LOW32 = 0xFFFFFFFF


class PolicyError(ValidationError):
    """A policy uses Kafel beyond the subset isolate can render for every backend."""


@dataclass(frozen=True)
class Comparison:
    arg: int
    op: str
    value: int
    mask: int | None = None


@dataclass(frozen=True)
class Rule:
    action: str  # ALLOW, ERRNO or KILL
    errno: int
    syscall: str  # the kernel's name
    clauses: tuple[tuple[Comparison, ...], ...] = ()  # OR of ANDs; empty: always


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: str


def syscall_table(header: Path = UNISTD) -> dict[int, str]:
    """Number -> name of the host's system calls, from the kernel headers (linux-libc-dev)."""
    try:
        text = header.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read the system call table {header} (apt-get install linux-libc-dev): {exc}") from exc
    return {int(number): name for name, number in re.findall(r"#define __NR_(\w+)\s+(\d+)", text)}


class _Parser:
    def __init__(self, text: str, names: set[str], numbers: dict[int, str]):
        self.tokens: list[str] = []
        for match in TOKEN.finditer(text):
            token = next((group for group in match.groups() if group), None)
            if token is not None:
                self.tokens.append(token)
        if "".join(TOKEN.sub("", text).split()):
            raise PolicyError(f"unexpected characters in policy: {TOKEN.sub('', text).strip()[:40]!r}")
        self.pos = 0
        self.defines: dict[str, int] = {}
        self.names, self.numbers = names, numbers

    def peek(self, ahead: int = 0) -> str:
        return self.tokens[self.pos + ahead] if self.pos + ahead < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if not token or (expected is not None and token != expected):
            raise PolicyError(f"policy: expected {expected or 'more'!r}, found {token or 'end of file'!r}")
        self.pos += 1
        return token

    def number(self, token: str) -> int:
        if token in self.defines:
            return self.defines[token]
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", token):
            return int(token, 0)
        raise PolicyError(f"policy: {token!r} is not a number or a #define")

    def parse(self) -> Policy:
        policies: dict[str, list[Rule]] = {}
        used: Policy | None = None
        while self.peek():
            keyword = self.take()
            if keyword == "#define":
                name = self.take()
                self.defines[name] = self.number(self.take())
            elif keyword == "POLICY":
                name = self.take()
                policies[name] = self.policy_body()
            elif keyword == "USE":
                name = self.take()
                self.take("DEFAULT")
                if name not in policies:
                    raise PolicyError(f"policy: USE of unknown policy {name!r}")
                used = Policy(tuple(policies[name]), self.take())
            else:
                raise PolicyError(f"policy: unsupported statement {keyword!r}")
        if used is None:
            raise PolicyError("policy: no USE ... DEFAULT statement")
        return used

    def policy_body(self) -> list[Rule]:
        rules: list[Rule] = []
        self.take("{")
        while True:
            action = self.take()
            if action not in OCI_ACTIONS:
                raise PolicyError(f"policy: unsupported action {action!r}")
            code = 0
            if self.peek() == "(":
                self.take("(")
                code = self.number(self.take())
                self.take(")")
            self.take("{")
            while True:
                rules.append(self.syscall_rule(action, code))
                if self.take() == "}":
                    break
            if self.take() == "}":
                return rules

    def syscall_rule(self, action: str, code: int) -> Rule:
        token = self.take()
        if token == "SYSCALL":
            self.take("[")
            number = self.number(self.take())
            self.take("]")
            if number not in self.numbers:
                raise PolicyError(f"policy: no system call number {number}")
            name = self.numbers[number]
        else:
            name = KAFEL_ALIASES.get(token, token)
            if name not in self.names:
                raise PolicyError(f"policy: unknown system call {token!r}")
        if self.peek() != "(":
            return Rule(action, code, name)
        self.take("(")
        args: dict[str, int] = {}
        while self.peek() != ")":
            args[self.take()] = len(args)
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        self.take("{")
        clauses = self.expression(args)
        self.take("}")
        return Rule(action, code, name, tuple(clauses))

    # expressions, returned in disjunctive normal form: a list of AND-clauses

    def expression(self, args: dict[str, int]) -> list[tuple[Comparison, ...]]:
        clauses = self.conjunction(args)
        while self.peek() == "||":
            self.take()
            clauses += self.conjunction(args)
        return clauses

    def conjunction(self, args: dict[str, int]) -> list[tuple[Comparison, ...]]:
        clauses = self.atom(args)
        while self.peek() == "&&":
            self.take()
            right = self.atom(args)
            clauses = [left + other for left, other in itertools.product(clauses, right)]
        return clauses

    def atom(self, args: dict[str, int]) -> list[tuple[Comparison, ...]]:
        mask = None
        if self.peek() == "(" and self.peek(2) == "&":
            self.take("(")
            arg = self.argument(args)
            self.take("&")
            mask = self.number(self.take())
            self.take(")")
        elif self.peek() == "(":
            self.take("(")
            clauses = self.expression(args)
            self.take(")")
            return clauses
        else:
            arg = self.argument(args)
        op = self.take()
        if op not in OCI_OPS:
            raise PolicyError(f"policy: unsupported operator {op!r}")
        value = self.number(self.take())
        if mask is not None and op == "!=" and value == 0:
            # (a & m) != 0: some bit of m is set, one clause per bit
            return [(Comparison(arg, "==", bit, bit),) for bit in (1 << i for i in range(64)) if mask & bit]
        if mask is not None and op != "==":
            raise PolicyError("policy: a masked argument can only be compared with == (or != 0)")
        return [(Comparison(arg, op, value, mask),)]

    def argument(self, args: dict[str, int]) -> int:
        name = self.take()
        if name not in args:
            raise PolicyError(f"policy: {name!r} is not an argument of this rule")
        return args[name]


def parse(text: str, numbers: dict[int, str] | None = None) -> Policy:
    numbers = syscall_table() if numbers is None else numbers
    return _Parser(text, set(numbers.values()), numbers).parse()


def _oci_arg(comparison: Comparison, *, exact: bool) -> dict[str, int | str]:
    if comparison.mask is not None:
        return {"index": comparison.arg, "value": comparison.mask, "valueTwo": comparison.value, "op": "SCMP_CMP_MASKED_EQ"}
    if comparison.op == "==" and not exact and comparison.value <= LOW32:
        return {"index": comparison.arg, "value": LOW32, "valueTwo": comparison.value, "op": "SCMP_CMP_MASKED_EQ"}
    return {"index": comparison.arg, "value": comparison.value, "op": OCI_OPS[comparison.op]}


def to_oci(policy: Policy, *, skip_errnos: frozenset[int] = frozenset()) -> dict[str, object]:
    """The OCI `linux.seccomp` object for `policy`; rules answering an errno in `skip_errnos` are left out."""
    if policy.default != "ALLOW":
        raise PolicyError("policy: only DEFAULT ALLOW policies can be rendered for OCI")
    entries: list[dict[str, object]] = []
    for rule in policy.rules:
        if rule.action == "ALLOW" or (rule.action == "ERRNO" and rule.errno in skip_errnos):
            continue
        deny: dict[str, object] = {"names": [rule.syscall], "action": OCI_ACTIONS[rule.action]}
        if rule.action == "ERRNO":
            deny["errnoRet"] = rule.errno or errno.EPERM
        for clause in rule.clauses or ((),):
            indexes = [c.arg for c in clause]
            if len(set(indexes)) == len(indexes):
                entries.append({**deny, "args": [_oci_arg(c, exact=False) for c in clause]} if clause else deny)
            elif len(rule.clauses) == 1 and len(set(indexes)) == 1 and all(c.op == "!=" and c.mask is None for c in clause):
                for comparison in clause:  # an allow list: exact allows first, then the deny
                    entries.append({"names": [rule.syscall], "action": "SCMP_ACT_ALLOW",
                                    "args": [_oci_arg(Comparison(comparison.arg, "==", comparison.value), exact=True)]})
                entries.append(deny)
            else:
                raise PolicyError(f"policy: the condition on {rule.syscall} compares one argument twice; OCI cannot say that")
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": entries}
