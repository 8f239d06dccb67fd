"""lungedge.benchmarks: compressed variants against their baseline, on the same images, in the same run.

Entry points: ``lungedge bench`` (``cli``; the Python API is ``bench.run_bench``), ``lungedge bench scaling``
(``scaling``), ``lungedge bench report`` / ``benchmarks/make_benchmarks_md.py`` (BENCHMARKS.md) and
``lungedge demo`` (``demo``). Pure-numpy scoring lives in ``metrics`` and ``stats``; ``latency``, ``memory``,
``macs`` and ``tegrastats`` measure; ``accuracy`` judges; ``report`` and ``plots`` write. Only the torch baseline
(``runners.TorchRunner``), the demo's training and MAC counting of a torch model import torch, lazily.
"""
