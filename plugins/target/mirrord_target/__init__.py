"""mirrord plugin: targets and agent spawning."""
