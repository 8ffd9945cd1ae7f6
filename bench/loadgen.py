"""A load generator for the API, in a process of its own (so it does not share the
server's event loop): POSTs notifications at a fixed rate or as fast as
--concurrency connections allow, for --seconds (or until --count requests were
sent); writes one JSON line per request (notification id, start and end time,
status) to --out. ``--concurrency 1`` is one keep-alive client posting one request
after another (bench W4s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

import aiohttp


async def run(args: argparse.Namespace) -> None:
    body_channels = args.channels.split(",")
    counter = itertools.count()
    records: list[dict[str, object]] = []
    deadline = time.monotonic() + args.seconds
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(n: int) -> None:
            payload = {
                "to": [f"{args.prefix}{n % args.recipients}"],
                "message": "load test",
                "channels": body_channels,
                "priority": args.priority,
            }
            start = time.time()
            try:
                async with session.post(f"{args.url}/api/notifications", json=payload) as response:
                    status = response.status
                    data = await response.json() if status in (200, 202) else {}
            except aiohttp.ClientError:
                status, data = 0, {}
            records.append(
                {"id": data.get("id"), "start": start, "end": time.time(), "status": status}
            )

        if args.rate:
            interval = 1.0 / args.rate
            tasks = []
            next_at = time.monotonic()
            while time.monotonic() < deadline:
                n = next(counter)
                if args.count and n >= args.count:
                    break
                tasks.append(asyncio.create_task(one(n)))
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)
        else:

            async def lane() -> None:
                while time.monotonic() < deadline:
                    n = next(counter)
                    if args.count and n >= args.count:
                        return
                    await one(n)

            await asyncio.gather(*(lane() for _ in range(args.concurrency)))
    with open(args.out, "w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=0, help="requests per second (0: saturate)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--channels", default="IN_APP")
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--prefix", default="load-")
    parser.add_argument("--priority", default="normal")
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: no limit)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
