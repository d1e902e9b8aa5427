"""Command-line interface: each command loads the config, calls one stage function and prints."""
