#!/bin/sh
# bootkit-prepare-root: make the deployment named by bootkit= the new root.
#
# Runs in the initramfs once the physical root filesystem is mounted at
# /sysroot, under systemd (bootkit-prepare-root.service) and under bootkit's
# own busybox /init alike. Afterwards the same path holds:
#   /          the deployment /bootkit/deploy/<os>/deploy/<id> (bind mount)
#   /usr       the deployment's usr, read-only
#   /etc       the deployment's own etc, writable
#   /var       /bootkit/deploy/<os>/var, shared by the deployments of <os>
#   /sysroot   the physical root filesystem, read-only
# The physical root mount stays underneath, hidden: systemd's initrd and
# switch_root both switch into /sysroot and find the deployment there.
#
# On any failure it prints one line starting with "bootkit:" on stderr, undoes
# its own mounts and exits 1; it mounts nothing before the name is validated.
#
# BOOTKIT_SYSROOT and BOOTKIT_CMDLINE override /sysroot and /proc/cmdline
# (for tests).

set -u
set -f

sysroot=${BOOTKIT_SYSROOT:-/sysroot}
cmdline_file=${BOOTKIT_CMDLINE:-/proc/cmdline}
previous="choose the previous entry in the boot menu"
# Mount targets made so far, newest first, one per line.
mounted=""

fail() {
    undo_mounts
    echo "bootkit: $1" >&2
    exit 1
}

undo_mounts() {
    saved_ifs=$IFS
    IFS='
'
    for target in $mounted; do
        umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null
    done
    IFS=$saved_ifs
    mounted=""
}

# The stateroot and deployment name rule, the same as bootkit's
# [A-Za-z0-9][A-Za-z0-9._-]{0,63}; ranges spelled out so no locale widens them.
valid_name() {
    case $1 in
        *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-]*)
            return 1 ;;
        [ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789]*)
            [ "${#1}" -le 64 ] ;;
        *)
            return 1 ;;
    esac
}

# A directory on the physical root that must exist and must not be a symlink,
# so the path we mount is the path we validated.
require_dir() {
    if [ -L "$1" ]; then
        fail "${1#"$sysroot"} is a symbolic link, refusing to boot through it; $previous"
    fi
    if [ ! -d "$1" ]; then
        fail "$2; $previous"
    fi
}

# A mount point inside the deployment: a real directory, made if missing.
require_mountpoint() {
    if [ -L "$1" ]; then
        fail "${1#"$sysroot"} is a symbolic link, refusing to mount over it; $previous"
    fi
    if [ ! -e "$1" ] && ! mkdir "$1" 2>/dev/null; then
        fail "cannot create ${1#"$sysroot"} in the deployment; $previous"
    fi
    if [ ! -d "$1" ]; then
        fail "${1#"$sysroot"} is not a directory; $previous"
    fi
}

record_mount() {
    mounted="$1
$mounted"
}

# 1. Exactly one well-formed bootkit= on the command line.
cmdline=""
if ! read -r cmdline <"$cmdline_file" && [ -z "$cmdline" ]; then
    fail "cannot read the kernel command line from $cmdline_file; $previous"
fi
value=""
count=0
for arg in $cmdline; do
    case $arg in
        --) break ;;
        bootkit) count=$((count + 1)); value="" ;;
        bootkit=*) count=$((count + 1)); value=${arg#bootkit=} ;;
    esac
done
if [ "$count" -eq 0 ]; then
    fail "no bootkit= on the kernel command line, so no deployment to boot; choose a bootkit entry in the boot menu"
fi
if [ "$count" -gt 1 ]; then
    fail "bootkit= appears $count times on the kernel command line, which deployment is meant is ambiguous; $previous"
fi
if [ -z "$value" ]; then
    fail "bootkit= is empty, it must name a deployment as /bootkit/deploy/<os>/deploy/<id>; $previous"
fi

rest=${value#/bootkit/deploy/}
os=${rest%%/*}
id=${rest#"$os"/deploy/}
if [ "$rest" = "$value" ] || [ "$id" = "$rest" ]; then
    fail "bootkit=$value is not of the form /bootkit/deploy/<os>/deploy/<id>; $previous"
fi
if ! valid_name "$os" || ! valid_name "$id"; then
    fail "bootkit=$value names an invalid stateroot or deployment (allowed: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit); $previous"
fi

# 2. The path exists, component by component, without symbolic links.
stateroot=$sysroot/bootkit/deploy/$os
deployment=$stateroot/deploy/$id
require_dir "$sysroot/bootkit" "no /bootkit on the root filesystem, is root= the right filesystem?"
require_dir "$sysroot/bootkit/deploy" "no /bootkit/deploy on the root filesystem, is root= the right filesystem?"
require_dir "$stateroot" "stateroot /bootkit/deploy/$os does not exist"
require_dir "$stateroot/deploy" "stateroot /bootkit/deploy/$os has no deployments"
require_dir "$deployment" "deployment $value does not exist"
require_dir "$deployment/usr" "deployment $value has no usr directory"
require_dir "$deployment/etc" "deployment $value has no etc directory"
require_mountpoint "$deployment/var"
require_mountpoint "$deployment/sysroot"
require_mountpoint "$stateroot/var"

# bind_mount SOURCE TARGET WHAT: one recorded bind mount, or fail naming WHAT.
bind_mount() {
    mount --bind "$1" "$2" || fail "cannot bind-mount $3; $previous"
    record_mount "$2"
}

# read_only TARGET WHAT: turn an existing bind mount read-only, or fail naming WHAT.
read_only() {
    mount -o remount,bind,ro "$1" || fail "cannot make $2 read-only; $previous"
}

# 3. Build the new root under the deployment, then move it onto $sysroot.
# A mount can only be moved out of a parent that is not shared, and systemd
# makes every mount shared.
if ! mount --make-private "$sysroot" 2>/dev/null; then
    fail "cannot change the propagation of $sysroot, is the root filesystem mounted there?; $previous"
fi
bind_mount "$deployment" "$deployment" "deployment $value"
bind_mount "$deployment/usr" "$deployment/usr" "$value/usr"
read_only "$deployment/usr" "$value/usr"
bind_mount "$stateroot/var" "$deployment/var" "/bootkit/deploy/$os/var onto the deployment's /var"
bind_mount "$sysroot" "$deployment/sysroot" "the physical root onto the deployment's /sysroot"
read_only "$deployment/sysroot" "the deployment's /sysroot"
mount --move "$deployment" "$sysroot" ||
    fail "cannot move deployment $value onto $sysroot; $previous"

echo "bootkit: switching root to $value"
