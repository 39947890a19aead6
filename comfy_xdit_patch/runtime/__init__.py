"""Helper processes, the transport between them, weight sync and health: everything about running N processes."""
