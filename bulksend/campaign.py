"""The library entry point: run one campaign from validated ``Settings``.

    summary = await send_campaign(settings, secrets)

It builds the provider, the scheduler, the transport, the source and the deduper, runs the
engine and returns the ``Summary``; the engine's stop reason (auth, fatal) is re-raised after the
report is complete so callers can map it to an exit status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bulksend.core.dedup import Deduper
from bulksend.sources import Columns, SourceSpec, open_source

from bulksend.config import Settings
from bulksend.engine import Engine, EngineOptions
from bulksend.logs import redactor
from bulksend.providers.base import Provider
from bulksend.report import ReportWriter, Summary
from bulksend.scheduler import GroupPolicy, Scheduler
from bulksend.transport import Transport


def build_provider(settings: Settings, secrets: Mapping[str, str]) -> Provider:
    provider: Provider = settings.provider_module().build(settings.options, secrets)
    return provider


def build_scheduler(settings: Settings, provider: Provider, **kwargs: Any) -> Scheduler:
    groups = {}
    ceiling = settings.rate.per_second if settings.rate else None
    for name, limit in provider.groups.items():
        groups[name] = GroupPolicy(
            limit=settings.limit or limit,
            in_flight=settings.in_flight,
            ceiling=ceiling,
            headers_expected=provider.sends_rate_headers,
        )
    return Scheduler(groups, **kwargs)


def source_spec(settings: Settings) -> SourceSpec:
    rec = settings.recipients
    return SourceSpec(
        path=rec.path,
        format=rec.format,
        delimiter=rec.delimiter,
        encoding=rec.encoding,
        columns=Columns(id=rec.id_column, uid=rec.uid_column),
    )


async def send_campaign(
    settings: Settings,
    secrets: Mapping[str, str],
    *,
    progress_every: float = 5.0,
) -> tuple[Summary, BaseException | None]:
    """Send the campaign; returns the summary and what stopped it early (None if nothing)."""
    redactor.register(secrets.values())
    provider = build_provider(settings, secrets)
    scheduler = build_scheduler(settings, provider)
    summary = Summary(provider=provider.name, campaign=settings.name)
    options = EngineOptions(
        batch_size=settings.batch_size,
        workers=settings.in_flight,
        max_attempts=settings.max_attempts,
        progress_every=progress_every,
    )
    with open_source(source_spec(settings)) as rows, ReportWriter(settings.report) as report:
        async with Transport(
            settings.base_url, connections=settings.in_flight, timeout=settings.timeout
        ) as transport:
            engine = Engine(
                provider,
                transport,
                scheduler,
                Deduper(keys=provider.dedup_keys),
                options,
                report=report,
                summary=summary,
            )
            await engine.run(rows)
    return summary, engine.stopped_by
