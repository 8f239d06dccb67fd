"""lungedge.cli: the top layer, the ``lungedge`` entry point and the demo.

It imports every layer below it, each lazily and only for the subcommand that needs it, so a runtime-only install
(a Jetson, a CPU box) runs ``lungedge infer`` without torch and gets a clear message for ``lungedge train``.
"""
