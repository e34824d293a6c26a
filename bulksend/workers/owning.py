"""What a worker writes only while it still holds the batch (Lua: checked and written at once).

A worker holds a batch while the batch's stream entry is pending under the worker's name in the
group. A worker stalled longer than ``--idle`` (paused, swapping, its clock stopped) can lose it:
another worker takes it over with ``XAUTOCLAIM``. From then on the first worker must not touch the
batch's record, the stream entry nor its idle time; these scripts check the entry's consumer
(``XPENDING``) and write in the same step:

* ``WRITE``: a batch's record, its parts and (when final) its acknowledgement -- or, when the
  worker lost it, nothing of that; a final outcome goes to ``late`` (the first only) and the batch
  is returned as lost. An in-flight record refused means the batch is not sent by this worker;
* ``REFRESH``: reset the idle time of the entries the worker still holds (``XCLAIM ... JUSTID``,
  never taking back one another took); returns the entries lost;
* ``GIVE_BACK``: add a batch not started to the stream again, only if the worker still holds it.

So a batch sent by two workers is always reported: the second found the first's ``in_flight``
record (written only while the first held it, so before the takeover) and resent it as a possible
duplicate, and the first's late outcome cannot overwrite the second's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: KEYS: stream, batches, parts, late. ARGV: group, consumer, then for each batch: number,
#: entry id, record ("" for none), ack (1/0), late outcome ("" for none), n parts, n x (field,
#: value). Returns the numbers of the batches the consumer does not hold.
WRITE = """
local group, me = ARGV[1], ARGV[2]
local lost = {}
local i = 3
while i <= #ARGV do
  local number, entry, row, ack, late = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local n = tonumber(ARGV[i + 5])
  local p = redis.call('XPENDING', KEYS[1], group, entry, entry, 1)
  if #p > 0 and p[1][2] == me then
    if row ~= '' then redis.call('HSET', KEYS[2], number, row) end
    for j = 0, n - 1 do
      redis.call('HSET', KEYS[3], ARGV[i + 6 + 2 * j], ARGV[i + 7 + 2 * j])
    end
    if ack == '1' then
      redis.call('XACK', KEYS[1], group, entry)
      redis.call('XDEL', KEYS[1], entry)
    end
  else
    if late ~= '' then redis.call('HSETNX', KEYS[4], number, late) end
    lost[#lost + 1] = number
  end
  i = i + 6 + 2 * n
end
return lost
"""

#: KEYS: stream. ARGV: group, consumer, entry ids. Returns the entry ids not held (any more).
REFRESH = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

#: KEYS: stream. ARGV: group, consumer, entry id, the entry's fields (field, value, ...).
#: Returns 1 when added again, 0 when the consumer did not hold it.
GIVE_BACK = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""


@dataclass(slots=True)
class Owed:
    """What a worker still has to write of one batch it holds."""

    row: bytes | None = None
    parts: dict[str, bytes] = field(default_factory=dict)
    ack: bool = False

    def merged(self, newer: Owed) -> Owed:
        """This (a write that failed) under ``newer`` (queued since)."""
        return Owed(newer.row or self.row, {**self.parts, **newer.parts}, self.ack or newer.ack)


def write_args(
    group: str,
    consumer: str,
    owed: Mapping[int, tuple[str, Owed, bytes]],
) -> list[bytes | str | int]:
    """``WRITE``'s ARGV for ``owed``: number -> (entry id, what to write, late outcome)."""
    args: list[bytes | str | int] = [group, consumer]
    for number, (entry, item, late) in owed.items():
        args += [number, entry, item.row or b"", int(item.ack), late if item.ack else b""]
        args.append(len(item.parts))
        for name, value in item.parts.items():
            args += [name, value]
    return args
