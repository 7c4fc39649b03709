"""The agent's pacing of mirrored connections to one client (``MirrorDeliveries``): at
most ``limit`` streams at once, a bounded number waiting, none refused while there is
room to wait."""

from __future__ import annotations

import asyncio

from asyncio_runner import async_test

from mirrord_network.agent.incoming import MirrorDeliveries


async def settled(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.01)


@async_test()
async def test_connections_beyond_the_limit_wait_and_beyond_the_queue_are_dropped() -> None:
    deliveries = MirrorDeliveries(limit=2, max_waiting=2)
    outcome: dict[int, bool] = {}
    finish = {n: asyncio.Event() for n in range(5)}

    async def deliver(n: int) -> None:
        async with deliveries.slot() as room:
            outcome[n] = room
            if room:
                await finish[n].wait()

    tasks = [asyncio.ensure_future(deliver(n)) for n in range(5)]
    # Two are being delivered, two wait, the fifth finds the queue full.
    await settled(lambda: len(outcome) == 3)
    assert outcome == {0: True, 1: True, 4: False}
    assert deliveries.waiting == 2 and deliveries.dropped == 1
    finish[0].set()
    await settled(lambda: 2 in outcome)
    assert outcome[2] is True and 3 not in outcome
    for event in finish.values():
        event.set()
    await asyncio.gather(*tasks)
    assert outcome == {0: True, 1: True, 2: True, 3: True, 4: False}
    assert deliveries.waiting == 0


@async_test()
async def test_a_cancelled_delivery_gives_its_stream_back() -> None:
    deliveries = MirrorDeliveries(limit=1)
    entered: list[int] = []

    async def deliver(n: int) -> None:
        async with deliveries.slot():
            entered.append(n)
            await asyncio.Event().wait()

    first = asyncio.ensure_future(deliver(1))
    waiting = asyncio.ensure_future(deliver(2))
    await settled(lambda: entered == [1] and deliveries.waiting == 1)
    waiting.cancel()  # unsubscribed while waiting
    await asyncio.gather(waiting, return_exceptions=True)
    assert deliveries.waiting == 0
    first.cancel()  # unsubscribed while being delivered
    await asyncio.gather(first, return_exceptions=True)
    third = asyncio.ensure_future(deliver(3))
    await settled(lambda: entered == [1, 3])
    third.cancel()
    await asyncio.gather(third, return_exceptions=True)
