"""One seccomp policy, two renderings: Kafel for nsjail, OCI for gVisor's Sentry, denying the same calls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isolate import kafel, policy
from isolate.kafel import Comparison, PolicyError

NUMBERS = {56: "clone", 135: "personality", 156: "_sysctl", 166: "umount2", 41: "socket", 16: "ioctl", 435: "clone3"}
MASK64 = (1 << 64) - 1


def deny_set(profile: dict, name: str, args: tuple[int, ...]) -> bool:
    """Whether runsc would deny `name(args)`: the first matching rule decides (gVisor's order)."""
    for rule in profile["syscalls"]:
        if name not in rule["names"]:
            continue
        if all(matches(condition, args[condition["index"]]) for condition in rule.get("args", [])):
            return rule["action"] != "SCMP_ACT_ALLOW"
    return False


def matches(condition: dict, value: int) -> bool:
    op, expected = condition["op"], condition["value"]
    return {
        "SCMP_CMP_EQ": lambda: value == expected,
        "SCMP_CMP_NE": lambda: value != expected,
        "SCMP_CMP_LT": lambda: value < expected,
        "SCMP_CMP_LE": lambda: value <= expected,
        "SCMP_CMP_GT": lambda: value > expected,
        "SCMP_CMP_GE": lambda: value >= expected,
        "SCMP_CMP_MASKED_EQ": lambda: value & expected == condition.get("valueTwo"),
    }[op]()


def kafel_denies(rules: tuple[kafel.Rule, ...], name: str, args: tuple[int, ...]) -> bool:
    def holds(c: Comparison) -> bool:
        value = args[c.arg] & (c.mask if c.mask is not None else MASK64)
        return {"==": value == c.value, "!=": value != c.value, "<": value < c.value,
                "<=": value <= c.value, ">": value > c.value, ">=": value >= c.value}[c.op]

    return any(rule.syscall == name and rule.action != "ALLOW" and (not rule.clauses or any(all(map(holds, clause)) for clause in rule.clauses))
               for rule in rules)


def test_the_default_policy_renders_for_oci():
    parsed = kafel.parse(policy.load("default"))
    profile = kafel.to_oci(parsed, skip_errnos=frozenset({38}))
    names = {name for rule in profile["syscalls"] for name in rule["names"]}
    assert {"mount", "umount2", "unshare", "setns", "ptrace", "bpf", "keyctl", "_sysctl"} <= names
    assert "clone3" not in names  # ENOSYS rules are skipped for runsc (it can only answer EPERM)
    assert deny_set(profile, "clone", (0x10000000, 0, 0, 0, 0, 0))  # CLONE_NEWUSER
    assert not deny_set(profile, "clone", (0x01200011, 0, 0, 0, 0, 0))  # what fork() passes
    assert deny_set(profile, "ioctl", (0, 0x5412, 0, 0, 0, 0)) and deny_set(profile, "ioctl", (0, 0xFFFFFFFF00005412, 0, 0, 0, 0))
    assert not deny_set(profile, "personality", (8, 0, 0, 0, 0, 0)) and deny_set(profile, "personality", (1, 0, 0, 0, 0, 0))
    assert deny_set(profile, "socket", (17, 3, 0, 0, 0, 0)) and deny_set(profile, "socket", (2, 3, 0, 0, 0, 0))
    assert not deny_set(profile, "socket", (1, 1, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("POLICY p { ALLOW { clone } } USE p DEFAULT KILL", "DEFAULT ALLOW"),
        ("POLICY p { ERRNO(1) { no_such_call } } USE p DEFAULT ALLOW", "unknown system call"),
        ("POLICY p { ERRNO(1) { clone(f) { (f & 1) > 0 } } } USE p DEFAULT ALLOW", "masked"),
        ("POLICY p { ERRNO(1) { clone(f, g) { f == 1 && f == 2 } } } USE p DEFAULT ALLOW", "compares one argument twice"),
        ("POLICY p { TRACE(1) { clone } } USE p DEFAULT ALLOW", "unsupported action"),
        ("POLICY p { ERRNO(1) { clone } }", "no USE"),
        ("#include \"x\"", "unexpected characters"),
    ],
)
def test_what_the_subset_cannot_say_is_refused_with_a_reason(text, complaint):
    with pytest.raises(PolicyError, match=complaint):
        kafel.to_oci(kafel.parse(text, NUMBERS))


comparisons = st.tuples(st.integers(0, 1), st.sampled_from(["==", "!=", "<", ">=", "&=="]), st.sampled_from([0, 1, 8, 0x10, 0x7E020080, 0xFFFFFFFF]))
argument_values = st.sampled_from([0, 1, 2, 7, 8, 9, 0x10, 0x11, 0x7E020080, 0x10000000, 0xFFFFFFFF, 1 << 32, (1 << 32) | 8, MASK64])


def condition_text(clauses: list[list[tuple[int, str, int]]]) -> str:
    def one(arg: int, op: str, value: int) -> str:
        name = "ab"[arg]
        return f"({name} & {value:#x}) == {value:#x}" if op == "&==" else f"{name} {op} {value:#x}"

    return " || ".join("(" + " && ".join(one(*c) for c in clause) + ")" for clause in clauses)


@given(st.lists(st.lists(comparisons, min_size=1, max_size=2, unique_by=lambda c: c[0]), min_size=1, max_size=3),
       st.tuples(argument_values, argument_values))
def test_the_oci_rendering_denies_at_least_what_kafel_denies(clauses, args):
    text = f"POLICY p {{ ERRNO(1) {{ clone(a, b) {{ {condition_text(clauses)} }} }} }} USE p DEFAULT ALLOW"
    parsed = kafel.parse(text, NUMBERS)
    profile = kafel.to_oci(parsed)
    full_args = (*args, 0, 0, 0, 0)
    if kafel_denies(parsed.rules, "clone", full_args):
        assert deny_set(profile, "clone", full_args)
    elif all(value <= 0xFFFFFFFF for value in args):
        # within 32 bits the two agree exactly; above, the rendering may deny more (never less)
        assert not deny_set(profile, "clone", full_args)


@given(st.lists(st.sampled_from([0, 8, 0x20000, 0x20008, 0xFFFFFFFF]), min_size=1, max_size=4, unique=True), argument_values)
def test_an_allow_list_becomes_exact_allows_then_the_deny(allowed, value):
    condition = " && ".join(f"p != {v:#x}" for v in allowed)
    parsed = kafel.parse(f"POLICY x {{ ERRNO(1) {{ personality(p) {{ {condition} }} }} }} USE x DEFAULT ALLOW", NUMBERS)
    profile = kafel.to_oci(parsed)
    assert deny_set(profile, "personality", (value, 0, 0, 0, 0, 0)) == kafel_denies(parsed.rules, "personality", (value, 0, 0, 0, 0, 0))
