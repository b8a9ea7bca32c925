"""The Kafel subset isolate's policies are written in, and its rendering as an OCI seccomp profile for runsc.

nsjail compiles a policy itself; gVisor takes an OCI profile, applied by its Sentry
(`runsc --oci-seccomp`). One policy file serves both: this module reads it and renders
its rules for runsc. What the subset covers:

    #define NAME VALUE
    POLICY name { ACTION(errno) { call, SYSCALL[nr], call(a, b) { expr, expr } }, USE other, ... }
    USE name, ... DEFAULT ACTION

(a comma between conditions: any of them) with expr made of `||`, `&&`, `!`, parentheses and comparisons `arg OP value` or
`(arg & mask) == value` / `!=`. Anything else is refused with a clear error rather than
translated loosely. Rules keep their order: the first that matches decides, in Kafel as in
runsc (which tries its rule sets in order).

An OCI rule tests each argument once (EQ, NE, LT, ..., MASKED_EQ), so a condition is put
in disjunctive normal form, and the values each argument may take in one conjunction are
written as aligned blocks (`(arg & m) == v`): `a != 1 && a != 2` becomes the blocks that
cover everything but 1 and 2. Exact, never looser or stricter, at the cost of more rules.

For runsc the policy becomes a deny list: its default is ALLOW, allow rules that come after
every deny of their call are dropped, and ENOSYS denials are left out. The Sentry is the
kernel there (what it does not implement already answers ENOSYS; nothing reaches the host's
kernel by falling through), and runsc 2024 answers every denial with EPERM (it ignores
`errnoRet`), which would turn libc's ENOSYS fallbacks (clone3 -> clone) into failures.
Calls this host's system call table does not know (newer than its kernel headers, so newer
than gVisor's table too), and conditions too large for runsc's filter compiler (one BPF
program of at most 4096 instructions), are left out and listed in `Rendering.skipped`;
gVisor's own kernel answers those calls (it has no SCTP, AF_ALG or odd personalities to
reach, and raw sockets need a capability the sandbox lacks).

Conditions on `socket`'s and `socketpair`'s family are rendered for the families gVisor has
only (GVISOR_SOCKET_FAMILIES): it answers EAFNOSUPPORT for every other, whatever the filter
says, so rules about those decide nothing there. Each rule costs every process start: the
Sentry runs the whole filter for each system call number at every clone (its cache of
argument-free answers), and the 69 family rules cost 2.7-4 ms of a warm exec here.
"""

from __future__ import annotations

import errno
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ValidationError

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
# Kafel's own names where they differ from the kernel's.
KAFEL_ALIASES = {"umount": "umount2", "newstat": "stat", "newfstat": "fstat", "newlstat": "lstat", "newuname": "uname",
                 "sendfile64": "sendfile", "sysctl": "_sysctl"}
TOKEN = re.compile(r"\s+|//[^\n]*|/\*.*?\*/|(#define)|(0x[0-9a-fA-F]+|\d+)|([A-Za-z_]\w*)|(&&|\|\||==|!=|<=|>=|[<>&!(){}\[\],])", re.S)
OCI_OPS = {"==": "SCMP_CMP_EQ", "!=": "SCMP_CMP_NE", "<": "SCMP_CMP_LT", "<=": "SCMP_CMP_LE", ">": "SCMP_CMP_GT", ">=": "SCMP_CMP_GE"}
NEGATED = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
ACTIONS = ("ALLOW", "ERRNO", "KILL")
OCI_ACTIONS = {"ALLOW": "SCMP_ACT_ALLOW", "ERRNO": "SCMP_ACT_ERRNO", "KILL": "SCMP_ACT_KILL"}
FULL = (1 << 64) - 1
# runsc compiles the whole profile into one BPF program of at most 4096 instructions: a rule that
# needs more OCI rules than this once written as blocks is left to gVisor's own kernel (and listed)
MAX_OCI_RULES_PER_RULE = 64
# The socket families gVisor's kernel has (its providers: unix, netlink, and netstack or hostinet
# for AF_INET, AF_INET6, AF_PACKET); socket() and socketpair() of any other fail with EAFNOSUPPORT
# there, read as an int like Linux does (the low 32 bits)
GVISOR_SOCKET_FAMILIES = (1, 2, 10, 16, 17)
GVISOR_ARGUMENT_VALUES = {"socket": {0: GVISOR_SOCKET_FAMILIES}, "socketpair": {0: GVISOR_SOCKET_FAMILIES}}


