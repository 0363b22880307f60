# twisted/plugins must not contain an __init__.py (nor twisted/): Twisted finds plugins by
# scanning every twisted/plugins directory on sys.path, and a twisted/__init__.py here would
# shadow the real Twisted.  Keep this file free of imports beyond ServiceMaker: Twisted
# imports it during every `twistd` start and plugin scan, before --reactor takes effect.
from twisted.application.service import ServiceMaker

daggyd = ServiceMaker(
    "daggyd",
    "daggy.service.tap",
    "daggy's DAG work-orchestration daemon: submit, track and control DAG runs over HTTP",
    "daggyd",
)
