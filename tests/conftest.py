"""Shared hypothesis settings: property tests stay deterministic and fast on 2 cores."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "structconv",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("structconv")
