"""Caching: keys, backends and the ``cached`` decorator."""
