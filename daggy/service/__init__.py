"""The daemon wiring: config file, service tree, ``twistd daggyd`` and the ``daggyd`` script."""
