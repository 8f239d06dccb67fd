"""Errors of lungedge.metrics: both are ``ValueError``s and ``LungedgeError``s, and name the bad input."""

from lungedge.runtime.errors import LungedgeError


class MetricError(LungedgeError, ValueError):
    """Inputs a metric cannot use: mismatched shapes, non-binary labels or masks, NaN scores, no cases."""


class UndefinedMetricError(MetricError):
    """The metric has no meaning on these data, e.g. an AUC when y_true holds a single class."""
