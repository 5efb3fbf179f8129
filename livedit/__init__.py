"""The application: the `livedit` command line, which wires the assistant and the updater together."""
