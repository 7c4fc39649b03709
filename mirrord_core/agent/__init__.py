"""The agent: serves one target's environment, files, DNS and network to mirrord clients."""
