"""Development tooling for bootkit: what the tests, the demo and the benchmarks share.

Not part of the product: `bootkit` never imports it. It runs from a checkout
installed with `pip install -e .` (scripts/setup does that) and keeps its
downloads and builds in the checkout's `.cache/`.

- `qemu`: boot a disk image under QEMU with UEFI firmware, read its serial console;
- `harness`: what the test OS reports, bootkit disk images under test, the boot menu;
- `kernel`: the Debian kernel the boots run, fetched once
  (`python -m bootkit_testing.kernel` prints where it is);
- `testos`: a tiny busybox OS that reports on its boot;
- `debian`: a Debian 12 tree with systemd and a dracut initramfs, to deploy and boot;
- `dracut`: a copy of dracut's base directory with bootkit's module in it;
- `secureboot`: Debian's snakeoil Secure Boot key and firmware;
- `demo`: the demo (`python -m bootkit_testing.demo`, or scripts/demo).
"""
