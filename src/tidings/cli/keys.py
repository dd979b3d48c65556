"""`tidings keys`: VAPID key pairs, the service's token keys (and their rotation), TLS pairs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import click

from tidings.webpush import InvalidKeyError, VapidKey


@click.group()
def keys() -> None:
    """Create and inspect keys."""


def _write_private(path: Path, pem: bytes, *, force: bool) -> None:
    """Write `pem` readable by the owner only (0600); never clobber unless `force`."""
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise click.ClickException(
                f"{path} already exists; pass --force to replace it"
            ) from None
        except OSError as exc:
            raise click.ClickException(f"cannot create {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return
    # --force: write a fresh 0600 file beside the old one, then swap it in atomically.
    directory = path.parent if str(path.parent) else Path()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)  # mode 0600
    except OSError as exc:
        raise click.ClickException(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None


@keys.command()
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the private key here as PEM, mode 0600 (refuses to overwrite).",
)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def generate(out: Path | None, force: bool) -> None:
    """Create a VAPID key pair.

    With --out, the private key goes to FILE (PKCS#8 PEM, mode 0600) and the public
    key (base64url, the browser's applicationServerKey) is printed on stdout.
    Without --out, the PEM is printed on stdout and the public key on stderr, so
    `tidings keys generate > key.pem` captures only the key (mind the file mode).
    """
    key = VapidKey.generate()
    pem = key.to_pem()
    if out is None:
        click.echo(pem.decode("ascii"), nl=False)
        click.echo(f"public key (applicationServerKey): {key.public_key_b64}", err=True)
        return
    _write_private(out, pem, force=force)
    click.echo(key.public_key_b64)


@keys.command()
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The token key file to create (JSON, mode 0600; refuses to overwrite).",
)
def token(out: Path) -> None:
    """Create the service's token key file (what `tidings serve --secrets` reads).

    One node makes its own on first start. Nodes that share a PostgreSQL store must
    share one file: create it once with this command and give every node a copy.
    """
    from tidings.service.keyfile import write_keys
    from tidings.service.tokens import TokenSealer

    if out.exists():
        raise click.ClickException(f"{out} already exists; keep it (endpoints depend on it)")
    write_keys(out, {1: TokenSealer.new_key()}, 1)
    click.echo(f"token keys: {out} (mode 0600); give every node this same file")


@keys.command()
@click.option(
    "--secrets",
    "path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The token key file (what `tidings serve --secrets` reads).",
)
@click.option(
    "--stage",
    is_flag=True,
    help="Add the new key without sealing with it yet (first step on a cluster: give "
    "every node the file, restart them, then run `rotate --activate`).",
)
@click.option(
    "--activate",
    is_flag=True,
    help="Seal with the newest key held (the staged one); adds no key.",
)
def rotate(path: Path, stage: bool, activate: bool) -> None:
    """Add a new token key and seal new tokens with it; older keys still open theirs.

    Endpoints already handed out keep working (every key in the file opens tokens);
    new endpoints and message URLs are sealed with the new key once the service is
    restarted. Keep the old keys: browsers hold their endpoints for years.
    """
    from tidings.service.keyfile import KeyFileError, fingerprint, read_keys, write_keys
    from tidings.service.tokens import TokenSealer

    if stage and activate:
        raise click.UsageError("--stage and --activate go in two separate steps")
    try:
        held, current = read_keys(path)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    if activate:
        newest = max(held)
        if newest == current:
            raise click.ClickException(f"key {current} is already the one that seals")
        current = newest
    else:
        if max(held) >= 255:
            raise click.ClickException("the key file holds key id 255 already; no ids left")
        new_id = max(held) + 1
        held[new_id] = TokenSealer.new_key()
        if not stage:
            current = new_id
    write_keys(path, held, current)
    for key_id, key in sorted(held.items()):
        role = "seals and opens" if key_id == current else "opens"
        click.echo(f"key {key_id}: {fingerprint(key)} ({role})")
    click.echo("restart the service (every node) to use it")


@keys.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def show(file: Path) -> None:
    """Print the public key (base64url applicationServerKey) of a VAPID private key FILE.

    FILE may be PEM (PKCS#8 or SEC 1), or what py-vapid and web-push write:
    base64url DER or a base64url raw 32-byte private key.
    """
    try:
        key = VapidKey.from_file(file)
    except InvalidKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key.public_key_b64)


@keys.command()
@click.option(
    "--cert",
    "cert_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tidings-cert.pem"),
    show_default=True,
    help="Where to write the certificate (PEM).",
)
@click.option(
    "--key",
    "key_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tidings-key.pem"),
    show_default=True,
    help="Where to write the private key (PEM, mode 0600).",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A name or address the certificate is for (repeatable). [default: localhost, 127.0.0.1]",
)
@click.option("--days", type=int, default=365, show_default=True, help="Validity.")
@click.option("--force", is_flag=True, help="Replace existing files.")
def tls(cert_out: Path, key_out: Path, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Make a self-signed TLS key and certificate for local use.

    Then: tidings serve --tls-cert tidings-cert.pem --tls-key tidings-key.pem
    (HTTPS, WSS and HTTP/2 by ALPN on one port). Clients must be told to trust the
    certificate; for production use a certificate from a real authority.
    """
    from tidings.service.tls import self_signed

    cert_pem, key_pem = self_signed(list(hosts) or ["localhost", "127.0.0.1"], days=days)
    _write_private(key_out, key_pem, force=force)
    if cert_out.exists() and not force:
        raise click.ClickException(f"{cert_out} already exists; pass --force to replace it")
    cert_out.write_bytes(cert_pem)
    click.echo(f"certificate: {cert_out}\nprivate key: {key_out} (mode 0600)")