class PolicyError(ValidationError):
    """A policy uses Kafel beyond the subset isolate can render for every backend."""


@dataclass(frozen=True)
class Comparison:
    arg: int
    op: str
    value: int
    mask: int = FULL


@dataclass(frozen=True)
class Rule:
    action: str  # ALLOW, ERRNO or KILL
    errno: int
    syscall: str  # the kernel's name
    clauses: tuple[tuple[Comparison, ...], ...] = ((),)  # OR of ANDs; ((),): always


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: str
    default_errno: int = 0
    unknown: tuple[str, ...] = ()  # calls named in the policy that this host's table does not know


@dataclass(frozen=True)
class Rendering:
    profile: dict[str, object]
    skipped: tuple[str, ...] = field(default=())  # rules left out, and why


def syscall_table(header: Path = UNISTD) -> dict[int, str]:
    """Number -> name of the host's system calls, from the kernel headers (linux-libc-dev)."""
    try:
        text = header.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read the system call table {header} (apt-get install linux-libc-dev): {exc}") from exc
    return {int(number): name for name, number in re.findall(r"#define __NR_(\w+)\s+(\d+)", text)}


# --- reading ---

class _Parser:
    def __init__(self, text: str, numbers: dict[int, str]):
        leftover = TOKEN.sub("", text).strip()
        if leftover:
            raise PolicyError(f"unexpected characters in policy: {leftover[:40]!r}")
        self.tokens = [next(g for g in m.groups() if g) for m in TOKEN.finditer(text) if any(m.groups())]
        self.pos = 0
        self.defines: dict[str, int] = {}
        self.numbers, self.names = numbers, set(numbers.values())
        self.policies: dict[str, list[Rule]] = {}
        self.unknown: list[str] = []

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
        used: Policy | None = None
        while self.peek():
            keyword = self.take()
            if keyword == "#define":
                name = self.take()
                self.defines[name] = self.number(self.take())
            elif keyword == "POLICY":
                name = self.take()
                self.policies[name] = self.policy_body()
            elif keyword == "USE":
                rules = self.used_policies()
                self.take("DEFAULT")
                action, code = self.action()
                used = Policy(tuple(rules), action, code, tuple(dict.fromkeys(self.unknown)))
            else:
                raise PolicyError(f"policy: unsupported statement {keyword!r}")
        if used is None:
            raise PolicyError("policy: no USE ... DEFAULT statement")
        return used

    def used_policies(self) -> list[Rule]:
        rules: list[Rule] = []
        while True:
            name = self.take()
            if name not in self.policies:
                raise PolicyError(f"policy: USE of unknown policy {name!r}")
            rules += self.policies[name]
            if self.peek() != ",":
                return rules
            self.take(",")
            if self.peek() == "USE":
                self.take()

    def action(self) -> tuple[str, int]:
        action = self.take()
        if action not in ACTIONS:
            raise PolicyError(f"policy: unsupported action {action!r}")
        code = 0
        if self.peek() == "(":
            self.take("(")
            code = self.number(self.take())
            self.take(")")
        return action, code

    def policy_body(self) -> list[Rule]:
        rules: list[Rule] = []
        self.take("{")
        while True:
            if self.peek() == "USE":
                self.take()
                rules += self.used_policies()
            else:
                action, code = self.action()
                self.take("{")
                while True:
                    rule = self.syscall_rule(action, code)
                    if rule is not None:
                        rules.append(rule)
                    if self.take() == "}":
                        break
            if self.take() == "}":
                return rules

    def syscall_rule(self, action: str, code: int) -> Rule | None:
        token = self.take()
        if token == "SYSCALL":
            self.take("[")
            number = self.number(self.take())
            self.take("]")
            name = self.numbers.get(number)
        else:
            name = KAFEL_ALIASES.get(token, token)
        if name not in self.names:
            self.unknown.append(token)
        if self.peek() != "(":
            return Rule(action, code, name) if name in self.names else None
        self.take("(")
        args: dict[str, int] = {}
        while self.peek() != ")":
            args[self.take()] = len(args)
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        self.take("{")
        clauses = self.expression(args, negate=False)
        while self.peek() == ",":  # several conditions: any of them
            self.take(",")
            clauses += self.expression(args, negate=False)
        self.take("}")
        return Rule(action, code, name, tuple(clauses)) if name in self.names else None

    # expressions, returned in disjunctive normal form (a list of AND-clauses); `negate` pushes a `!` inward

    def expression(self, args: dict[str, int], negate: bool) -> list[tuple[Comparison, ...]]:
        parts = [self.conjunction(args, negate)]
        while self.peek() == "||":
            self.take()
            parts.append(self.conjunction(args, negate))
        return _and(parts) if negate else [clause for part in parts for clause in part]

    def conjunction(self, args: dict[str, int], negate: bool) -> list[tuple[Comparison, ...]]:
        parts = [self.atom(args, negate)]
        while self.peek() == "&&":
            self.take()
            parts.append(self.atom(args, negate))
        return [clause for part in parts for clause in part] if negate else _and(parts)

    def atom(self, args: dict[str, int], negate: bool) -> list[tuple[Comparison, ...]]:
        if self.peek() == "!":
            self.take()
            return self.atom(args, not negate)
        mask = FULL
        if self.peek() == "(" and self.peek(2) == "&":
            self.take("(")
            arg = self.argument(args)
            self.take("&")
            mask = self.number(self.take())
            self.take(")")
        elif self.peek() == "(":
            self.take("(")
            clauses = self.expression(args, negate)
            self.take(")")
            return clauses
        else:
            arg = self.argument(args)
        op = self.take()
        if op not in OCI_OPS:
            raise PolicyError(f"policy: unsupported operator {op!r}")
        if mask != FULL and op not in ("==", "!="):
            raise PolicyError("policy: a masked argument can only be compared with == or !=")
        return [(Comparison(arg, NEGATED[op] if negate else op, self.number(self.take()), mask),)]

    def argument(self, args: dict[str, int]) -> int:
        name = self.take()
        if name not in args:
            raise PolicyError(f"policy: {name!r} is not an argument of this rule")
        return args[name]


