"""What the fs plugin does inside ``mirrord run``."""
