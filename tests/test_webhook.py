"""Alert webhook: Slack-compatible JSON, retried while the receiver fails, one post per alert."""

from __future__ import annotations

import asyncio

from aiohttp import web

from runstream.processors.notify import Webhook
from runstream.v1.ingest_pb2 import Alert


def test_webhook_retries_until_the_receiver_accepts() -> None:
    async def scenario() -> list[dict]:
        received: list[dict] = []
        failures = {"left": 2}

        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            if failures["left"]:
                failures["left"] -= 1
                return web.Response(status=503)
            received.append(body)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        wh = Webhook(f"http://127.0.0.1:{port}/hook", retries=4)
        task = asyncio.create_task(wh.run())
        wh.submit(Alert(alert_id="a1", project="vision", run_id="r1", metric="loss", kind="spike", severity="warning",
                        step=800, value=5.0, message="loss = 5 at step 800 is 10x its recent level 0.5"))
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await runner.cleanup()
        return received

    received = asyncio.run(scenario())
    assert len(received) == 1
    assert received[0]["text"].startswith(":warning: [vision] spike on run r1")
    assert received[0]["runstream"]["step"] == 800 and received[0]["runstream"]["alert_id"] == "a1"