def _and(parts: list[list[tuple[Comparison, ...]]]) -> list[tuple[Comparison, ...]]:
    return [tuple(itertools.chain.from_iterable(choice)) for choice in itertools.product(*parts)]


def parse(text: str, numbers: dict[int, str] | None = None) -> Policy:
    return _Parser(text, syscall_table() if numbers is None else numbers).parse()


# --- values an argument may take, as aligned blocks: {x : x & mask == value} ---

Block = tuple[int, int]  # (mask, value)


def _range(low: int, high: int, width: int) -> list[Block]:
    """The fewest aligned blocks covering [low, high] (inclusive) within `width` low bits."""
    top, blocks = (1 << width) - 1, []
    while low <= high:
        size = low & -low if low else 1 << width  # the largest block aligned at `low`...
        while size > high - low + 1:  # ...that fits
            size >>= 1
        blocks.append((top & ~(size - 1), low))
        low += size
    return blocks


def _complement(blocks: list[Block], width: int) -> list[Block]:
    result: list[Block] = [(0, 0)]
    for mask, value in blocks:  # not (x & m == v): some bit of m differs
        bits = [1 << i for i in range(width) if mask >> i & 1]
        result = _intersect(result, [(bit, ~value & bit) for bit in bits])
    return result


def _intersect(a: list[Block], b: list[Block]) -> list[Block]:
    out = {(m1 | m2, v1 | v2) for m1, v1 in a for m2, v2 in b if not (v1 ^ v2) & m1 & m2}
    return sorted(out)


