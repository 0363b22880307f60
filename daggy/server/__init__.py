"""daggyd's HTTP API: a Klein app (L{daggy.server.api.DaggyAPI}) and the Site that serves it.

Importing L{daggy.server.api} imports Klein, which imports the global reactor; entry points
must install their reactor before importing it (see twisted/plugins/ and daggy/service/).
"""
