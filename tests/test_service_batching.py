"""The dynamic batcher and the metrics page, without HTTP."""

from __future__ import annotations

import time
from concurrent.futures import CancelledError
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest_service import checkpoint  # noqa: F401  (fixture)

from bpr.refiner import Refiner
from service.batching import Batcher, QueueFull, ShuttingDown
from service.metrics import Counter, Histogram, Registry


@pytest.fixture(scope="module")
def refiner(checkpoint: Path) -> Refiner:
    return Refiner.from_checkpoint(checkpoint, batch_size=16)


def _disc(seed: int, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), size // 3, 1, -1)
    return image, mask[None].astype(bool)


def _job(refiner: Refiner, seed: int):
    image, masks = _disc(seed)
    return refiner.prepare(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks), refiner.options)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def __call__(self, patches: int, jobs: int, seconds: float) -> None:
        self.batches.append((patches, jobs))


def test_pools_jobs_and_matches_the_library(refiner: Refiner) -> None:
    rec = Recorder()
    batcher = Batcher(refiner, max_wait_s=0.5, max_queued_patches=10_000, on_batch=rec)
    batcher.start()
    jobs = [_job(refiner, s) for s in range(3)]
    assert 0 < jobs[0].remaining < refiner.batch_size
    futures = [batcher.submit(j) for j in jobs]
    for f, seed in zip(futures, range(3)):
        refined = refiner.finish(f.result(timeout=30)).numpy()
        assert np.array_equal(refined, refiner.refine(*_disc(seed)))
    assert sum(p for p, _ in rec.batches) == sum(j.image_patches.shape[0] for j in jobs)
    assert max(j for _, j in rec.batches) >= 2, rec.batches  # patches of several jobs in one pass
    assert batcher.pending_patches == 0 and batcher.pending_jobs == 0
    assert batcher.stop(10)


def test_lone_small_job_waits_at_most_max_wait(refiner: Refiner) -> None:
    batcher = Batcher(refiner, max_wait_s=0.3, max_queued_patches=10_000)
    batcher.start()
    t0 = time.monotonic()
    batcher.submit(_job(refiner, 0)).result(timeout=30)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 0.3 + 10, elapsed
    assert batcher.stop(10)


def test_full_batch_does_not_wait(refiner: Refiner) -> None:
    batcher = Batcher(refiner, max_wait_s=30.0, max_queued_patches=10_000)
    batcher.start()
    jobs = [_job(refiner, s) for s in range(4)]
    assert sum(j.remaining for j in jobs) >= refiner.batch_size
    futures = [batcher.submit(j) for j in jobs]
    futures[0].result(timeout=20)  # would take 30 s if full batches waited
    assert batcher.stop(60)  # the tail is drained on stop, without waiting out max_wait


def test_queue_bound_refuses_but_never_starves_a_large_job(refiner: Refiner) -> None:
    batcher = Batcher(refiner, max_wait_s=1.0, max_queued_patches=5)
    batcher.start()
    big = _job(refiner, 0)
    assert big.remaining > 5
    first = batcher.submit(big)  # accepted: the queue was empty
    with pytest.raises(QueueFull) as info:
        batcher.submit(_job(refiner, 1))
    assert 1 <= info.value.retry_after <= 60
    first.result(timeout=30)
    batcher.submit(_job(refiner, 2)).result(timeout=30)  # room again
    assert batcher.stop(10)


def test_cancelled_job_leaves_the_queue_at_once(refiner: Refiner) -> None:
    rec = Recorder()
    batcher = Batcher(refiner, max_wait_s=5.0, max_queued_patches=10_000, on_batch=rec)
    batcher.start()
    doomed = batcher.submit(_job(refiner, 0))
    assert batcher.pending_patches > 0
    assert doomed.cancel()
    deadline = time.monotonic() + 2
    while batcher.pending_patches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.pending_patches == 0 and batcher.pending_jobs == 0
    assert rec.batches == []  # nobody computed for it
    with pytest.raises(CancelledError):
        doomed.result()
    assert batcher.stop(10)


def test_stop_finishes_queued_work_then_refuses(refiner: Refiner) -> None:
    batcher = Batcher(refiner, max_wait_s=30.0, max_queued_patches=10_000)
    batcher.start()
    future = batcher.submit(_job(refiner, 0))
    assert batcher.stop(30)
    assert future.result(timeout=0).remaining == 0
    with pytest.raises(ShuttingDown):
        batcher.submit(_job(refiner, 1))


def test_failed_batch_fails_its_requests_and_keeps_serving(refiner: Refiner, monkeypatch: pytest.MonkeyPatch) -> None:
    batcher = Batcher(refiner, max_wait_s=0.0, max_queued_patches=10_000)
    calls = {"n": 0}
    real = refiner.run_batch

    def flaky(feed):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(feed)

    monkeypatch.setattr(refiner, "run_batch", flaky)
    batcher.start()
    with pytest.raises(RuntimeError, match="simulated"):
        batcher.submit(_job(refiner, 0)).result(timeout=30)
    assert batcher.submit(_job(refiner, 1)).result(timeout=30).remaining == 0
    assert batcher.pending_patches == 0
    assert batcher.stop(10)


def test_prometheus_text_format() -> None:
    r = Registry()
    c = Counter(r, "x_total", "things", ("route", "status"))
    h = Histogram(r, "y_seconds", "time", buckets=(0.1, 1.0))
    c.inc("/a", "200")
    c.inc("/a", "200")
    c.inc('we"ird\\', "500")
    h.observe(0.05)
    h.observe(0.5)
    h.observe(5.0)
    text = r.render()
    assert "# TYPE x_total counter\n" in text
    assert 'x_total{route="/a",status="200"} 2\n' in text
    assert 'x_total{route="we\\"ird\\\\",status="500"} 1\n' in text
    assert 'y_seconds_bucket{le="0.1"} 1\n' in text
    assert 'y_seconds_bucket{le="1"} 2\n' in text
    assert 'y_seconds_bucket{le="+Inf"} 3\n' in text
    assert "y_seconds_sum 5.55\n" in text and "y_seconds_count 3\n" in text
