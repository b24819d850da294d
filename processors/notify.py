"""Slack-compatible webhook for new alerts: a bounded queue and a sender task with retries."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from runstream.server import telemetry as tm
from runstream.v1.ingest_pb2 import Alert

log = logging.getLogger("runstream.processors")


class Webhook:
    def __init__(self, url: str, *, retries: int = 4, queue_size: int = 1000) -> None:
        self.url = url
        self.retries = retries
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(queue_size)

    def submit(self, alert: Alert) -> None:
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            tm.PROC_WEBHOOK.labels("dropped").inc()
            log.warning("Webhook queue full; alert %s not posted (it is stored all the same).", alert.alert_id)

    @staticmethod
    def payload(a: Alert) -> dict:
        icon = ":rotating_light:" if a.severity == "critical" else ":warning:"
        return {"text": f"{icon} [{a.project}] {a.kind} on run {a.run_id}: {a.message}",
                "runstream": {"alert_id": a.alert_id, "project": a.project, "run_id": a.run_id, "metric": a.metric,
                              "kind": a.kind, "severity": a.severity, "step": a.step, "value": a.value}}

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                alert = await self.queue.get()
                delay = 0.5
                for attempt in range(self.retries + 1):
                    try:
                        async with session.post(self.url, json=self.payload(alert)) as resp:
                            if resp.status < 300:
                                tm.PROC_WEBHOOK.labels("sent").inc()
                                break
                            if resp.status < 500 and resp.status != 429:
                                tm.PROC_WEBHOOK.labels("rejected").inc()
                                log.error("Webhook refused alert %s: HTTP %d.", alert.alert_id, resp.status)
                                break
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        log.warning("Webhook post failed (%s), attempt %d.", exc, attempt + 1)
                    await asyncio.sleep(delay)
                    delay *= 2
                else:
                    tm.PROC_WEBHOOK.labels("failed").inc()
