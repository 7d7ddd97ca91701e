"""Question-run partition keys: one per sample, sample 0 keeps the key an org asking once always had."""

import re

from icp_pipeline.visibility.keys import model_slug, question_key, question_run_key


def test_sample_zero_keeps_the_combination_key() -> None:
    key = question_run_key("acme", "q-1a2b3c", "openai-gpt-4o-mini", "US")
    assert key == "acme|q-1a2b3c|openai-gpt-4o-mini|US"
    assert question_run_key("acme", "q-1a2b3c", "openai-gpt-4o-mini", "US", 0) == key


def test_later_samples_get_a_one_based_suffix() -> None:
    keys = [question_run_key("acme", "q-1a2b3c", "openai-gpt-4o-mini", "US", i) for i in range(10)]
    assert keys[1] == "acme|q-1a2b3c|openai-gpt-4o-mini|US|s2"
    assert keys[9] == "acme|q-1a2b3c|openai-gpt-4o-mini|US|s10"
    assert len(set(keys)) == 10


def test_keys_are_valid_dagster_partition_keys() -> None:
    question = question_key("What is the best product analytics tool... for a startup?")
    model = model_slug("openai", "gpt-4o-mini...preview")
    for sample in range(10):
        key = question_run_key("acme", question, model, "US", sample)
        assert "..." not in key
        assert not re.search(r"[\x00-\x1f\x7f]", key)
