from __future__ import annotations

from bulksend.output.logs import REDACTED, Redactor


def test_secret_values_are_scrubbed_everywhere() -> None:
    r = Redactor()
    r.register(["s3cr3t-key-value", "short", ""])
    event = {
        "event": "request failed for s3cr3t-key-value",
        "headers": {"Authorization": "key=anything", "Accept": "application/json"},
        "nested": ["x s3cr3t-key-value y", {"token": "t"}],
        "error": ValueError("bad key s3cr3t-key-value"),
    }
    out = r(None, "info", dict(event))
    assert out["event"] == f"request failed for {REDACTED}"
    assert out["headers"] == {"Authorization": REDACTED, "Accept": "application/json"}
    assert out["nested"] == [f"x {REDACTED} y", {"token": REDACTED}]
    assert out["error"] == f"ValueError: bad key {REDACTED}"
    assert r.scrub("a short text") == "a short text"  # too short to be a real credential
