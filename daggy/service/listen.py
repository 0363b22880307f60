# -*- test-case-name: tests.unit.test_config -*-
"""Where daggyd listens: the ``listen`` endpoint string, and which addresses are exposed.

``listen`` takes a Twisted server endpoint string (``tcp:``, ``tcp6:``, ``ssl:`` or
``unix:``).  :func:`check_listen` parses it with Twisted's quoting rules, checks each option
and builds the endpoint once, which loads an ``ssl:`` certificate and key, so a mistake is
a one-line config error at start.  :func:`exposure` says whether an address can be reached
from other machines; the config refuses such an address without authentication.

Twisted is imported only inside :func:`check_listen`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: The options each endpoint type accepts.  ``sslmethod`` is left out on purpose (Twisted's
#: default TLS settings are the safe ones), and so is ``dhParameters``, whose file Twisted
#: reads only when the first client connects (the ECDHE ciphers need none).
_OPTIONS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "ssl": ("port", "interface", "backlog", "privateKey", "certKey", "extraCertChain"),
    "unix": ("address", "mode", "lockfile", "backlog"),
}
#: What an empty (or missing) ``interface`` means for each TCP type.
_ALL_INTERFACES = {"tcp": "0.0.0.0", "ssl": "0.0.0.0", "tcp6": "::"}


@dataclass(frozen=True)
class ListenTarget:
    """A parsed ``listen`` string."""

    kind: str
    #: The TCP interface (``"0.0.0.0"``/``"::"`` when the string names none); the socket
    #: path for ``unix``.
    address: str
    #: ``None`` for ``unix``.
    port: int | None
    #: ``(privateKey, certKey)`` file names for ``ssl``.
    tls_files: tuple[str, str] | None = None

    @property
    def tls(self) -> bool:
        return self.kind == "ssl"

    def exposure(self) -> str | None:
        """See :func:`exposure`; a unix socket is reachable only on this machine."""
        return None if self.kind == "unix" else exposure(self.address)


def exposure(interface: str) -> str | None:
    """``None`` when ``interface`` is a loopback address (``localhost``, ``127.0.0.0/8``,
    ``::1``), else how to name it in a message (``"0.0.0.0 (every IPv4 interface)"``)."""
    if interface == "localhost":
        return None
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return f"{interface} (not a loopback address)"
    if address.is_loopback:
        return None
    if address.is_unspecified:
        return f"{interface} (every IPv{address.version} interface)"
    return f"{interface} (not a loopback address)"


def parse_listen(description: str) -> ListenTarget:
    """Parse and check an endpoint string without touching any file.

    :raises ValueError: a one-line problem.
    """
    arguments, options = _split(description)
    if not arguments or not arguments[0]:
        raise ValueError(f"no endpoint type (expected one of: {', '.join(sorted(_OPTIONS))})")
    kind, *positional = arguments
    if kind not in _OPTIONS:
        raise ValueError(f"endpoint type {kind!r} is not supported "
                         f"(expected one of: {', '.join(sorted(_OPTIONS))})")
    names = _OPTIONS[kind]
    if len(positional) > 1:
        raise ValueError(f"{kind}: one positional value ({names[0]}) expected, "
                         f"got {len(positional)}; give the others as name=value")
    for name in options:
        if name not in names:
            raise ValueError(f"{kind}: unknown option {name!r} "
                             f"(expected one of: {', '.join(names)})")
    if positional:
        if names[0] in options:
            raise ValueError(f"{kind}: {names[0]} given twice")
        options[names[0]] = positional[0]
    if "backlog" in options:
        _integer(kind, "backlog", options["backlog"], 1, 65535)

    if kind == "unix":
        if not options.get("address"):
            raise ValueError("unix: needs a socket path, as in unix:/run/daggyd.sock")
        if "mode" in options:
            _integer(kind, "mode", options["mode"], 0, 0o777, base=8)
        if "lockfile" in options and options["lockfile"] not in ("0", "1"):
            raise ValueError(f"unix: lockfile must be 0 or 1 (got {options['lockfile']!r})")
        return ListenTarget(kind, options["address"], None)

    if "port" not in options:
        raise ValueError(f"{kind}: needs a port, as in {kind}:2503")
    port = _integer(kind, "port", options["port"], 1, 65535)
    interface = options.get("interface") or _ALL_INTERFACES[kind]
    if interface != "localhost":
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(f'{kind}: interface must be an IP address or "localhost" '
                             f"(got {interface!r})") from None
        if kind == "tcp6" and address.version != 6:
            raise ValueError(f"tcp6: interface must be an IPv6 address (got {interface!r})")
    if kind != "ssl":
        return ListenTarget(kind, interface, port)
    if not options.get("privateKey"):
        raise ValueError("ssl: needs privateKey=FILE (a PEM private key) and certKey=FILE "
                         "(its PEM certificate; may be left out when the key file holds it)")
    key_file = options["privateKey"]
    return ListenTarget(kind, interface, port, (key_file, options.get("certKey") or key_file))


def check_listen(description: str) -> tuple[ListenTarget | None, str | None]:
    """Parse ``description`` and build its endpoint once, loading any TLS files.

    :returns: ``(target, None)``, or ``(None, problem)`` with a one-line problem.
    """
    try:
        target = parse_listen(description)
    except ValueError as error:
        return None, str(error)
    if target.tls_files is not None:
        problem = _tls_files_problem(*target.tls_files)
        if problem is not None:
            return None, problem
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.error import VerifyError

    try:
        # The reactor is only stored by the endpoint, never used until it listens.
        serverFromString(None, description)
    except OSError as error:
        name = error.filename if error.filename is not None else "a file"
        return None, f"{target.kind}: cannot read {name}: {error.strerror or error}"
    except VerifyError:  # the only check left after _tls_files_problem's
        key_file, cert_file = target.tls_files or ("privateKey", "certKey")
        return None, (f"{target.kind}: the private key in {key_file} does not belong to the "
                      f"certificate in {cert_file}")
    except Exception as error:
        # What is left is an extraCertChain file without a certificate (ValueError) and
        # OpenSSL's own errors; the type of the error is part of what the user needs.
        return None, (f"{target.kind}: cannot use this endpoint: "
                      f"{type(error).__name__}: {_one_line(error)}")
    return target, None


def _tls_files_problem(key_file: str, cert_file: str) -> str | None:
    """Whether ``cert_file`` holds a PEM certificate and ``key_file`` a PEM private key,
    told apart (Twisted's own error for either is OpenSSL's, naming neither file)."""
    from OpenSSL.crypto import FILETYPE_PEM
    from twisted.internet.ssl import Certificate, KeyPair

    contents = {}
    for option, path in (("certKey", cert_file), ("privateKey", key_file)):
        try:
            with open(path, "rb") as pem_file:
                contents[option] = pem_file.read()
        except OSError as error:
            return f"ssl: {option}: cannot read {path}: {error.strerror or error}"
    try:
        Certificate.loadPEM(contents["certKey"])
    except Exception as error:
        return f"ssl: certKey: {cert_file} holds no PEM certificate ({_openssl_reason(error)})"
    try:
        KeyPair.load(contents["privateKey"], FILETYPE_PEM)
    except Exception as error:
        return (f"ssl: privateKey: {key_file} holds no PEM private key "
                f"({_openssl_reason(error)})")
    return None


def _openssl_reason(error: Exception) -> str:
    """OpenSSL's reasons (its errors carry a list of (library, function, reason))."""
    details = error.args[0] if error.args else None
    if isinstance(details, list) and all(isinstance(item, tuple) for item in details):
        reasons = [str(item[-1]) for item in details if item]
        if reasons:
            return "OpenSSL: " + "; ".join(reasons)
    return _one_line(error)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _integer(kind: str, name: str, text: str, low: int, high: int, base: int = 10) -> int:
    try:
        value = int(text, base)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        shown_low, shown_high = (f"{low:o}", f"{high:o}") if base == 8 else (low, high)
        kind_of = "an octal number" if base == 8 else "an integer"
        raise ValueError(f"{kind}: {name} must be {kind_of} from {shown_low} to {shown_high} "
                         f"(got {text!r})")
    return value


def _split(description: str) -> tuple[list[str], dict[str, str]]:
    """Positional values and ``name=value`` options of an endpoint string, by the rules of
    Twisted's ``serverFromString``: ``:`` separates, the first ``=`` of a part names an
    option, and a backslash makes the next character literal (``interface=\\:\\:1``)."""
    arguments: list[str] = []
    options: dict[str, str] = {}
    part: list[str] = []
    name: str | None = None
    characters = iter(description)

    def finish() -> None:
        if name is None:
            arguments.append("".join(part))
        elif name in options:
            raise ValueError(f"option {name!r} given twice")
        else:
            options[name] = "".join(part)

    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise ValueError("ends with a lone backslash")
            part.append(escaped)
        elif character == ":":
            finish()
            part, name = [], None
        elif character == "=" and name is None:
            name, part = "".join(part), []
        else:
            part.append(character)
    finish()
    return arguments, options
