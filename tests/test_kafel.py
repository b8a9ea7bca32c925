"""One seccomp policy, two renderings: Kafel for nsjail, OCI for gVisor's Sentry, deciding the same way."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolate import kafel, policy
from isolate.kafel import PolicyError

NUMBERS = {56: "clone", 135: "personality", 156: "_sysctl", 166: "umount2", 41: "socket", 53: "socketpair", 16: "ioctl", 435: "clone3",
           0: "read"}
MASK64 = (1 << 64) - 1


def oci_denies(profile: dict, name: str, args: tuple[int, ...]) -> bool:
    """Whether runsc would refuse `name(args)`: its rules are tried in order and the first match decides."""
    for rule in profile["syscalls"]:
        if name in rule["names"] and all(matches(condition, args[condition["index"]]) for condition in rule.get("args", [])):
            return rule["action"] != "SCMP_ACT_ALLOW"
    return profile["defaultAction"] != "SCMP_ACT_ALLOW"


def matches(condition: dict, value: int) -> bool:
    expected = condition["value"]
    return {
        "SCMP_CMP_EQ": lambda: value == expected,
        "SCMP_CMP_NE": lambda: value != expected,
        "SCMP_CMP_LT": lambda: value < expected,
        "SCMP_CMP_LE": lambda: value <= expected,
        "SCMP_CMP_GT": lambda: value > expected,
        "SCMP_CMP_GE": lambda: value >= expected,
        "SCMP_CMP_MASKED_EQ": lambda: value & expected == condition["valueTwo"],
    }[condition["op"]]()


def kafel_denies(parsed: kafel.Policy, name: str, args: tuple[int, ...]) -> bool:
    """Kafel's own answer: the first rule whose condition holds decides, else the default."""
    def holds(c: kafel.Comparison) -> bool:
        value = args[c.arg] & c.mask
        return {"==": value == c.value, "!=": value != c.value, "<": value < c.value,
                "<=": value <= c.value, ">": value > c.value, ">=": value >= c.value}[c.op]

    for rule in parsed.rules:
        if rule.syscall == name and any(all(map(holds, clause)) for clause in rule.clauses):
            return rule.action != "ALLOW"
    return parsed.default != "ALLOW"


def test_the_default_policy_renders_for_runsc_and_says_what_it_leaves_to_gvisor():
    parsed = kafel.parse(policy.load("default"))
    rendering = kafel.to_oci(parsed)
    profile = rendering.profile
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"  # the Sentry is the kernel: what it lacks answers ENOSYS
    for call in ("mount", "umount2", "unshare", "setns", "ptrace", "bpf", "keyctl", "io_uring_setup", "_sysctl"):
        assert oci_denies(profile, call, (0,) * 6), call
    assert oci_denies(profile, "clone", (0x10000000, 0, 0, 0, 0, 0))  # CLONE_NEWUSER
    assert not oci_denies(profile, "clone", (0x01200011, 0, 0, 0, 0, 0))  # what fork() passes
    assert oci_denies(profile, "ioctl", (0, 0x5412, 0, 0, 0, 0)) and oci_denies(profile, "ioctl", (0, 0xFFFFFFFF00005412, 0, 0, 0, 0))
    assert not oci_denies(profile, "read", (0,) * 6)
    assert oci_denies(profile, "socket", (17, 3, 0, 0, 0, 0))  # AF_PACKET: gVisor has it, the policy refuses it
    assert not oci_denies(profile, "socket", (2, 1, 0, 0, 0, 0))
    # a family gVisor lacks (AF_ALG) needs no rule: gVisor answers EAFNOSUPPORT itself
    assert not any(condition.get("valueTwo") == 38 for rule in profile["syscalls"] for condition in rule.get("args", []))
    assert not any("clone3" in rule["names"] for rule in profile["syscalls"])  # runsc could only answer EPERM there
    # every deny of the policy is either rendered or listed as left to gVisor
    rendered = {name for rule in profile["syscalls"] for name in rule["names"]}
    left = {line.split(":")[0] for line in rendering.skipped}
    denied = {rule.syscall for rule in parsed.rules if rule.action != "ALLOW"}
    assert denied <= rendered | left
    assert set(parsed.unknown) <= left


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("POLICY p { ERRNO(1) { clone(f) { (f & 1) > 0 } } } USE p DEFAULT ALLOW", "masked"),
        ("POLICY p { TRACE(1) { clone } } USE p DEFAULT ALLOW", "unsupported action"),
        ("POLICY p { ERRNO(1) { clone } }", "no USE"),
        ("POLICY p { ERRNO(1) { clone(f) { g == 1 } } } USE p DEFAULT ALLOW", "not an argument"),
        ("POLICY p { ERRNO(1) { clone } } USE q DEFAULT ALLOW", "unknown policy"),
        ('#include "x"', "unexpected characters"),
    ],
)
def test_what_the_subset_cannot_say_is_refused_with_a_reason(text, complaint):
    with pytest.raises(PolicyError, match=complaint):
        kafel.to_oci(kafel.parse(text, NUMBERS))


