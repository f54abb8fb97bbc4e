"""$BOOT: kernels and initramfs images (payloads), one BLS entry per deployment,
the atomic switch between generations, boot counting, and one backend per
bootloader behind one small protocol."""
