"""A third-party mirrord plugin, as an outside author would write it (used by the tests)."""
