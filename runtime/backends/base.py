"""The small contract every inference backend keeps: numpy batch in, first output out, no silent fallback."""

import abc

from lungedge.runtime.errors import BackendUnavailable


class Backend(abc.ABC):
    """One loaded model. ``run`` takes an (N, C, H, W) float32 batch and returns the first output as float32.

    Subclasses set ``input_name`` and ``output_names`` and raise BackendUnavailable when what they need
    (library, provider, GPU) is missing, rather than running somewhere else.
    """

    name = "backend"
    input_name = None
    output_names = ()

    @abc.abstractmethod
    def run(self, batch):
        """Run one batch; returns the first output as a float32 array."""

    def run_outputs(self, batch, names):
        """Run one batch; returns {name: float32 array} for ``names``. Backends that can fetch several outputs
        override this; the default serves the first output only and names what it cannot serve."""
        first = self.output_names[0] if self.output_names else None
        missing = [n for n in names if n != first]
        if missing:
            raise BackendUnavailable(f"the {self.name} backend cannot return outputs {missing}")
        return {first: self.run(batch)}

    def close(self):  # noqa: B027 - optional hook; backends holding nothing need not override it
        """Release what the backend holds (sessions, GPU memory); safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
