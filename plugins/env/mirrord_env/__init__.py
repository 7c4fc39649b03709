"""mirrord plugin: remote environment variables."""
