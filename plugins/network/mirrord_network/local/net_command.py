"""``mirrord net resolve NAME`` and ``mirrord net get URL``: the target's DNS and network."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import urllib.parse
from typing import Any

import h11

from mirrord_core.cli.target_options import command_parser, run_with_session
from mirrord_core.config import ResolvedConfig
from mirrord_core.plugin_manager import LoadedPlugins
from mirrord_core.session import Session
from mirrord_core.user_errors import UserError
from mirrord_network.local.remote_network import connect_tcp, resolve


class RemoteNetworkError(UserError):
    """A name or connection failed in the target."""


def add_net_command(commands: Any) -> None:
    parser = commands.add_parser(
        "net", help="use the target's DNS and network", description="The target's network."
    )
    actions = parser.add_subparsers(dest="net_action", metavar="ACTION", required=True)
    resolve_parser = command_parser(actions, "resolve", help="resolve a name as the target does")
    resolve_parser.add_argument("name", metavar="NAME")
    resolve_parser.set_defaults(handler=_resolve)
    get_parser = command_parser(
        actions, "get", help="HTTP GET a URL from the target (names resolved as there)"
    )
    get_parser.add_argument("url", metavar="URL", help="http://HOST[:PORT]/PATH")
    get_parser.add_argument("--include", action="store_true", help="print the headers")
    get_parser.set_defaults(handler=_get)


def _resolve(args: argparse.Namespace) -> int:
    async def work(session: Session, resolved: ResolvedConfig, loaded: LoadedPlugins) -> int:
        try:
            addresses = await resolve(session, args.name)
        except socket.gaierror as err:
            raise RemoteNetworkError(f"{args.name}: {err.strerror} (in the target)") from None
        for address in addresses:
            print(address)
        return 0

    return run_with_session(args, work)


async def _address_of(session: Session, host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return (await resolve(session, host, socket.AF_INET))[0]
    except (socket.gaierror, IndexError):
        raise RemoteNetworkError(f"{host}: name not found (in the target)") from None


def _get(args: argparse.Namespace) -> int:
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        raise RemoteNetworkError(f"{args.url}: only http://HOST[:PORT]/PATH URLs are supported")
    port = url.port or 80
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host_header = url.netloc

    async def work(session: Session, resolved: ResolvedConfig, loaded: LoadedPlugins) -> int:
        address = await _address_of(session, url.hostname or "")
        try:
            stream = await connect_tcp(session, address, port)
        except OSError as err:
            raise RemoteNetworkError(
                f"{url.hostname}:{port}: {err.strerror or err} (from the target)"
            ) from None
        client = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", host_header), ("User-Agent", "mirrord"), ("Connection", "close")],
        )
        async with stream:
            await stream.write(client.send(request) + client.send(h11.EndOfMessage()))
            status = 0
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.read())
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    if args.include:
                        print(
                            f"HTTP/{event.http_version.decode()} {status} {event.reason.decode()}"
                        )
                        for name, value in event.headers:
                            print(f"{name.decode()}: {value.decode()}")
                        print()
                elif isinstance(event, h11.Data):
                    sys.stdout.buffer.write(event.data)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        sys.stdout.buffer.flush()
        return 0 if 200 <= status < 400 else 22  # curl --fail's status for HTTP errors

    return run_with_session(args, work)
