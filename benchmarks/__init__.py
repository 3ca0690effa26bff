"""Side-by-side benchmarks of MethodPool against multiprocessing.Pool and its peers.

Run ``python -m benchmarks`` from the repository root (see ``benchmarks/README.md``).
This package imports nothing heavy: spawned and forkserver workers import
:mod:`benchmarks.workloads` to find the functions they run.
"""
