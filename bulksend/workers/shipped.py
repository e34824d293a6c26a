"""What a planner ships to its workers, and how a worker finds the secrets it does not ship.

The planner stores the campaign file's text (``shipped_text``: its Redis URLs without their
passwords) and the settings in effect, never a secret value. A worker rebuilds the campaign
from them on any machine, so a relative ``[auth] *_file`` path (``api_key_file =
"secrets/key"``) cannot mean "beside the campaign file" there. ``locate_secrets`` makes it mean,
in order:

1. beside the planner's campaign file, when that path is on this machine (a worker on the
   planner's machine, or a CI job whose checkout has the same path);
2. in the worker's current directory (where a container or a CI job mounts the secret);
3. when the file is in neither place, the provider's variable (``MAXTRAFFIC_API_KEY``) from
   the worker's environment;

else a one-line ``ConfigError`` naming the setting, the paths tried and what to do. An
absolute path is looked up as it is. A file that is there but cannot be used (unreadable,
open to others, empty) is an error as in a send: it is the file the user meant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from bulksend.config import Settings
from bulksend.distributed.keys import redact_url, url_password
from bulksend.errors import ConfigError

__all__ = ["candidates", "default_variables", "locate_secrets", "missing_file", "shipped_text"]

#: a Redis URL in a campaign file's text (``[send] state``, ``limiter``)
_REDIS_URL = re.compile(r"""(?:rediss?|unix)://[^\s"'<>]+""", re.IGNORECASE)


def shipped_text(text: str) -> str:
    """The campaign file's ``text`` as the planner stores it for its workers: a Redis URL that
    holds a password (``[send] state = "redis://user:PASSWORD@..."``) has it replaced by
    ``***``. A worker connects with its own URL, never with the campaign's."""

    def masked(match: re.Match[str]) -> str:
        url = match.group(0)
        return redact_url(url) if url_password(url) else url

    return _REDIS_URL.sub(masked, text)


def candidates(given: Path, planner_folder: Path, cwd: Path) -> list[Path]:
    """Where a worker looks for the secret file the campaign names ``given`` (pure): an
    absolute path as it is; a relative one beside the planner's campaign file, then in the
    worker's current directory."""
    if given.is_absolute():
        return [given]
    tried = [planner_folder / given, cwd / given]
    return tried if tried[0] != tried[1] else tried[:1]


def missing_file(campaign: str, setting: str, given: Path, tried: list[Path], variable: str) -> str:
    """The one line a worker says when the secret file is nowhere it looked (pure)."""
    where = " and ".join(str(p) for p in tried)
    return (
        f"[auth] {setting} {str(given)!r} of campaign {campaign!r} is not on this machine "
        f"(looked for {where}): mount the file there or set {variable} in the worker's "
        "environment; nothing was sent"
    )


def default_variables(settings: Settings) -> Mapping[str, str]:
    """Secret name -> the provider's own environment variable for it (``MAXTRAFFIC_API_KEY``)."""
    from bulksend import providers
    from bulksend.providers.base import SecretsFor

    module = providers.load(settings.provider)
    needed: Mapping[str, str] = (
        module.secrets_for(settings.options) if isinstance(module, SecretsFor) else module.SECRETS
    )
    return needed


def locate_secrets(
    settings: Settings,
    directory: Path,
    planner_file: Path,
    cwd: Path,
    env: Mapping[str, str],
    *,
    exists: Callable[[Path], bool] = Path.exists,
) -> Settings:
    """``settings`` (loaded from a campaign file written to ``directory``) with each secret
    file source found on this machine, or replaced by the provider's variable when ``env``
    has it; a one-line ``ConfigError`` when neither."""
    variables = default_variables(settings)
    sources = dict(settings.secret_sources)
    for name, source in settings.secret_sources.items():
        if not source.startswith("file:"):
            continue
        path = Path(source[5:])
        given = path.relative_to(directory) if path.is_relative_to(directory) else path
        tried = candidates(given, planner_file.parent, cwd)
        found = next((p for p in tried if exists(p)), None)
        variable = variables.get(name, "")
        if found is not None:
            sources[name] = f"file:{found}"
        elif variable and env.get(variable, "").strip():
            sources[name] = variable
        else:
            shown = variable or "the provider's key variable"
            raise ConfigError(missing_file(settings.name, f"{name}_file", given, tried, shown))
    return replace(settings, secret_sources=sources)