def _values(literals: list[Comparison]) -> list[Block]:
    """The blocks of values one argument may take under all of `literals` (an AND)."""
    blocks: list[Block] = [(0, 0)]
    excluded: dict[int, set[int]] = {}
    for c in literals:
        if c.op == "==":
            blocks = _intersect(blocks, [(c.mask, c.value & c.mask)] if not c.value & ~c.mask else [])
        elif c.op == "!=":
            excluded.setdefault(c.mask, set()).add(c.value)
        else:
            low, high = {"<": (0, c.value - 1), "<=": (0, c.value), ">": (c.value + 1, FULL), ">=": (c.value, FULL)}[c.op]
            blocks = _intersect(blocks, _range(max(low, 0), min(high, FULL), 64))
    for mask, values in excluded.items():
        width = mask.bit_length()
        if mask == (1 << width) - 1:  # low bits: the complement of a set is a few ranges
            points = sorted(v for v in values if not v & ~mask)
            edges = [-1, *points, mask + 1]
            allowed = [b for low, high in itertools.pairwise(edges) for b in _range(low + 1, high - 1, width)]
        else:
            allowed = [(0, 0)]
            for value in values:
                allowed = _intersect(allowed, _complement([(mask, value & mask)], 64))
        blocks = _intersect(blocks, allowed)
    return blocks


def _oci_args(clause: tuple[Comparison, ...], meaningful: dict[int, tuple[int, ...]]) -> list[list[dict[str, int | str]]]:
    """One OCI argument list per block combination that the clause allows (none if it is impossible),
    for the `meaningful` values of an argument where the kernel has such a list."""
    per_arg = []
    for arg in sorted({c.arg for c in clause}):
        blocks = _values([c for c in clause if c.arg == arg])
        if arg in meaningful:  # fewer blocks when the condition reads the low 32 bits only (as the policies' do)
            blocks = min(blocks, _intersect(blocks, [(0xFFFFFFFF, value) for value in meaningful[arg]]), key=len)
        if not blocks:
            return []  # no value satisfies the clause
        if all(mask for mask, _ in blocks):  # a block with an empty mask: any value, no condition
            per_arg.append([(arg, mask, value) for mask, value in blocks])
    combos = []
    for choice in itertools.product(*per_arg):
        combos.append([{"index": arg, "value": value, "op": "SCMP_CMP_EQ"} if mask == FULL else
                       {"index": arg, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"} for arg, mask, value in choice])
    return combos


# --- rendering for runsc ---

def to_oci(policy: Policy) -> Rendering:
    """The OCI `linux.seccomp` object runsc applies for `policy` (see the module's docstring)."""
    last_deny: dict[str, int] = {}
    for index, rule in enumerate(policy.rules):
        if rule.action != "ALLOW" and not (rule.action == "ERRNO" and rule.errno == errno.ENOSYS):
            last_deny[rule.syscall] = index
    entries: list[dict[str, object]] = []
    skipped = [f"{name}: not in this host's system call table" for name in policy.unknown]
    for index, rule in enumerate(policy.rules):
        if rule.action == "ERRNO" and rule.errno == errno.ENOSYS:
            skipped.append(f"{rule.syscall}: ENOSYS, left to gVisor")
            continue
        if index > last_deny.get(rule.syscall, -1):
            continue  # an allow after every deny of its call: the default says the same
        action: dict[str, object] = {"names": [rule.syscall], "action": OCI_ACTIONS[rule.action]}
        if rule.action == "ERRNO":
            action["errnoRet"] = rule.errno or errno.EPERM
        meaningful = GVISOR_ARGUMENT_VALUES.get(rule.syscall, {})
        combos = [combo for clause in rule.clauses for combo in _oci_args(clause, meaningful)] if rule.clauses != ((),) else [[]]
        if not combos and meaningful and any(_oci_args(clause, {}) for clause in rule.clauses):
            skipped.append(f"{rule.syscall}: only families gVisor lacks, which it refuses itself; left to gVisor")
            continue
        if len(combos) > MAX_OCI_RULES_PER_RULE:
            skipped.append(f"{rule.syscall}: a condition of {len(combos)} filter rules, more than runsc compiles; left to gVisor")
            continue
        entries += [{**action, "args": args} if args else dict(action) for args in combos]
    return Rendering({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": entries}, tuple(skipped))
