"""One campaign's default journals under other shard layouts: a guard against sending twice.

Each layout of a campaign keeps its own default journals beside the campaign file
(``.bulksend/CAMPAIGN.journal`` without ``--shard``, ``CAMPAIGN.shard-I-of-N.journal`` with
``--shard I/N``), so a send in another layout cannot resume them: it would send again what they
delivered. ``other_layouts`` finds the journals of the other layouts that record something the
provider may have kept; ``refusal`` is the one line that stops such a send; ``move_aside`` is what
``--fresh`` does with them: they are moved to ``.bulksend/superseded-<UTC time>/``, never
deleted, and the move is said on one line. Custom ``--journal`` paths are not looked at.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bulksend.output.private import make_dirs
from bulksend.state.journal import Journal
from bulksend.state.shard import Shard

#: the files that belong to a journal at PATH: PATH, its SQLite WAL and shared memory, and the
#: dead-letter file named after it
COMPANIONS = ("-wal", "-shm")


@dataclass(frozen=True, slots=True)
class Layout:
    """The default journals of one layout: ``count`` shards (1: without ``--shard``)."""

    count: int
    journals: tuple[Path, ...]

    def described(self) -> str:
        """``without --shard (.bulksend/c.journal)``, ``as 4 shards (.bulksend/c.shard-*-of-4
        .journal)``."""
        if self.count == 1:
            return f"without --shard ({self.journals[0]})"
        folder, name = self.journals[0].parent, self.journals[0].name
        pattern = re.sub(r"\.shard-\d+-of-", ".shard-*-of-", name)
        return f"as {self.count} shards ({folder / pattern})"

    def resume(self) -> str:
        if self.count == 1:
            return "run the send again without --shard"
        return f"run the same --shard I/{self.count} commands"


def count_of(shard: Shard | None) -> int:
    return shard.count if shard is not None and shard.count > 1 else 1


def default_journals(folder: Path, stem: str) -> dict[int, list[Path]]:
    """The default journals of the campaign ``stem`` in ``folder``, by layout."""
    pattern = re.compile(rf"{re.escape(stem)}(?:\.shard-(\d+)-of-(\d+))?\.journal")
    found: dict[int, list[Path]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        m = pattern.fullmatch(path.name)
        if not m or not path.is_file() or path.stat().st_size == 0:
            continue
        count = int(m.group(2)) if m.group(2) else 1
        if count > 1 and int(m.group(1)) >= count:
            continue  # not a name bulksend gives
        found.setdefault(count, []).append(path)
    return found


def other_layouts(campaign_file: Path, shard: Shard | None) -> list[Layout]:
    """The layouts other than ``shard``'s whose default journals record something the provider
    may have kept (a journal of a send that was refused at once does not count)."""
    folder = campaign_file.parent / ".bulksend"
    own = count_of(shard)
    layouts = []
    for count, paths in default_journals(folder, campaign_file.stem).items():
        kept = tuple(p for p in paths if count != own and Journal.kept_anything(p))
        if kept:
            layouts.append(Layout(count, kept))
    return layouts


def refusal(
    campaign_file: Path, layouts: Sequence[Layout], shard: Shard | None, *, retry: bool = False
) -> str:
    """The one line that stops a send in another layout than the journals found."""
    count = count_of(shard)
    found = " and ".join(layout.described() for layout in layouts)
    resume = layouts[0].resume() if len(layouts) == 1 else "run the commands of that send"
    if retry:
        now, fresh = "this retry", f"`bulksend send {campaign_file} --fresh` sends everything again"
    else:
        now = f"--shard {shard}" if count > 1 else "a send without --shard"
        every = f" to every --shard I/{count} command" if count > 1 else ""
        fresh = f"to send everything again, add --fresh{every}"
    return (
        f"{campaign_file}: this campaign was already sent {found}; {now} would send again what "
        f"that send delivered. To resume it, {resume}; {fresh} (the journals found are then "
        "moved aside, not deleted)"
    )


def move_aside(layouts: Sequence[Layout], clock: Callable[[], float] = time.time) -> str:
    """Move the journals of ``layouts`` (with their companion files) to
    ``.bulksend/superseded-<UTC time>/``; returns the line that says so ("" if none was there:
    a shard started at the same time may have moved them)."""
    if not layouts:
        return ""
    folder = layouts[0].journals[0].parent
    target = folder / time.strftime("superseded-%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    moved = 0
    for layout in layouts:
        for journal in layout.journals:
            files = [Path(f"{journal}{suffix}") for suffix in ("", *COMPANIONS)]
            files.append(journal.with_suffix(".dead-letter.jsonl"))
            for path in files:
                if not path.exists():
                    continue
                make_dirs(target)
                try:
                    path.rename(target / path.name)
                except FileNotFoundError:  # moved by another shard meanwhile
                    continue
                moved += path.suffix == ".journal"
    if not moved:
        return ""
    found = " and ".join(layout.described() for layout in layouts)
    noun = "journal" if moved == 1 else "journals"
    return (
        f"--fresh: the send of this campaign {found} is not resumed: its {moved} {noun} "
        f"(and their dead-letter files) moved to {target}/, not deleted"
    )
