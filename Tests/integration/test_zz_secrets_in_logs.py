"""No secret, token or password reaches a log: every log this test run wrote (each hub's and
each worker's, in test-artifacts/) is searched, after all other tests (the file name sorts
last), for

- every credential the suite configured a hub with (recorded by hubtest.HubFactory),
- every password the tests send (string literals named password in the test sources),
- anything shaped like a JWT (`eyJ….eyJ…`), since tokens are minted in many places.

The lines the harness itself writes (`$ argv`) are not the product's and are skipped.
test_authz_matrix.py checks the same at log level trace for one hub that sees every kind of
credential.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hubtest
from hubtest import ARTIFACTS

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
PASSWORD_LITERAL = re.compile(r"""["']?\w*password\w*["']?\s*[:=]\s*["']([^"'\s]{8,})["']""", re.I)


def passwords_in_tests() -> set:
    found = set()
    for source in Path(__file__).parent.glob("*.py"):
        found |= set(PASSWORD_LITERAL.findall(source.read_text(errors="replace")))
    return found


def test_no_secret_token_or_password_reaches_a_log():
    logs = [p for p in ARTIFACTS.glob("*.log") if p.stat().st_mtime >= hubtest.SESSION_START]
    if not logs:
        pytest.skip("no other test wrote a log in this run: nothing to search")
    # A secret counts where it stands alone, not inside a longer word: the tests' made-up
    # tokens ("allowed-token") are also parts of the hub's own option names in `--help`.
    secrets = [(s, re.compile(r"(?<![A-Za-z0-9_-])" + re.escape(s) + r"(?![A-Za-z0-9_-])"))
               for s in hubtest.SECRETS_USED | passwords_in_tests()]
    assert hubtest.SECRETS_USED, "the hubs of this run were configured with no credential at all?"
    findings = []
    for path in logs:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith("$ "):
                continue
            where = f"{path.name}:{number}"
            if JWT.search(line):
                findings.append(f"{where}: a JWT")
            for secret, pattern in secrets:
                if secret in line and pattern.search(line):
                    findings.append(f"{where}: {secret[:4]}… ({len(secret)} characters)")
    assert not findings, f"{len(findings)} secrets in logs:\n" + "\n".join(sorted(set(findings))[:50])
