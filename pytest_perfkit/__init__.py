"""pytest plugin for perfkit: ``pytest --perf-budget``. Thin glue over :mod:`perfkit`."""
