"""Loggers: the durable record of every run, task state change and attempt."""
