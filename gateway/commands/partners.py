"""``gateway partners add|check|list``: onboarding a partner without hand-editing YAML.

The partners file (``GATEWAY_PARTNERS_FILE``) decides who may call the gateway, so a mistake in
it either locks a partner out or lets the wrong one in. ``add`` therefore builds the entry with
the loader's own model, writes the whole new file beside the old one, loads *that* with the
loader's own rules, and only then renames it over the old one: a file that would not start
``serve`` is never written. The other entries are kept as text, comments and all (PyYAML drops
comments when it rewrites a file, so ``add`` does not let it: it splices the new entry into the
text and checks that the result reads back as intended; only a file whose layout it cannot
splice, such as one in JSON/flow style, is rewritten whole, and then it says so).

Keys: ``--jwks`` takes what partners actually send: a JWKS, one JWK, a PEM public key or a PEM
certificate. PEM is converted to the JWK the token endpoint verifies with. A private key is
refused before it is parsed, and nothing here ever prints key material: errors name the
option and the problem, ``list`` shows how many keys and their ``kid``s.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import orjson
import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.commands.common import console, fail, one_line, settings_or_fail

if TYPE_CHECKING:
    from gateway.partners import Partner, PartnerDirectory

partners_app = typer.Typer(
    help="The partner network: onboard a partner (add), check the partners file (check), "
    "see who is in it (list). The file is GATEWAY_PARTNERS_FILE; serve reads it at start-up.",
    no_args_is_help=True,
)


class KindDefaults(NamedTuple):
    scopes: tuple[str, ...]
    purposes: tuple[str, ...]


# What each kind of partner gets unless told otherwise: what the demo network
# (examples/partners.yaml) gives it (tests/test_cli_partners.py holds the two together).
# The first purpose is the default one.
KIND_DEFAULTS: dict[str, KindDefaults] = {
    "shelter": KindDefaults(("system/*.cruds",), ("COC", "CAREMGT", "TREAT")),
    "legal-aid": KindDefaults(
        (
            "system/Patient.rs",
            "system/Organization.rs",
            "system/Consent.rs",
            "system/CarePlan.cruds",
            "system/ServiceRequest.cruds",
            "system/Task.cruds",
            "system/EpisodeOfCare.rs",
        ),
        ("HLEGAL", "COC"),
    ),
    "clinic": KindDefaults(
        (
            "system/Patient.cruds",
            "system/Organization.rs",
            "system/Consent.rs",
            "system/CarePlan.cruds",
            "system/ServiceRequest.cruds",
            "system/Task.cruds",
            "system/EpisodeOfCare.cruds",
            "system/Provenance.rs",
        ),
        ("TREAT", "COC", "CAREMGT"),
    ),
    "hospital": KindDefaults(
        (
            "system/Patient.cruds",
            "system/Organization.rs",
            "system/Consent.cruds",
            "system/CarePlan.cruds",
            "system/ServiceRequest.cruds",
            "system/Task.cruds",
            "system/EpisodeOfCare.rs",
            "system/Subscription.cruds",
        ),
        ("TREAT", "ETREAT", "BTG", "COC"),
    ),
    "compliance": KindDefaults(
        (
            "system/AuditEvent.rs",
            "system/Consent.rs",
            "system/Patient.rs",
            "system/Organization.rs",
        ),
        ("HOPERAT", "HCOMPL"),
    ),
    "admin": KindDefaults(("system/*.cruds",), ("HSYSADMIN", "HOPERAT")),
}

# The command line's name for each field of an entry, so that a problem names what to fix.
OPTION_OF_FIELD = {
    "id": "ID",
    "name": "--name",
    "kind": "--kind",
    "organization": "--organization",
    "jwks": "--jwks",
    "jwks_url": "--jwks-url",
    "scopes": "--scopes",
    "purposes": "--purposes",
    "default_purpose": "--default-purpose",
    "endpoint": "--endpoint",
    "hl7_sending_facility": "--hl7-sending-facility",
    "hl7_peers": "--hl7-peers",
    "victim_service_provider": "--victim-service-provider",
}

MAX_KEY_FILE_BYTES = 256 * 1024
MAX_JWKS_BYTES = 64 * 1024  # what the token endpoint's JwksFetcher reads of a jwks_url
JWKS_TIMEOUT_SECONDS = 5.0

NEW_FILE_HEADER = (
    "# The partner network: who may call the gateway, with which keys, for what\n"
    "# (docs/partners.md). Add partners with `gateway partners add`, check the file with\n"
    "# `gateway partners check`.\n"
)
REWRITTEN_HEADER = (
    "# The partner network (docs/partners.md). Rewritten whole by `gateway partners add`:\n"
    "# its earlier layout could not be edited in place, so its comments were not kept.\n"
)


# -- add ------------------------------------------------------------------------------------------


@partners_app.command("add")
def partners_add(
    partner_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="The partner's id, also its OAuth client id: a-z, 0-9 and '-', at most 64.",
            show_default=False,
        ),
    ],
    kind: Annotated[
        str,
        typer.Option(
            help="shelter, legal-aid, clinic, hospital, compliance or admin: what the consent "
            "policy lets it see, and its default scopes and purposes.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str, typer.Option(help="The organization's name (its directory Organization).")
    ],
    jwks: Annotated[
        Path | None,
        typer.Option(
            "--jwks",
            metavar="FILE",
            help='The partner\'s public keys: a JWKS ({"keys": [...]}) or one JWK, as JSON; '
            "or a PEM public key (RSA >= 2048 bits or EC P-384) or PEM certificate, converted "
            "to a JWK (kid = RFC 7638 thumbprint, alg RS384/ES384). Never a private key.",
            dir_okay=False,
        ),
    ] = None,
    jwks_url: Annotated[
        str | None,
        typer.Option(
            "--jwks-url",
            metavar="URL",
            help="Where the partner publishes its JWKS instead (https; http only on loopback).",
        ),
    ] = None,
    scopes: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SCOPE",
            help="SMART system scopes, repeated or comma-separated (default: the kind's, as in "
            "examples/partners.yaml).",
            show_default=False,
        ),
    ] = None,
    purposes: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CODE",
            help="v3 PurposeOfUse codes it may act under, repeated or comma-separated "
            "(default: the kind's).",
            show_default=False,
        ),
    ] = None,
    default_purpose: Annotated[
        str | None,
        typer.Option(help="Its purpose when a token names none (default: the first purpose)."),
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(metavar="URL", help="Its FHIR endpoint, where pushes go.")
    ] = None,
    organization: Annotated[
        str | None,
        typer.Option(
            metavar="Organization/ID", help="Its directory Organization (default: Organization/ID)."
        ),
    ] = None,
    hl7_sending_facility: Annotated[
        str | None,
        typer.Option(help="The MSH-4 (or MSH-6) that names it in HL7 v2 messages."),
    ] = None,
    hl7_peers: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ADDRESS",
            help="IP addresses or networks its MLLP connections come from, repeated or "
            "comma-separated (without them the listener accepts none of its messages).",
            show_default=False,
        ),
    ] = None,
    victim_service_provider: Annotated[
        bool,
        typer.Option(
            "--victim-service-provider",
            help="A shelter that is a VAWA victim service provider (docs/hmis-csv.md).",
        ),
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Put this entry in place of an existing one with the same ID (all of it: "
            "fields not given here are not kept, nor comments inside the old entry).",
        ),
    ] = False,
) -> None:
    """Add a partner to the partners file (or replace one).

    The entry is checked by the loader's own rules and the whole new file is loaded before
    anything is written; the file is replaced atomically, keeping its permissions, the other
    entries and their comments (a file in JSON/flow style is rewritten whole, without
    comments, and the command says so). Restart serve to let the partner in."""
    from gateway.partners import PARTNER_KINDS

    settings = settings_or_fail()
    path = settings.partners_file
    if kind not in PARTNER_KINDS:
        raise fail(f"--kind must be one of {', '.join(PARTNER_KINDS)}")
    if (jwks is None) == (jwks_url is None):
        raise fail("give exactly one of --jwks FILE or --jwks-url URL")
    original, directory = _current(path)
    existing = directory.by_client_id(partner_id) if directory is not None else None
    if existing is not None and not replace:
        raise fail(
            f"a partner with id {partner_id} is already in {escape(str(path))} "
            "(--replace replaces it)"
        )

    defaults = KIND_DEFAULTS[kind]
    purposes_ = _listed(purposes) or list(defaults.purposes)
    entry: dict[str, Any] = {
        "id": partner_id,
        "name": name,
        "kind": kind,
        "organization": organization or f"Organization/{partner_id}",
    }
    if jwks is not None:
        entry["jwks"] = {"keys": _keys_from_file(jwks)}
    else:
        entry["jwks_url"] = jwks_url
    entry["scopes"] = _listed(scopes) or list(defaults.scopes)
    entry["purposes"] = purposes_
    entry["default_purpose"] = default_purpose or purposes_[0]
    optional = {
        "endpoint": endpoint,
        "hl7_sending_facility": hl7_sending_facility,
        "hl7_peers": _listed(hl7_peers) or None,
        "victim_service_provider": victim_service_provider or None,
    }
    entry.update({k: v for k, v in optional.items() if v is not None})
    _check_entry(entry)

    position = None
    if existing is not None and directory is not None:
        position = [p.id for p in directory].index(partner_id)
    text, kept = _new_text(original, entry, position)
    added = _write_checked(path, text, original)

    keys = f"{len(entry['jwks']['keys'])} key(s)" if "jwks" in entry else "keys from jwks_url"
    verb = "replaced" if existing is not None else "added"
    console.print(
        f"{verb} {partner_id} ({kind}, {keys}) in {escape(str(path))}: "
        f"{len(added)} partners; restart serve to let it in",
        highlight=False,
    )
    unnamed = sum(1 for k in entry.get("jwks", {}).get("keys", ()) if "kid" not in k)
    if unnamed:
        console.print(
            f"[yellow]note:[/yellow] {unnamed} key(s) have no kid: the partner's assertions "
            "must then carry no kid header"
        )
    if not kept:
        console.print(
            "[yellow]note:[/yellow] the file's layout could not be edited in place, so it was "
            "rewritten whole and its comments were not kept"
        )
    if not settings.demo and any(p.has_demo_placeholder for p in added):
        console.print(
            "[yellow]note:[/yellow] other partners still carry the demo key placeholder: serve "
            "starts on this file only in demo mode (gateway partners check)"
        )


def _listed(values: list[str] | None) -> list[str]:
    """Repeated options and comma- or space-separated lists alike."""
    return [part for value in values or () for part in re.split(r"[\s,]+", value) if part]


def _current(path: Path) -> tuple[bytes | None, PartnerDirectory | None]:
    """The file as it is (None when there is none yet) and its directory. A file that does not
    load is not edited: what else is wrong in it would be written back."""
    from gateway.partners import PartnersFileError, check_partners_file

    try:
        original = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise fail(f"cannot read the partners file: {one_line(exc)}") from exc
    try:
        directory = check_partners_file(path, allow_demo_placeholder=True)
    except PartnersFileError as exc:
        raise fail(
            f"the partners file does not load, so it is not edited: {_first(exc.problems)} "
            "(gateway partners check lists every problem)"
        ) from exc
    return original, directory


def _first(problems: list[str]) -> str:
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return escape(problems[0]) + more


def _keys_from_file(path: Path) -> list[dict[str, Any]]:
    """The public JWKs in a key file, whichever of the accepted formats it is in."""
    from gateway.partners import PRIVATE_JWK_MEMBERS, PrivateKeyGiven, jwks_from_pem

    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(f"--jwks: cannot read the key file: {one_line(exc)}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise fail(f"--jwks: the key file is larger than {MAX_KEY_FILE_BYTES} bytes")
    if data.lstrip().startswith((b"{", b"[")):
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise fail("--jwks: the key file is not valid JSON") from exc
        if isinstance(document, dict) and isinstance(document.get("keys"), list):
            keys: list[Any] = document["keys"]
        elif isinstance(document, dict) and "kty" in document:
            keys = [document]
        else:
            raise fail('--jwks: JSON must be a JWKS ({"keys": [...]}) or one JWK (with "kty")')
        if any(isinstance(k, dict) and PRIVATE_JWK_MEMBERS & set(k) for k in keys):
            raise fail(f"--jwks: {PrivateKeyGiven()}")
        return keys
    try:
        return jwks_from_pem(data)
    except PrivateKeyGiven as exc:
        raise fail(f"--jwks: {exc}") from None
    except ValueError as exc:
        if b"-----BEGIN" not in data:
            raise fail(
                "--jwks: the key file is neither JSON (a JWKS or a JWK) nor PEM (a public key "
                "or a certificate)"
            ) from None
        raise fail(f"--jwks: {escape(str(exc))}") from None


def _check_entry(entry: dict[str, Any]) -> None:
    """The loader's model on the entry alone, problems named by option."""
    from gateway.partners import partner_problems

    problems = partner_problems(entry)
    if problems:
        named = []
        for where, why in problems:
            field, _, rest = where.partition(".")
            field, bracket, index = field.partition("[")
            option = OPTION_OF_FIELD.get(field, field)
            named.append(f"{option}{bracket}{index}{'.' if rest else ''}{rest}: {why}")
        raise fail(escape("; ".join(named)))


