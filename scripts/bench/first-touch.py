#!/usr/bin/env python3
"""How much the first write to memory costs on this machine, against a second write.

On a VM whose host backs guest memory lazily and takes freed pages back (virtio-balloon free
page reporting), the first touch of a page the guest has not used lately faults into the host.
Every workload that fills new page-cache pages pays that, the benchmarks included: it is one of
the reasons their rounds spread as they do (docs/PERFORMANCE.md, "This machine's memory").

Usage: scripts/bench/first-touch.py [GIB] [--again SECONDS]
  GIB              anonymous memory to map and write twice (default 4)
  --again SECONDS  after the first measurement, wait this long and measure with a fresh mapping
                   again (default 0: once): shows whether freed memory is taken back
"""
import mmap
import sys
import time

PAGE = mmap.PAGESIZE


def touch(mm: mmap.mmap, pages: int, value: bytes) -> float:
    start = time.monotonic()
    for i in range(pages):
        mm[i * PAGE] = value[0]
    return time.monotonic() - start


def measure(gib: float) -> None:
    size = int(gib * (1 << 30)) // PAGE * PAGE
    pages = size // PAGE
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    first = touch(mm, pages, b"\x01")
    second = touch(mm, pages, b"\x02")
    mm.close()
    # The second pass is the cost of the loop itself (the pages are mapped by then); what the
    # first costs on top of it is the page faults: guest zeroing plus any host-side fault.
    fault_us = (first - second) / pages * 1e6
    print(
        f"{gib:g} GiB, {pages} pages: first write {first:.2f} s, second {second:.2f} s; "
        f"{fault_us:.2f} µs per first-touched page ({PAGE / max(fault_us, 1e-9) / 1e3:.2f} GB/s)"
    )


def main() -> None:
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return
    again = 0.0
    if "--again" in args:
        i = args.index("--again")
        again = float(args[i + 1])
        del args[i : i + 2]
    gib = float(args[0]) if args else 4.0
    measure(gib)
    if again > 0:
        time.sleep(again)
        measure(gib)


if __name__ == "__main__":
    main()
