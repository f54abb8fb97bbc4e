"""The JSON records bootkit keeps on the physical root: the sysroot's
configuration, its state, and each deployment's metadata."""
