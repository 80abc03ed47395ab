"""The adversarial suite at toy size (issue 13): every hostile input is refused with a clear error."""

from __future__ import annotations

from facesynth.tests.adversarial_suite import run_suite


def test_adversarial_suite_has_no_failures(capsys):
    outcomes = run_suite(verbose=True)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("cases tried") and len(outcomes) >= 40
    assert [o for o in outcomes if not o.handled] == [], summary
