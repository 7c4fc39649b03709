"""mirrord plugin: remote file system."""
