"""Every case of the stack-file corpus gets the verdict (and environment) it expects offline; the
real CLI gives the same under tests/integration/test_config_parity.py."""

from __future__ import annotations

import pytest

from tests.config_corpus import CORPUS, offline_verdict, training_env, write_stack


def test_the_corpus_has_at_least_forty_cases_with_unique_names():
    names = [case["name"] for case in CORPUS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert {case["expect"] for case in CORPUS} == {"accepted", "refused"}


@pytest.mark.parametrize("case", CORPUS, ids=[case["name"] for case in CORPUS])
def test_each_case_gets_its_verdict_offline(tmp_path, case):
    write_stack(tmp_path, "corpus", case)
    verdict, detail = offline_verdict(tmp_path, "corpus")
    assert verdict == case["expect"], detail
    if "env" in case:
        env = training_env(detail)
        assert {name: env.get(name) for name in case["env"]} == case["env"]
