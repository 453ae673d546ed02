"""The command line: parses flags, calls the core, renders. Nothing here is imported by the core."""
