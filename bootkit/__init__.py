"""bootkit: the boot-time half of an atomic Linux system."""

__version__ = "0.1.0"