def test_nested_policies_negation_and_comma_separated_conditions():
    text = """
    #define NEW 0x10
    POLICY denied { ERRNO(1) { clone(f, g) { !((f & NEW) == 0) , g == 7 } }, ERRNO(38) { clone3 } }
    POLICY allowed { ALLOW { clone, read } }
    POLICY all { USE denied, USE allowed }
    USE all DEFAULT ERRNO(38)
    """
    parsed = kafel.parse(text, NUMBERS)
    profile = kafel.to_oci(parsed).profile
    assert oci_denies(profile, "clone", (0x10, 0, 0, 0, 0, 0)) and oci_denies(profile, "clone", (0, 7, 0, 0, 0, 0))
    assert not oci_denies(profile, "clone", (0x1, 8, 0, 0, 0, 0))
    assert [rule.errno for rule in parsed.rules if rule.syscall == "clone3"] == [errno.ENOSYS]


comparisons = st.tuples(
    st.integers(0, 1),
    st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "&==", "&!="]),
    st.sampled_from([0, 1, 2, 7, 8, 0x10, 0x7E020080, 0xFFFFFFFF, 1 << 40]),
    st.booleans(),
)
argument_values = st.sampled_from([0, 1, 2, 3, 6, 7, 8, 9, 0x10, 0x11, 0x7E020080, 0x10000000, 0xFFFFFFFF, 1 << 32,
                                   (1 << 32) | 8, (1 << 40) - 1, 1 << 40, MASK64])


def condition_text(clauses: list[list[tuple[int, str, int, bool]]]) -> str:
    def one(arg: int, op: str, value: int, negated: bool) -> str:
        name = "ab"[arg]
        text = f"({name} & 0xffffffff) {op[1:]} {value & 0xFFFFFFFF:#x}" if op.startswith("&") else f"{name} {op} {value:#x}"
        return f"!({text})" if negated else text

    return " || ".join("(" + " && ".join(one(*c) for c in clause) + ")" for clause in clauses)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.lists(comparisons, min_size=1, max_size=3), min_size=1, max_size=2), min_size=1, max_size=3),
       st.tuples(argument_values, argument_values))
def test_the_rendering_decides_exactly_as_kafel(rules, args):
    """Rules in order, each a condition in any form the subset allows: runsc refuses what nsjail refuses."""
    actions = ["ERRNO(1)", "ALLOW"]
    body = ", ".join(f"{actions[i % 2]} {{ clone(a, b) {{ {condition_text(clauses)} }} }}" for i, clauses in enumerate(rules))
    parsed = kafel.parse(f"POLICY p {{ {body} }} USE p DEFAULT ALLOW", NUMBERS)
    rendering = kafel.to_oci(parsed)
    if rendering.skipped:
        return  # too large for runsc: listed, left to gVisor (checked above for the real policy)
    full = (*args, 0, 0, 0, 0)
    assert oci_denies(rendering.profile, "clone", full) == kafel_denies(parsed, "clone", full)


families = st.sampled_from([0, 1, 2, 3, 10, 16, 17, 38, 40, 0xFFFFFFFF, (1 << 32) | 2, (1 << 32) | 38, MASK64])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["==", "!=", "&==", "&!="]), st.sampled_from([1, 2, 10, 16, 17, 38])),
                         min_size=1, max_size=4), min_size=1, max_size=3),
       st.sampled_from(["socket", "socketpair"]), families)
def test_family_rules_decide_as_kafel_for_every_family_gvisor_has(rules, call, family):
    """Rules on a socket family are rendered for the families gVisor has only; for those, runsc
    refuses what nsjail refuses (any other, gVisor refuses itself: EAFNOSUPPORT)."""
    actions = ["ERRNO(97)", "ALLOW"]

    def condition(op: str, value: int) -> str:
        return f"(d & 0xffffffff) {op[1:]} {value}" if op.startswith("&") else f"d {op} {value}"

    body = ", ".join(f"{actions[i % 2]} {{ {call}(d) {{ {' && '.join(condition(*c) for c in clause)} }} }}"
                     for i, clause in enumerate(rules))
    parsed = kafel.parse(f"POLICY p {{ {body} }} USE p DEFAULT ALLOW", NUMBERS)
    rendering = kafel.to_oci(parsed)
    if rendering.skipped:
        return  # too large for runsc: listed, left to gVisor
    args = (family, 1, 0, 0, 0, 0)
    if family & 0xFFFFFFFF in kafel.GVISOR_SOCKET_FAMILIES:
        assert oci_denies(rendering.profile, call, args) == kafel_denies(parsed, call, args)
    if all(op.startswith("&") for clause in rules for op, _ in clause):  # the low 32 bits only, as Linux reads an int
        assert len(rendering.profile["syscalls"]) <= len(rules) * len(kafel.GVISOR_SOCKET_FAMILIES)


def test_a_rule_about_families_gvisor_lacks_is_left_to_gvisor_and_listed():
    parsed = kafel.parse("POLICY p { ERRNO(1) { socket(d) { (d & 0xffffffff) == 38 } } } USE p DEFAULT ALLOW", NUMBERS)
    rendering = kafel.to_oci(parsed)
    assert rendering.profile["syscalls"] == []
    assert [line.split(":")[0] for line in rendering.skipped] == ["socket"]
