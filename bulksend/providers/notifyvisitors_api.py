"""NotifyVisitors reads through a caller's ``Transport`` (the request and answer logic is pure,
in ``bulksend.providers.notifyvisitors``; the request goes the one request-with-retry path,
``bulksend.providers.reads.get``)::

    auth = notifyvisitors.Auth(api_key=..., brand_id=...)
    async with Transport(base_url) as transport:
        report = await campaign_report(transport, auth, "spring-sale")
        report["sent"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bulksend.net.fetch import Sender
from bulksend.providers import notifyvisitors
from bulksend.providers.reads import get
from bulksend.ratelimit.scheduler import Scheduler

GROUP = "reporting"


async def campaign_report(
    transport: Sender,
    auth: notifyvisitors.Auth,
    campaign_id: str,
    *,
    paths: Mapping[str, str] = notifyvisitors.PATHS,
    scheduler: Scheduler | None = None,
    max_attempts: int = 1,
) -> dict[str, Any]:
    """The campaign's report (``data`` of the envelope); errors as in ``read_report``.
    ``scheduler`` (with a ``reporting`` group) and ``max_attempts`` as in ``reads.get``."""
    return await get(
        transport,
        notifyvisitors.report_read(auth, campaign_id, paths),
        notifyvisitors.read_report,
        scheduler=scheduler,
        group=GROUP,
        limit=notifyvisitors.DEFAULT_LIMITS[GROUP],
        max_attempts=max_attempts,
    )
