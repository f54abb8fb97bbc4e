"""Unified Kernel Images, Authenticode signatures and Secure Boot keys."""
