from __future__ import annotations

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.journal import JournalCap

pytestmark = pytest.mark.integration


async def test_the_journal_keeps_the_newest_and_archives_the_rest_oldest_first(redis: Redis) -> None:
    for i in range(1, 8):
        await redis.lpush(keys.CLOSED_JOURNAL, f'{{"n": {i}}}')  # newest first, as the closer writes
    cap = JournalCap(redis, maxlen=3)
    assert await cap.enforce() == 4
    assert await redis.lrange(keys.CLOSED_JOURNAL, 0, -1) == ['{"n": 7}', '{"n": 6}', '{"n": 5}']
    archived = [fields["record"] for _, fields in await redis.xrange(keys.CLOSED_ARCHIVE)]
    assert archived == ['{"n": 1}', '{"n": 2}', '{"n": 3}', '{"n": 4}']  # nothing dropped, in order
    assert await cap.enforce() == 0
    await redis.lpush(keys.CLOSED_JOURNAL, '{"n": 8}')
    assert await cap.enforce() == 1
    assert [f["record"] for _, f in await redis.xrange(keys.CLOSED_ARCHIVE)][-1] == '{"n": 5}'
