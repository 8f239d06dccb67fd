"""The ``lungedge`` command: one entry point over every layer, imported lazily per subcommand and extra.

``infer`` and ``selftest`` (and ``export triton``) are the runtime's own and need no torch; the other subcommands
live in the package that owns them and are imported only when invoked. Each such module exposes ``main(argv)``
where ``argv`` starts with the subcommand name.

Exit status: 0 success; 1 some input failed (infer) or the self-test failed; 2 nothing could run (bad bundle,
missing backend, missing extra, usage error). An input refused by quality control is "not assessed": an outcome,
counted apart from errors, not a failure.
"""

import importlib
import sys

# Subcommands owned by a package other than the runtime's CLI: name -> module (imported only when invoked).
EXTERNAL_COMMANDS = {
    "train": "lungedge.models.train",
    "compress": "lungedge.compress.cli",
    "engine": "lungedge.compress.cli",
    "export": "lungedge.compress.cli",
    "bench": "lungedge.benchmarks.cli",
    "demo": "lungedge.cli.demo",
    "serve": "lungedge.runtime.service",
    "dicom-node": "lungedge.runtime.dicom_node.cli",
}
# `lungedge export triton` needs no torch, so it stays on the runtime side (other exports need compress).
TORCH_FREE_EXPORTS = {"triton": "lungedge.runtime.triton"}
# The extra that installs each subcommand's dependencies (the ones not named here are the runtime's own).
COMMAND_EXTRA = {"dicom-node": "dicom-node", "serve": None}
# Top-level modules that only the compress extra installs.
COMPRESS_EXTRA_MODULES = ("torch", "torchvision", "torch_pruning", "onnx", "onnxscript", "matplotlib")
# Top-level modules that only the dicom-node extra installs.
DICOM_NODE_EXTRA_MODULES = ("pynetdicom", "highdicom")


def version():
    """Installed lungedge version ("unknown" when running from an uninstalled tree)."""
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "unknown"
    try:
        return dist_version("lungedge")
    except PackageNotFoundError:
        return "unknown"


def run_external(argv):
    """Import the module that owns ``argv[0]`` and hand it the full argv; 2 when its extra is missing."""
    command, module_name = argv[0], EXTERNAL_COMMANDS[argv[0]]
    if command == "export" and len(argv) > 1 and argv[1] in TORCH_FREE_EXPORTS:
        module_name = TORCH_FREE_EXPORTS[argv[1]]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in COMPRESS_EXTRA_MODULES:
            print(f"lungedge {command} needs the compress extra: pip install 'lungedge[compress]' "
                  f"({missing} is not installed)", file=sys.stderr)
            return 2
        if missing in DICOM_NODE_EXTRA_MODULES:
            print(f"lungedge {command} needs the dicom-node extra: pip install 'lungedge[dicom-node]' "
                  f"({missing} is not installed)", file=sys.stderr)
            return 2
        if exc.name and module_name.startswith(exc.name):
            print(f"lungedge {command} is not available: {module_name} is not part of this installation",
                  file=sys.stderr)
            return 2
        raise
    return module.main(argv)


def _help_lines():
    lines = {}
    for name, module in EXTERNAL_COMMANDS.items():
        extra = COMMAND_EXTRA.get(name, "compress")
        lines[name] = f"(from {module}" + (f"; needs the {extra} extra)" if extra else ")")
    return lines


def main(argv=None):
    """Entry point of the ``lungedge`` console script; returns the exit status."""
    from lungedge.runtime import cli as runtime_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTERNAL_COMMANDS:
        return run_external(argv)
    args = runtime_cli.build_parser(extra_commands=_help_lines()).parse_args(argv)
    if args.version:
        print(f"lungedge {version()}")
        return 0
    return runtime_cli.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
