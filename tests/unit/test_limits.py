"""Admission control by decoded pixels (PixelBudget) and giving memory back, without a server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from reward_server.limits import PixelBudget, ServerBusy


def test_requests_that_do_not_fit_wait_in_order_then_get_busy_with_retry_after():
    async def main() -> list[str]:
        budget = PixelBudget(100, wait_s=0.3, retry_after_s=4)
        events: list[str] = []
        release = asyncio.Event()

        async def hold(name: str, pixels: int) -> None:
            async with budget.hold(pixels):
                events.append(f"{name} in")
                await release.wait()
            events.append(f"{name} out")

        first = asyncio.ensure_future(hold("a", 60))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(hold("b", 50))  # does not fit next to a: waits
        third = asyncio.ensure_future(hold("c", 10))  # would fit, but b came first: waits behind it
        await asyncio.sleep(0.05)
        assert events == ["a in"] and budget.in_use == 60
        release.set()
        await asyncio.gather(first, second, third)
        assert budget.in_use == 0
        release.clear()
        blocker = asyncio.ensure_future(hold("d", 100))
        await asyncio.sleep(0)
        with pytest.raises(ServerBusy, match="max_pixels_in_flight") as busy:
            await hold("e", 1)
        assert busy.value.retry_after_s == 4 and budget.refused == 1
        release.set()
        await blocker
        return events

    events = asyncio.run(main())
    assert events.index("a out") < events.index("b in") < events.index("c in")  # c did not jump the queue


def test_a_caller_that_gives_up_while_waiting_frees_its_place():
    async def main() -> int:
        budget = PixelBudget(10, wait_s=5)
        async with budget.hold(10):
            waiter = asyncio.ensure_future(budget.hold(5).__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with budget.hold(10):  # nobody left in the queue ahead of it
            return budget.in_use

    assert asyncio.run(main()) == 10


def test_memory_goes_back_to_the_os_after_a_large_request():
    # 16 blank 2048x2048 PNGs (200 MB decoded): RSS stayed ~50 MB higher afterwards; with 4096 px
    # images and more of them, GBs (issue 13)
    script = textwrap.dedent('''
        import asyncio, base64, io, time
        from PIL import Image
        from reward_server.config import RewardSpec
        from reward_server.rewards.synthetic import BrightnessReward
        from reward_server.service import LocalBackend, ScoringService
        from shared.protocol import ScoreRequest

        def rss_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024

        def png(side):
            buf = io.BytesIO()
            Image.new("RGB", (side, side), (10, 20, 30)).save(buf, format="PNG")
            return base64.b64encode(buf.getvalue()).decode()

        reward = BrightnessReward("b", RewardSpec(type="brightness"))
        reward.load(); reward.loaded = True
        def request(side, n):
            return ScoreRequest.model_validate({"rewards": {"b": 1.0}, "samples": [{"image": png(side)}] * n})

        async def main():
            backend = LocalBackend({"b": reward})
            service = ScoringService({"b": reward}, backend)
            await service.score(request(64, 4))
            before = rss_mb()
            await service.score(request(2048, 16))
            await asyncio.sleep(1.5)  # the trim runs on a thread a moment after the answer
            print(rss_mb() - before)
            await backend.close()

        asyncio.run(main())
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 25, f"RSS grew {out.stdout.strip()} MB and stayed"
