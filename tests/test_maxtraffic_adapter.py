from __future__ import annotations

import orjson
import pytest

from bulksend.errors import ConfigError
from bulksend.models import HttpResponse, Recipient
from bulksend.providers import maxtraffic
from bulksend.providers.base import Verdict

MESSAGE = {"messages": [{"title": "Hi", "body": "there"}], "campaign": "C"}


def rec(n: int, *, id_: bool = True, uid: bool = True) -> Recipient:
    return Recipient(n, f"i{n}" if id_ else None, f"u{n}" if uid else None)


def test_batches_cap_each_array_and_never_emit_empty() -> None:
    b = maxtraffic.NotificationBatcher(3)
    out = []
    rows = [rec(1), rec(2, uid=False), rec(3, id_=False), rec(4), rec(5), rec(6, uid=False)]
    for r in rows:
        batch = b.add(r)
        if batch:
            out.append(batch)
    out.extend(b.flush())
    assert [b.number for b in out] == list(range(1, len(out) + 1))
    for batch in out:
        ids = [r.id for r in batch.recipients if r.id]
        uids = [r.uid for r in batch.recipients if r.uid]
        assert len(ids) + len(uids) > 0
        assert len(ids) <= 3
        assert len(uids) <= 3
    assert [r.line for batch in out for r in batch.recipients] == [1, 2, 3, 4, 5, 6]
    assert b.flush() == []


def test_full_batch_is_emitted_as_soon_as_both_arrays_are_full() -> None:
    b = maxtraffic.NotificationBatcher(2)
    assert b.add(rec(1)) is None
    full = b.add(rec(2))
    assert full is not None
    assert [r.line for r in full.recipients] == [1, 2]


def test_encode_leaves_out_an_array_with_nothing_to_carry() -> None:
    adapter = maxtraffic.build({"message": MESSAGE}, {"api_key": "k"})
    b = maxtraffic.NotificationBatcher(10)
    b.add(rec(1, uid=False))
    (batch,) = b.flush()
    req = adapter.encode(batch)
    body = orjson.loads(req.body or b"")
    assert body == {**MESSAGE, "to_ids": ["i1"]}
    assert req.headers["Authorization"] == "key=k"
    assert req.headers["Content-Type"] == "application/json"
    assert req.method == "POST"
    assert req.path == "/v1/notifications"


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (401, Verdict.AUTH),
        (404, Verdict.FATAL),
        (422, Verdict.INVALID),
        (429, Verdict.THROTTLED),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
    ],
)
def test_classify(status: int, verdict: Verdict) -> None:
    body = b'{"message": "to_ids: duplicate value"}' if status != 200 else b'{"success":true}'
    c = maxtraffic.classify(HttpResponse(status, {}, body))
    assert c.verdict is verdict
    if status != 200:
        assert "duplicate value" in c.message


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "messages"),
        ({"messages": []}, "non-empty"),
        ({"messages": [{"a": 1}, {"a": 1}]}, "unique"),
        ({"messages": [{"a": 1}], "icon": 3}, "icon"),
        ({"messages": [{"a": 1}], "colour": "red"}, "colour"),
    ],
)
def test_build_rejects_bad_message(message: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        maxtraffic.build({"message": message}, {"api_key": "k"})


def test_adapter_repr_hides_the_key() -> None:
    adapter = maxtraffic.build({"message": MESSAGE}, {"api_key": "very-secret"})
    assert "very-secret" not in repr(adapter)