# -- writing: splice the text, check the result, rename -------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style with list items indented under their key, as the example file writes them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(data: Any) -> str:
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
        width=4096,
    )  # fmt: skip


def _new_text(
    original: bytes | None, entry: dict[str, Any], position: int | None
) -> tuple[str, bool]:
    """The file's new text with ``entry`` appended (or at ``position``, replacing what is
    there), and whether the rest of the text was kept as it was."""
    if original is None:
        return NEW_FILE_HEADER + _dump({"partners": [entry]}), True
    text = original.decode("utf-8")
    data = yaml.safe_load(text)  # it loaded a moment ago, so this is its data
    partners = list(data["partners"])
    if position is None:
        partners.append(entry)
    else:
        partners[position] = entry
    spliced = _spliced(text, entry, position)
    if spliced is not None and yaml.safe_load(spliced) == {"partners": partners}:
        return spliced, True
    return REWRITTEN_HEADER + _dump({"partners": partners}), False


def _spliced(text: str, entry: dict[str, Any], position: int | None) -> str | None:
    """``text`` with ``entry`` written into its block-style partners list, every other byte as
    it was; None for a layout this cannot edit (the caller then rewrites the file whole)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        return None
    items = next(
        (v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "partners"),
        None,
    )
    if not isinstance(items, yaml.SequenceNode) or items.flow_style or not items.value:
        return None
    indent = " " * items.start_mark.column  # the column of its first "-"
    rendered = "\n".join(
        indent + line if line else line for line in _dump([entry]).rstrip("\n").split("\n")
    )
    if position is None:
        cut = _end_of_line(text, _content_end(items.value[-1]))
        # A blank line between entries, as in the example file, unless this list has none.
        spaced = len(items.value) == 1 or "\n\n" in text[items.start_mark.index : cut]
        tail = text[cut:] or "\n"
        return text[:cut] + ("\n\n" if spaced else "\n") + rendered + tail
    item = items.value[position]
    start = _dash_line_start(text, item.start_mark.index)
    if start is None:
        return None
    return text[:start] + rendered + text[_end_of_line(text, _content_end(item)) :]


def _content_end(node: yaml.Node) -> int:
    """Where a node's own text ends: its last scalar or flow collection (a block collection's
    end mark lies past the comments and blank lines that follow it)."""
    while True:
        if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
            node = node.value[-1][1]
        elif isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
            node = node.value[-1]
        else:
            return int(node.end_mark.index)


def _end_of_line(text: str, index: int) -> int:
    """The index of the line break that ends the line ``index`` is on (or just after)."""
    found = text.find("\n", max(index - 1, 0))
    return len(text) if found < 0 else found


def _dash_line_start(text: str, index: int) -> int | None:
    """The start of the line holding the "-" that opens the item whose first key is at
    ``index``; None when anything but blanks stands between them or before the dash."""
    at = index - 1
    while at >= 0 and text[at] in " \r\n":
        at -= 1
    if at < 0 or text[at] != "-":
        return None
    start = text.rfind("\n", 0, at) + 1
    return start if text[start:at].strip(" ") == "" else None


def _write_checked(path: Path, text: str, original: bytes | None) -> PartnerDirectory:
    """Write ``text`` beside ``path``, load it with the loader's rules, then rename it over
    ``path`` (same permissions). On any problem the temporary file goes and ``path`` is left
    byte for byte as it was."""
    from gateway.partners import PartnersFileError, check_partners_file

    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = target.stat()
        mode = stat.S_IMODE(info.st_mode)
    except FileNotFoundError:
        info = None
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o644 & ~umask
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temporary, mode)
        if info is not None:
            with contextlib.suppress(OSError):  # only root may give the file away
                os.chown(temporary, info.st_uid, info.st_gid)
        try:
            directory = check_partners_file(temporary, allow_demo_placeholder=True)
        except PartnersFileError as exc:
            problems = [p.replace(str(temporary), str(path)) for p in exc.problems]
            raise fail(
                f"refused, {escape(str(path))} is unchanged: with this entry it would not "
                f"load: {_first(problems)}"
            ) from exc
        try:  # another add (or an editor) since this one read the file: its change would go
            now: bytes | None = target.read_bytes()
        except FileNotFoundError:
            now = None
        if now != original:
            raise fail(
                f"{escape(str(path))} changed while this ran, so it was left as it is: run again"
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the rename itself durable, where the OS allows
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return directory


# -- check ----------------------------------------------------------------------------------------


@partners_app.command("check")
def partners_check(
    online: Annotated[
        bool,
        typer.Option(
            "--online",
            help=f"Also fetch each jwks_url ({JWKS_TIMEOUT_SECONDS:.0f} s timeout) and warn of "
            "those that do not answer a valid JWKS (a warning, not a failure).",
        ),
    ] = False,
) -> None:
    """Check the partners file as serve would load it.

    The demo key placeholder passes only with GATEWAY_DEMO=true. Exit 0 printing "N partners,
    OK", or exit 1 with one line per problem: file:line: field: problem, never a value. No
    network unless --online."""
    from gateway.partners import PartnersFileError, check_partners_file

    settings = settings_or_fail()
    try:
        directory = check_partners_file(
            settings.partners_file, allow_demo_placeholder=settings.demo
        )
    except PartnersFileError as exc:
        for problem in exc.problems:
            console.print(problem, markup=False, highlight=False)
        raise typer.Exit(1) from exc
    if online:
        for index, partner in enumerate(directory):
            if partner.jwks_url is None:
                continue
            why = _jwks_url_problem(partner.jwks_url)
            if why is not None:
                console.print(
                    f"[yellow]warning:[/yellow] partners[{index}] {partner.id}: jwks_url "
                    f"{escape(why)}",
                    highlight=False,
                )
    typer.echo(f"{len(directory)} partners, OK")


def _jwks_url_problem(url: str) -> str | None:
    """Why ``url`` does not serve a key set the token endpoint could use, or None. Read as the
    token endpoint reads it: no redirects, at most ``MAX_JWKS_BYTES``, the loader's key rules."""
    import httpx
    from pydantic import ValidationError

    from gateway.partners import Jwks

    try:
        with (
            httpx.Client(timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                return f"answered HTTP {response.status_code}, not a JWKS"
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    return f"answered more than {MAX_JWKS_BYTES} bytes"
    except httpx.TimeoutException:
        return f"did not answer within {JWKS_TIMEOUT_SECONDS:.0f} s"
    except httpx.HTTPError as exc:
        return f"did not answer ({type(exc).__name__})"
    try:
        document = orjson.loads(body)
        if not isinstance(document, dict):
            return "did not answer a JWKS (a JSON object with keys)"
        Jwks.model_validate({"keys": document.get("keys")})
    except orjson.JSONDecodeError:
        return "did not answer JSON"
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        why = str(first.get("msg", "")).removeprefix("Value error, ")
        return f"did not answer a valid JWKS ({why})"
    return None


# -- list -----------------------------------------------------------------------------------------


@partners_app.command("list")
def partners_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON on stdout, for machines, instead of a table.")
    ] = False,
) -> None:
    """Who is in the partners file.

    Id, name, kind, organization, where its keys come from, whether it has an endpoint, its
    HL7 facility. Never key material (--json adds each key's
    kid, its thumbprint)."""
    from gateway.partners import PartnersFileError, check_partners_file

    settings = settings_or_fail()
    try:
        directory = check_partners_file(settings.partners_file, allow_demo_placeholder=True)
    except PartnersFileError as exc:
        raise fail(
            f"the partners file does not load: {_first(exc.problems)} (gateway partners check)"
        ) from exc
    if as_json:
        rows = [_summary(partner) for partner in directory]
        typer.echo(orjson.dumps({"partners": rows}, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("id", "name", "kind", "organization", "keys", "endpoint", "HL7 facility")
    for partner in directory:
        table.add_row(
            partner.id,
            escape(partner.name),
            partner.kind,
            partner.organization,
            _key_source(partner),
            "yes" if partner.endpoint else "no",
            partner.hl7_sending_facility or "",
        )
    # Piped (not a terminal), rich would fold the table into 80 columns and cut ids short.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    Console(width=240 if wide else None).print(table)


def _key_source(partner: Partner) -> str:
    if partner.has_demo_placeholder:
        return "demo keys"
    if partner.jwks_url is not None:
        return f"url {escape(partner.jwks_url)}"
    count = len(partner.inline_keys)
    return f"jwks with {count} key{'' if count == 1 else 's'}"


def _summary(partner: Partner) -> dict[str, Any]:
    """A partner for machines: everything in its entry but the keys themselves."""
    if partner.has_demo_placeholder:
        source = "demo"
    elif partner.jwks_url is not None:
        source = "jwks_url"
    else:
        source = "jwks"
    return {
        "id": partner.id,
        "name": partner.name,
        "kind": partner.kind,
        "organization": partner.organization,
        "key_source": source,
        "keys": len(partner.inline_keys) if source == "jwks" else None,
        "kids": [k.get("kid") for k in partner.inline_keys],
        "jwks_url": partner.jwks_url,
        "endpoint": partner.endpoint,
        "hl7_sending_facility": partner.hl7_sending_facility,
        "hl7_peers": partner.hl7_peers,
        "victim_service_provider": partner.victim_service_provider,
        "scopes": partner.scopes,
        "purposes": partner.purposes,
        "default_purpose": partner.default_purpose,
    }
