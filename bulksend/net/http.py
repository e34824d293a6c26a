"""Small pure HTTP helpers shared by the sandboxes and the webhook receiver."""

from __future__ import annotations


def accepts_json(header: str | None) -> bool:
    """Does an ``Accept`` header admit a JSON answer? (absent or empty: yes)"""
    if not header or not header.strip():
        return True
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and media.lower() in ("application/json", "application/*", "*/*"):
            return True
    return False
