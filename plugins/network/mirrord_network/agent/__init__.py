"""What the agent serves for the network plugin."""
