"""What the env plugin does inside ``mirrord run``."""
