"""What the target plugin does inside ``mirrord run``."""
