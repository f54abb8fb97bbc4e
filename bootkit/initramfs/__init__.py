"""bootkit's own initramfs: a busybox /init that boots a deployment.

`build_initramfs()` writes a compressed cpio image holding busybox, the kernel
modules needed to reach the root disk (resolved from each module's
`.modinfo`, dependencies first), optional extra programs with their shared
libraries, `/init` and the `bootkit-prepare-root` hook.

At boot, /init mounts proc, sys, devtmpfs and /run, loads the modules, waits
for `root=`, mounts it on /sysroot, runs the hook (which leaves the
`bootkit=` deployment at /sysroot) and switch_roots into the deployment's
`init=` (default /sbin/init).

Kernel command line read by /init:
  root=LABEL=x | UUID=x | PARTUUID=x | PARTLABEL=x | /dev/xxx
                                   the physical root filesystem (required)
  rootfstype=, rootflags=          passed to mount
  ro | rw                          mount the physical root read-only (the
                                   default, as the kernel does) or read-write;
                                   /etc and /var of the deployment are only
                                   writable once it is read-write
  init=PATH                        program to start in the deployment
  bootkit=/bootkit/deploy/<os>/deploy/<id>   the deployment (read by the hook)
  bootkit.poweroff_on_failure=1    power off instead of an emergency shell
                                   when booting fails (for tests)
  bootkit.root_timeout=SECONDS     how long to wait for root= (default 30)
  bootkit.break=pre-mount|pre-hook|pre-switch
                                   open a shell at that point; exiting it
                                   continues the boot
  <module>.<option>=<value>        passed to insmod of that module

Console lines, each starting with "bootkit: ", that tests can wait for:
  bootkit: switching root to /bootkit/deploy/<os>/deploy/<id>
      the hook succeeded; switch_root follows (the dracut unit prints it too)
  bootkit: <what is wrong>; <what to do>
      one line per failure, from the hook or /init (missing root device,
      invalid bootkit=, ...)
  bootkit: boot failed, powering off (bootkit.poweroff_on_failure=1)
  bootkit: boot failed, starting an emergency shell; exit it to try again
      always follows a failure line
  bootkit: warning: ...
      not fatal (a module that did not load, a kernel release mismatch)
"""

from bootkit.initramfs.builder import DEFAULT_MODULES, BuildResult, build_initramfs
from bootkit.initramfs.reader import Segment, read_image, read_segments

__all__ = [
    "DEFAULT_MODULES",
    "BuildResult",
    "Segment",
    "build_initramfs",
    "read_image",
    "read_segments",
]
