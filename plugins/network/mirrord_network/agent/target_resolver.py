"""Resolving names exactly as the target does: its hosts file, then its DNS servers.

The agent reads the target's ``/etc/hosts`` and ``/etc/resolv.conf`` (confined to the
target's root) and sends its queries from the target's network namespace, so cluster
names (``api``, ``api.default.svc.cluster.local``) resolve through the pod's search
domains and cluster DNS.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable

import attrs
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rcode
import dns.resolver

from mirrord_core.linux.openat2 import open_in_root

MAX_CONFIG_FILE = 1 << 20


class NameNotFound(Exception):
    """The name does not resolve in the target (what getaddrinfo calls EAI_NONAME)."""


class ResolutionFailed(Exception):
    """The target's DNS did not answer (EAI_AGAIN): timeouts, unreachable servers."""


@attrs.frozen
class ResolvConf:
    """The parts of ``resolv.conf`` a stub resolver needs."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse ``resolv.conf`` as glibc does (last ``search``/``domain`` wins)."""
    nameservers: list[str] = []
    search: list[str] = []
    ndots, timeout, attempts = 1, 5.0, 2
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        keyword, args = words[0], words[1:]
        if keyword == "nameserver" and args:
            try:
                nameservers.append(str(ipaddress.ip_address(args[0].split("%")[0])))
            except ValueError:
                continue
        elif keyword in ("search", "domain"):
            search = [domain.rstrip(".") for domain in args]
        elif keyword == "options":
            for option in args:
                name, _, value = option.partition(":")
                if name == "ndots" and value.isdigit():
                    ndots = min(int(value), 15)
                elif name == "timeout" and value.isdigit():
                    timeout = float(max(int(value), 1))
                elif name == "attempts" and value.isdigit():
                    attempts = max(min(int(value), 5), 1)
    return ResolvConf(tuple(nameservers), tuple(search), ndots, timeout, attempts)


def parse_hosts(text: str) -> dict[str, list[str]]:
    """Map each lower-cased name (and alias) of a hosts file to its addresses, in order."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(words[0].split("%")[0]))
        except ValueError:
            continue
        for name in words[1:]:
            table.setdefault(name.lower().rstrip("."), []).append(address)
    return table


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _filter(addresses: Iterable[str], family: int) -> list[str]:
    return [a for a in addresses if family == socket.AF_UNSPEC or _family_of(a) == family]


def _all_refused(err: dns.resolver.NoNameservers) -> bool:
    errors = err.kwargs.get("errors") or []
    responses = [entry[4] for entry in errors if len(entry) > 4]
    return bool(responses) and all(
        response is not None and response.rcode() == dns.rcode.REFUSED for response in responses
    )


class TargetResolver:
    """Resolves names with the target's configuration; queries leave from the calling
    thread's network namespace (the agent has entered the target's)."""

    def __init__(self, root_fd: int, port: int = 53) -> None:
        self._root = root_fd
        self._port = port

    def _read(self, path: str) -> str:
        try:
            fd = open_in_root(self._root, path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return ""
        try:
            # O_NONBLOCK above: a FIFO planted as /etc/hosts must not hang the agent.
            return os.read(fd, MAX_CONFIG_FILE).decode("utf-8", "replace")
        except OSError:
            return ""
        finally:
            os.close(fd)

    async def resolve(self, name: str, family: int = socket.AF_UNSPEC) -> list[str]:
        """The addresses of ``name`` (``AF_INET``, ``AF_INET6`` or both), hosts file first."""
        name = name.strip()
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            return _filter([str(literal)], family)
        if not name or len(name) > 253:
            raise NameNotFound(name)
        hosts = parse_hosts(self._read("/etc/hosts")).get(name.lower().rstrip("."), [])
        if found := _filter(hosts, family):
            return found
        return await self._query(name, family, parse_resolv_conf(self._read("/etc/resolv.conf")))

    async def _query(self, name: str, family: int, conf: ResolvConf) -> list[str]:
        if not conf.nameservers:
            raise ResolutionFailed(f"the target has no nameserver configured for {name}")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(conf.nameservers)
        resolver.port = self._port
        resolver.search = [dns.name.from_text(domain) for domain in conf.search]
        resolver.use_search_by_default = True
        resolver.ndots = conf.ndots
        resolver.timeout = conf.timeout
        resolver.lifetime = conf.timeout * conf.attempts
        try:
            answer = await resolver.resolve_name(name, family=family)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            raise NameNotFound(name) from None
        except dns.exception.Timeout:
            raise ResolutionFailed(f"the target's DNS did not answer for {name}") from None
        except dns.resolver.NoNameservers as err:
            if _all_refused(err):
                # A cluster DNS without upstream refuses names outside its zones: for the
                # application that is "no such name", as glibc reports it.
                raise NameNotFound(name) from None
            raise ResolutionFailed(f"the target's DNS failed for {name}: {err}") from None
        except dns.exception.DNSException as err:
            raise NameNotFound(f"{name}: {err}") from None
        return list(answer.addresses())
