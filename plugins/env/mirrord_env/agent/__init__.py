"""What the agent serves for the env plugin."""
