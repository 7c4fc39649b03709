"""What the agent serves for the fs plugin."""
