"""The security battery, case by case, on every backend under test: `isolate audit` runs the
very same cases. A case passes when the attack had exactly the outcome it names and every
host canary (a file, a secret in this process's environment, a process, marker names) held."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from isolate import SandboxManager
from isolate.audit import Audit, Case, all_cases, unavailable

CASES = all_cases()


@pytest.fixture(scope="module")
def audits(manager: SandboxManager) -> Iterator[dict[str, Audit | str]]:
    """One audit per backend (its shared sandboxes and canaries), or why the backend cannot run."""
    runs: dict[str, Audit | str] = {}
    yield runs
    for run in runs.values():
        if isinstance(run, Audit):
            run.close()


@pytest.mark.parametrize("attack", CASES, ids=[c.id for c in CASES])
def test_attack_is_contained(attack: Case, backend: str, manager: SandboxManager, audits: dict[str, Audit | str]) -> None:
    if backend not in audits:
        audits[backend] = unavailable(manager, backend) or Audit(manager, backend)
    run = audits[backend]
    if isinstance(run, str):
        pytest.skip(run)
    result = run.run(attack)
    if result.passed is None:
        pytest.skip(f"{attack.id} does not apply: {result.detail}")
    assert result.passed, f"{attack.doc}\n{result.line()}"


def test_every_group_of_the_issue_has_cases() -> None:
    groups = {c.group for c in CASES}
    assert groups == {"filesystem", "file-api", "privilege", "cross-sandbox", "resources", "network", "leaks", "git"}
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(c.doc for c in CASES), "every case says what it attempts"
