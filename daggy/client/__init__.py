"""``daggyc``, the command-line client of daggyd (see docs/client.md).

A synchronous HTTP client (httpx) and a click CLI with rich output.  Nothing here imports
the Twisted reactor: ``daggyc validate`` checks specs offline with the daemon's own spec
parser and executor job checks (:mod:`daggy.client.offline`).
"""
