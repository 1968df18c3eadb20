"""Benchmarks: the gateway against the bare tools (gpg, sftp, a bash loop), in one run.

`python -m bench.run [--quick] [--json FILE]`; the method and the latest figures are in
docs/performance.md. A benchmark prints; it never asserts.
"""
