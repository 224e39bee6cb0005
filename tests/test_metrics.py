"""/metrics through prometheus_client: what a scrape shows after real traffic, and who may scrape."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bot.server import RunningServer, start_server
from tests.conftest import Chat, make_settings


def sample(body: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_a_scrape_counts_steps_repeats_and_latency(server: RunningServer, http: aiohttp.ClientSession) -> None:
    before = await scrape(http, server.url)
    chat = await Chat(http, server.url).open()
    await chat.send({"id": "a", "text": "/start"})
    await chat.send({"id": "a", "text": "/start"})
    await chat.send({"id": "b", "text": "/help"})
    after = await scrape(http, server.url)
    for outcome, delta in (("step", 2), ("replayed", 1)):
        grew = (sample(after, "haoqing_updates_total", channel="web", outcome=outcome)
                - sample(before, "haoqing_updates_total", channel="web", outcome=outcome))
        assert grew == delta, (outcome, grew)
    assert (sample(after, "haoqing_step_seconds_count", channel="web")
            - sample(before, "haoqing_step_seconds_count", channel="web")) == 3
    assert sample(after, "haoqing_jobs", status="pending") >= 1, "the housekeeping jobs are read from the database"
    assert chat.session not in after


async def test_metrics_need_the_token_when_one_is_set(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    srv = await start_server(make_settings(tmp_path, metrics_token="scrape-token-1234"))
    try:
        async with http.get(srv.url + "/metrics") as r:
            assert r.status == 404
        async with http.get(srv.url + "/metrics", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 404
        async with http.get(srv.url + "/metrics", headers={"Authorization": "Bearer scrape-token-1234"}) as r:
            assert r.status == 200
            assert "haoqing_updates_total" in await r.text()
    finally:
        await srv.stop()


async def test_a_scrape_shows_a_broadcasts_progress(server: RunningServer, http: aiohttp.ClientSession) -> None:
    from datetime import timedelta

    from bot.broadcasts import BROADCASTS
    from bot.storage import utcnow

    for _ in range(3):
        await (await Chat(http, server.url).open()).say("/start")
    service = server.app[BROADCASTS]
    texts = {"zh_CN": "号清提醒：周六系统维护。", "en": "Haoqing: maintenance on Saturday."}
    # Scheduled a day ahead: it waits, all three recipients left, whatever the engine does meanwhile.
    created = await service.create(texts=texts, dry_run=False, scheduled_at=utcnow() + timedelta(days=1))
    await service.start(created["id"])
    body = await scrape(http, server.url)
    assert sample(body, "haoqing_broadcast_left", status="scheduled") == 3
    assert sample(body, "haoqing_broadcast_left", status="running") == 0
    await service.cancel(created["id"])
    assert sample(await scrape(http, server.url), "haoqing_broadcast_left", status="scheduled") == 0
