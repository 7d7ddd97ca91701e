from icp_pipeline.visibility.push import idempotency_key

PAYLOAD = {
    "org_id": "acme",
    "cycle_id": 7,
    "runs": {"completed": 30, "failed": 15},
    "generated_at": "2026-11-23T06:00:00",
}


def test_the_same_analytics_keep_their_key_when_recomputed_later() -> None:
    recomputed = {**PAYLOAD, "generated_at": "2026-11-23T09:30:00"}
    assert idempotency_key("acme", 7, recomputed) == idempotency_key("acme", 7, PAYLOAD)
    assert idempotency_key("acme", 7, PAYLOAD).startswith("icp-acme-cycle-7-")


def test_changed_analytics_of_the_same_cycle_get_a_new_key() -> None:
    completed = {**PAYLOAD, "runs": {"completed": 45, "failed": 0}}
    assert idempotency_key("acme", 7, completed) != idempotency_key("acme", 7, PAYLOAD)
    assert idempotency_key("acme", 8, PAYLOAD) != idempotency_key("acme", 7, PAYLOAD)
