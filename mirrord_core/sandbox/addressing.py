"""The sandbox's address plan: which CIDR, and which address is what inside it.

Layout of a pod CIDR (e.g. 10.244.0.0/24):

- network + 1: the bridge in the node namespace, every pod's default gateway;
- network + 2: the DNS server (dnsmasq);
- network + 10 onwards (network + 3 in CIDRs too small for that): the pods.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import SandboxError

DEFAULT_CIDR_POOL = ipaddress.IPv4Network("10.244.0.0/16")
DEFAULT_PREFIX = 24


@dataclass(frozen=True)
class AddressPlan:
    """Addresses of one sandbox, all inside `cidr`."""

    cidr: ipaddress.IPv4Network

    def __post_init__(self) -> None:
        if self.cidr.prefixlen > 29:
            raise SandboxError(f"pod CIDR {self.cidr} is too small: use a /29 or larger")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address in the node namespace."""
        return self.cidr.network_address + 1

    @property
    def dns(self) -> ipaddress.IPv4Address:
        """The DNS server's address."""
        return self.cidr.network_address + 2

    def interface(self, address: ipaddress.IPv4Address) -> ipaddress.IPv4Interface:
        """`address` with the CIDR's prefix length, as assigned to an interface."""
        return ipaddress.IPv4Interface(f"{address}/{self.cidr.prefixlen}")

    def pod_addresses(
        self, requested: Sequence[ipaddress.IPv4Address | None]
    ) -> list[ipaddress.IPv4Address]:
        """Assign an address to each pod, honouring explicitly requested ones."""
        reserved = {self.cidr.network_address, self.cidr.broadcast_address, self.gateway, self.dns}
        taken: set[ipaddress.IPv4Address] = set()
        for address in requested:
            if address is None:
                continue
            if address not in self.cidr or address in reserved:
                raise SandboxError(
                    f"pod address {address} is not a usable host address of {self.cidr} "
                    f"(.1 is the gateway, .2 the DNS server)"
                )
            if address in taken:
                raise SandboxError(f"pod address {address} is requested twice")
            taken.add(address)
        first = 10 if self.cidr.num_addresses >= 64 else 3
        free = (
            a
            for a in self.cidr.hosts()
            if int(a) - int(self.cidr.network_address) >= first
            and a not in taken
            and a not in reserved
        )
        result = []
        for address in requested:
            if address is None:
                address = next(free, None)
                if address is None:
                    raise SandboxError(
                        f"pod CIDR {self.cidr} has no room for {len(requested)} pods"
                    )
            result.append(address)
        return result


def allocate_cidr(
    unavailable: Iterable[ipaddress.IPv4Network],
    pool: ipaddress.IPv4Network = DEFAULT_CIDR_POOL,
    prefix: int = DEFAULT_PREFIX,
) -> ipaddress.IPv4Network:
    """The first /`prefix` of `pool` overlapping nothing in `unavailable`.

    Giving every live sandbox its own CIDR keeps their host routes apart, so
    sandboxes of parallel test runs never share (and never remove) each
    other's unreachable route.
    """
    blocked = list(unavailable)
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(other) for other in blocked):
            return candidate
    raise SandboxError(f"no free /{prefix} left in {pool}; tear down old sandboxes")
