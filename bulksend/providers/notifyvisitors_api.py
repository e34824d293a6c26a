"""NotifyVisitors reads on a caller's aiohttp session (the request and answer logic is pure, in
``bulksend.providers.notifyvisitors``)::

    auth = notifyvisitors.Auth(api_key=..., brand_id=...)
    async with aiohttp.ClientSession() as session:
        report = await campaign_report(session, base_url, auth, "spring-sale")
        report["sent"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from bulksend.providers import notifyvisitors
from bulksend.providers.reads import fetch


async def campaign_report(
    session: aiohttp.ClientSession,
    base_url: str,
    auth: notifyvisitors.Auth,
    campaign_id: str,
    *,
    paths: Mapping[str, str] = notifyvisitors.PATHS,
) -> dict[str, Any]:
    """The campaign's report (``data`` of the envelope); errors as in ``read_report``."""
    read = notifyvisitors.report_read(auth, campaign_id, paths)
    response = await fetch(session, base_url, read)
    return notifyvisitors.read_report(response)
