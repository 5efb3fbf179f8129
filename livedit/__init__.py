"""The application: the `livedit` entry point (one config, every package's commands) and the serving process."""
