"""Linux system calls Python 3.11 does not wrap, called through ctypes."""
