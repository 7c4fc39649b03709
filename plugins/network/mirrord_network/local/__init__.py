"""What the network plugin does inside ``mirrord run``."""
