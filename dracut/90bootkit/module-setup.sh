#!/bin/bash
# dracut module "bootkit": runs bootkit-prepare-root between mounting the
# physical root at /sysroot and switching into it, so that /sysroot holds the
# deployment named by bootkit= on the kernel command line.
#
# Included only on request: dracut --add bootkit (or add_dracutmodules+=" bootkit ").

# dracut defines moddir, initdir, systemdsystemunitdir and SYSTEMCTL before
# it sources this file.
# shellcheck disable=SC2154

check() {
    # 255: never picked up automatically, only when asked for.
    return 255
}

depends() {
    echo systemd-initrd
}

install() {
    inst_multiple mount umount mkdir
    inst_simple "$moddir/bootkit-prepare-root.sh" /usr/lib/bootkit/bootkit-prepare-root
    inst_simple "$moddir/bootkit-prepare-root.service" \
        "$systemdsystemunitdir/bootkit-prepare-root.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target bootkit-prepare-root.service
}
