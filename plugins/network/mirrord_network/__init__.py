"""mirrord plugin: incoming and outgoing traffic and DNS."""
