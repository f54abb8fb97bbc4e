"""File formats bootkit reads and writes (BLS entries, GRUB script and grubenv, GPT,
DER, EFI variable stores and signature lists, bzImage headers, os-release), declared without any
knowledge of a sysroot. They import nothing of bootkit but its errors."""
