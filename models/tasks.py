"""The task specs live in the runtime (``lungedge.runtime.tasks``, torch-free); kept here for existing imports."""

from lungedge.runtime.tasks import IGNORE, TASKS, TaskSpec, task

__all__ = ["IGNORE", "TASKS", "TaskSpec", "task"]
