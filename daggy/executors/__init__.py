"""Task executors: they start one attempt of a task and report how it ended."""
