"""Confidence intervals for pass rates.

A pass rate from 4 probes says little: 4/4 is consistent with a true rate of
51%. Every pass rate persona reports comes with the Wilson score interval
(Wilson 1927), which, unlike the normal approximation, stays inside [0, 1] and
behaves at 0/n and n/n, the usual outcomes on a handful of probes.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(passed: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``passed`` successes in ``total`` trials (95% by default)."""
    if total <= 0:
        raise ValueError("total must be positive")
    if not 0 <= passed <= total:
        raise ValueError(f"passed must be between 0 and {total}, got {passed}")
    p = passed / total
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    low = 0.0 if passed == 0 else max(0.0, centre - half)
    high = 1.0 if passed == total else min(1.0, centre + half)
    return low, high


def format_rate(passed: int, total: int) -> str:
    """``"9/12 75% [47-91%]"``: the count, the rate and its 95% Wilson interval."""
    if total <= 0:
        return "-"
    low, high = wilson_interval(passed, total)
    return f"{passed}/{total} {passed / total:.0%} [{low:.0%}-{high:.0%}]"
