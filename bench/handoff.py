"""What one thread hand-over costs on this machine: the price of each hop a
callback thread adds to a round trip (bench/RESULTS.md, "Where each open
target stands", issue 19's echo with the defaults).

    python3 bench/handoff.py [--rounds 20000]

Two Python threads pass a token back and forth through
``queue.SimpleQueue`` (the callback pool's queue): each round trip is two
hand-overs, each a futex wake-up and the GIL changing hands.  Prints the
p50 and p99 of one hand-over (half a round trip).
"""

from __future__ import annotations

import argparse
import queue
import statistics
import threading
import time


def handoff_us(rounds: int) -> tuple[float, float]:
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (token := there.get()) is not None:
            back.put(token)

    thread = threading.Thread(target=echo, name="handoff-echo")
    thread.start()
    samples = []
    try:
        for token in range(rounds):
            t0 = time.perf_counter()
            there.put(token)
            if back.get(timeout=10) != token:
                raise AssertionError("hand-over out of order")
            samples.append(time.perf_counter() - t0)
    finally:
        there.put(None)
        thread.join(10)
    samples.sort()
    return statistics.median(samples) / 2 * 1e6, samples[int(len(samples) * 0.99)] / 2 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    p50, p99 = handoff_us(args.rounds)
    print(f"one thread hand-over: p50 {p50:.1f} us, p99 {p99:.1f} us")


if __name__ == "__main__":
    main()
