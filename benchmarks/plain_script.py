"""The script a user would write instead of ``bulksend send`` (issue 16), written plainly.

    python benchmarks/plain_script.py FILE BASE_URL API_KEY [BATCH_SIZE] [IN_FLIGHT]

``csv.reader`` over the file (``json.loads`` per line for JSON Lines, ``gzip.open`` for a
``.gz`` name), two Python sets dropping the ids and uids already seen, batches of BATCH_SIZE
(1,000) recipients encoded with orjson, IN_FLIGHT (64) aiohttp posts in flight to MaxTraffic's
``/v1/notifications``; no rate limiter, no retry, no journal. uvloop when it is installed.
Prints the recipients and requests sent. It imports only what such a script would, so its
start-up is a fair baseline: ``benchmarks.versus_script`` runs it as a child process.
"""

import asyncio
import csv
import gzip
import json
import sys
from collections.abc import Iterator

import aiohttp
import orjson

MESSAGE = {
    "messages": [{"title": "Benchmark", "body": "hello"}],
    "campaign": "bench",
}


def rows(path: str) -> Iterator[tuple[str | None, str | None]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        if ".jsonl" in path:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    yield record.get("id"), record.get("uid")
        else:
            reader = csv.reader(f)
            header = next(reader)
            id_col, uid_col = header.index("id"), header.index("uid")
            for row in reader:
                if row:
                    yield row[id_col], row[uid_col]


def bodies(path: str, batch_size: int, counts: list[int]) -> Iterator[bytes]:
    seen_ids: set[str | None] = set()
    seen_uids: set[str | None] = set()
    ids: list[str | None] = []
    uids: list[str | None] = []
    n = 0
    for id_, uid in rows(path):
        new_id = bool(id_) and id_ not in seen_ids
        new_uid = bool(uid) and uid not in seen_uids
        if not (new_id or new_uid):
            continue
        if new_id:
            seen_ids.add(id_)
            ids.append(id_)
        if new_uid:
            seen_uids.add(uid)
            uids.append(uid)
        n += 1
        if n == batch_size:
            counts[0] += n
            yield orjson.dumps({**MESSAGE, "to_ids": ids, "to_uids": uids})
            ids, uids, n = [], [], 0
    if n:
        counts[0] += n
        yield orjson.dumps({**MESSAGE, "to_ids": ids, "to_uids": uids})


async def main(path: str, base_url: str, api_key: str, batch_size: int, in_flight: int) -> None:
    url = base_url.rstrip("/") + "/v1/notifications"
    headers = {
        "Authorization": f"key={api_key}",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    counts = [0, 0]  # recipients, requests
    todo = bodies(path, batch_size, counts)
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in todo:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"HTTP {resp.status}")
                counts[1] += 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    print(f"sent {counts[0]} recipients in {counts[1]} requests")


if __name__ == "__main__":
    args = sys.argv[1:]
    batch = int(args[3]) if len(args) > 3 else 1000
    flight = int(args[4]) if len(args) > 4 else 64
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    run(main(args[0], args[1], args[2], batch, flight))
