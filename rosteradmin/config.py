# -*- test-case-name: tests.test_config -*-
"""
The configuration of rosteradmin: one frozen value whose fields declare the
settings.

Every setting is declared once, as a field of L{Config}: its annotation is
its type, its default the value when nobody sets it, and its metadata
(L{_about}) its help text and where else it may come from.  L{SETTINGS},
the table the command line (L{rosteradmin.options.Options}), the TOML file
and the configuration reference in C{docs/configuration.md} are derived
from, is read from those fields, so none of them can drift apart.

Values are merged in this order, later winning: defaults, the TOML file,
environment variables (secrets only), the command line.  Secrets may also be
read from a file (C{--secret-file}), which keeps them out of process listings
and unit files; systemd's C{LoadCredential=} hands them over that way.  A
relative C{<secret>_file} in the TOML file is read from the TOML file's
directory, whatever the working directory; on the command line it is
relative to the working directory, as usual.
"""

from __future__ import annotations

import collections.abc
import math
import os
import tomllib
from dataclasses import MISSING, Field, dataclass, field, fields
from types import NoneType, UnionType
from typing import Any, Callable, Mapping, cast, get_args, get_origin, get_type_hints

from twisted.words.protocols.jabber.jid import JID

from rosteradmin.roster import JID_ERRORS
from rosteradmin.stanzalimit import MIN_MAX_STANZA_BYTES
from rosteradmin.stanzas import roomNickname
from rosteradmin.state import isPostgreSQL


class ConfigError(Exception):
    """
    A setting is missing or invalid.  The message names the option.
    """


def _about(help: str, secret: bool = False, cli: bool = True) -> dict[str, Any]:
    """
    The metadata of a L{Config} field that makes it a setting.

    @param help: One line for C{--help} and the configuration reference.
    @param secret: Also read from C{--NAME-file} and C{ROSTERADMIN_NAME}.
    @param cli: Whether it is a command-line option (tables are TOML-only).
    """
    return {"help": help, "secret": secret, "cli": cli}


@dataclass(frozen=True, kw_only=True)
class Config:
    """
    The validated configuration of one rosteradmin service, and the one
    declaration of every setting, in the order C{--help} and the reference
    list them.  A field without a default is a required setting.
    """

    jid: str = field(metadata=_about("JID of the component, e.g. roster.example.org (required)"))
    secret: str = field(metadata=_about("component secret shared with the XMPP server (required)", secret=True))
    xmpp_host: str = field(default="127.0.0.1", metadata=_about("host of the XMPP server's component port"))
    xmpp_port: int = field(default=5347, metadata=_about("the XMPP server's component port (XEP-0114)"))
    domain: str = field(metadata=_about("the user domain whose rosters are managed, e.g. example.org (required)"))
    roster_url: str = field(metadata=_about("web app roster URL; %s is replaced by the URL-encoded username (required)"))
    http: str = field(default="tcp:5280:interface=127.0.0.1", metadata=_about("Twisted endpoint string the HTTP API listens on"))
    kick_authorization: str | None = field(default=None, metadata=_about("exact Authorization header value POST /muc_kick requires", secret=True))
    no_kick: bool = field(default=False, metadata=_about("disable POST /muc_kick (then no kick authorization is needed)"))
    refresh_authorization: str | None = field(default=None, metadata=_about("Authorization header value the refresh endpoints require (none: open)", secret=True))
    fetch_timeout: float = field(default=10.0, metadata=_about("seconds one roster fetch from the web app may take, retries included"))
    fetch_concurrency: int = field(default=64, metadata=_about("most roster fetches in flight at once"))
    max_roster_bytes: int = field(default=16 * 1024 * 1024, metadata=_about("largest web app roster reply accepted, in bytes"))
    max_body_bytes: int = field(default=1024 * 1024, metadata=_about("largest HTTP API request body accepted, in bytes (413 above)"))
    iq_timeout: float = field(default=10.0, metadata=_about("seconds to wait for the XMPP server to answer one IQ"))
    reconnect_max_delay: float = field(default=30.0, metadata=_about("longest pause between reconnection attempts, in seconds"))
    keepalive_interval: float = field(default=60.0, metadata=_about("seconds between whitespace keepalives on the component stream"))
    kick_nick: str = field(default="rosteradmin", metadata=_about("nickname the component joins a room under to kick from it"))
    stay_in_rooms: bool = field(default=False, metadata=_about("stay in a room after kicking from it (default: leave)"))
    max_stanza_bytes: int = field(default=512 * 1024, metadata=_about("largest stanza the XMPP server accepts from the component (Prosody's component_stanza_size_limit, default 512 KiB); bigger answers, writes and pushes are refused for that user"))
    queries_per_user: int = field(default=8, metadata=_about("most roster queries of one user in flight at once; more get a wait error (resource-constraint)"))
    query_rate: float = field(default=20.0, metadata=_about("roster queries per second one user may send, in bursts of two seconds' worth; more get a wait error"))
    http_max_connections: int = field(default=256, metadata=_about("most HTTP API connections open at once; more are closed at once"))
    http_timeout: float = field(default=30.0, metadata=_about("seconds an HTTP client may take to send a request's headers and body, or stay idle"))
    users_url: str | None = field(default=None, metadata=_about("web app URL listing every username (a JSON array, paged by Link: rel=next): full syncs walk it"))
    no_start_sync: bool = field(default=False, metadata=_about("do not run a full sync when the server first takes writes (with --users-url)"))
    reconcile_interval: float = field(default=6 * 3600.0, metadata=_about("seconds between reconciliation passes, which read every server roster back and repair drift"))
    online_check_interval: float = field(default=600.0, metadata=_about("seconds between checks of online users' server rosters against the cache (no web-app fetch), repairing and pushing what changed behind our back; each costs one privileged read per online user"))
    sync_latency_target: float = field(default=0.05, metadata=_about("seconds of privileged reply latency background syncs may push the server to; their pace adapts to stay under it"))
    cache_max_contacts: int = field(default=1_000_000, metadata=_about("bound on the roster cache, in contacts: each cached user counts as its contacts plus 3, what a user costs even without contacts (measured in RSS: about 500 bytes a user, 300 a contact with 10 per user, 220 with 50; at the default, about 270 MB with 10 contacts per user); past it, offline users' rosters are dropped, least recently used first, and online users' stay (/healthz then says degraded)"))
    state: str | None = field(default=None, metadata=_about("SQLite file, or PostgreSQL database as a postgresql://user@host:port/dbname URL (password in ~/.pgpass or PGPASSFILE; needs rosteradmin[postgresql]), keeping what the server was made to hold and unfinished refreshes across restarts (none: kept in memory only)"))
    web_app_headers: Mapping[str, str] = field(default_factory=dict, metadata=_about("extra HTTP headers sent to the web app (TOML table only)", cli=False))
    roster_sync: str = field(default="privilege", metadata=_about("how rosters are written into the server: privilege (XEP-0356: Prosody) or ejabberd-api (ejabberd's mod_http_api, see contrib/ejabberd)"))
    ejabberd_api_url: str | None = field(default=None, metadata=_about("base URL of ejabberd's mod_http_api, e.g. http://127.0.0.1:5281/api (required with --roster-sync ejabberd-api); each call times out after --iq-timeout"))
    ejabberd_api_authorization: str | None = field(default=None, metadata=_about("Authorization header value sent to ejabberd's HTTP API, when its api_permissions want a credential (none: rely on loopback)", secret=True))
    events_url: str | None = field(default=None, metadata=_about("web app URL rosteradmin POSTs what users tried to (refused roster changes, stopped subscription requests), in numbered, signed transactions kept in --state until accepted (none: no events)"))
    events_secret: str | None = field(default=None, metadata=_about("the HMAC-SHA256 key(s) signing each events transaction, separated by spaces, commas or lines; every one signs, so a key can be rotated (required with --events-url)", secret=True))
    events_retry_max_delay: float = field(default=60.0, metadata=_about("longest pause, in seconds, between attempts to deliver an events transaction the web app did not accept (the pause doubles from 1 s)"))
    events_max_queued: int = field(default=10_000, metadata=_about("most events kept for the web app; past it new ones are dropped (counted in rosteradmin_events_dropped), never the oldest"))
    events_stale_after: float = field(default=300.0, metadata=_about("seconds an event may wait for the web app before /healthz says degraded"))
    delegation: str = field(default="expected", metadata=_about("whether the server delegates clients' roster queries to rosteradmin: expected (/healthz says degraded while it does not) or none (an ejabberd cluster: the server answers them from the rosters rosteradmin keeps converged ahead of login and refuses clients' roster sets itself; needs --roster-sync ejabberd-api and --users-url, see docs/ejabberd.md)"))


@dataclass(frozen=True)
class Setting:
    """
    One configuration setting, as its L{Config} field declares it.

    @ivar name: The long command-line option (C{roster-url}); the TOML key is
        the same with underscores (C{roster_url}).
    @ivar kind: C{str}, C{int}, C{float}, C{bool} or C{dict}.
    @ivar default: The value when nobody sets it; C{None} means unset.
    @ivar help: One line for C{--help} and the configuration reference.
    @ivar secret: Also read from C{--NAME-file} and C{ROSTERADMIN_NAME}.
    @ivar cli: Whether it is a command-line option (tables are TOML-only).
    """

    name: str
    kind: type
    default: Any
    help: str
    secret: bool = False
    cli: bool = True

    @property
    def key(self) -> str:
        """
        The TOML key and L{Config} attribute of this setting.
        """
        return self.name.replace("-", "_")

    @property
    def environmentVariable(self) -> str:
        """
        The environment variable a secret setting may come from.
        """
        return "ROSTERADMIN_" + self.key.upper()


def _kind(annotation: Any) -> type:
    """
    The type a setting's values are read as, from its field's annotation:
    C{str | None} is a C{str} that may be unset, a C{Mapping} a TOML table.

    @raise TypeError: A type that neither TOML nor the command line gives.
    """
    if isinstance(annotation, UnionType):
        [annotation] = [a for a in get_args(annotation) if a is not NoneType]
    if get_origin(annotation) is collections.abc.Mapping:
        return dict
    if annotation not in (str, int, float, bool):
        raise TypeError(f"a setting cannot be of type {annotation!r}")
    return cast(type, annotation)


def _setting(declared: Field[Any], annotation: Any) -> Setting:
    """
    The setting a L{Config} field declares; a required field, or one whose
    default is built anew (a table), has no default to show.
    """
    default = None if declared.default is MISSING else declared.default
    return Setting(declared.name.replace("_", "-"), _kind(annotation), default, declared.metadata["help"],
                   secret=declared.metadata["secret"], cli=declared.metadata["cli"])


_ANNOTATIONS = get_type_hints(Config)

SETTINGS: tuple[Setting, ...] = tuple(_setting(f, _ANNOTATIONS[f.name]) for f in fields(Config))

#: The values of C{roster-sync}.
ROSTER_SYNCS = ("privilege", "ejabberd-api")

#: The values of C{delegation}.
DELEGATIONS = ("expected", "none")

SETTINGS_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}


def loadTOML(path: str) -> dict[str, Any]:
    """
    Read a TOML configuration file.  Relative secret file paths in it are
    made relative to its directory: the file and its secrets are installed
    together, and twistd's working directory is wherever it was started
    from (C{/} under systemd).

    @raise ConfigError: The file cannot be read or parsed, or names an
        unknown setting.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config: {path} is not valid TOML: {e}") from e
    for key in data:
        if key.endswith("_file") and key[:-5] in SETTINGS_BY_KEY and SETTINGS_BY_KEY[key[:-5]].secret:
            continue
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(f"--config: unknown setting {key!r} in {path}")
    directory = os.path.dirname(os.path.abspath(path))
    for key, value in data.items():
        if key.endswith("_file") and isinstance(value, str) and value:
            # join() keeps an absolute path as it is.
            data[key] = os.path.join(directory, value)
    return data


def _readSecretFile(optionName: str, path: str) -> str:
    """
    Read a secret from a file, stripping the trailing newline editors add.
    """
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--{optionName}-file: cannot read {path}: {e}") from e
    if not value:
        raise ConfigError(f"--{optionName}-file: {path} is empty")
    return value


def _coerce(setting: Setting, value: Any) -> Any:
    """
    Turn a value from TOML or the command line into the setting's type.
    """
    name = f"--{setting.name}"
    if setting.kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if setting.kind is dict:
        if isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return dict(value)
        raise ConfigError(f"{setting.key}: expected a table of strings")
    if setting.kind in (int, float):
        return _coerceNumber(name, setting.kind, value)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _coerceNumber(name: str, kind: type, value: Any) -> int | float:
    """
    A positive, finite number of C{kind} (C{int} or C{float}).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if number <= 0:
        raise ConfigError(f"{name}: must be greater than 0, got {value!r}")
    return cast(int | float, number)


def _checkJID(optionName: str, value: str, bare: bool = True) -> str:
    """
    Check that a value is a domain-only JID (a component or user domain).
    """
    try:
        jid = JID(value)
    except JID_ERRORS:
        raise ConfigError(f"--{optionName}: {value!r} is not a valid JID") from None
    if bare and (jid.user or jid.resource):
        raise ConfigError(f"--{optionName}: {value!r} must be a domain, like example.org")
    # The server drops one final dot of a domain (Prosody's jid.prep), so
    # JIDs it sends never carry it: compared with ours, they must not.
    full = jid.full()
    return full[:-1] if full.endswith(".") and len(full) > 1 else full


def buildConfig(
    commandLine: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
    readFile: Callable[[str, str], str] = _readSecretFile,
) -> Config:
    """
    Merge defaults, the TOML file, the environment and the command line into
    a validated L{Config}.

    @param commandLine: Values given on the command line, keyed by TOML key
        (C{roster_url}); C{None} means not given.  The key C{config} names the
        TOML file, C{<secret>_file} a file holding a secret.
    @param environ: The process environment, for C{ROSTERADMIN_<SECRET>}.
    @param readFile: Reads a secret file; injectable for tests.
    @raise ConfigError: One line naming the first bad or missing option.
    """
    fileValues: dict[str, Any] = {}
    if commandLine.get("config"):
        fileValues = loadTOML(commandLine["config"])
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        given = _given(setting, fileValues, environ, commandLine)
        if given is None:
            continue
        value, source = given
        if source == "file":
            if not isinstance(value, str):
                raise ConfigError(f"--{setting.name}-file: expected a path")
            value = readFile(setting.name, value)
        values[setting.key] = _coerce(setting, value)
    for check in (_checkIdentity, _checkURLs, _checkKick, _checkServer, _checkState):
        check(values)
    return Config(**values)


def _given(setting: Setting, fileValues: Mapping[str, Any], environ: Mapping[str, str],
           commandLine: Mapping[str, Any]) -> tuple[Any, str] | None:
    """
    The value a setting is given, and whether it is the value itself
    (C{"value"}) or a file holding it (C{"file"}), or C{None}: later places
    win (file < environment < command line), and in each place a secret
    file counts like the secret itself.
    """
    key = setting.key
    places: list[tuple[Mapping[str, Any], str, str]] = [(fileValues, key, "value"), (commandLine, key, "value")]
    if setting.secret:
        places = [(fileValues, key + "_file", "file"), (fileValues, key, "value"),
                  (environ, setting.environmentVariable, "value"),
                  (commandLine, key + "_file", "file"), (commandLine, key, "value")]
    found = None
    for place, name, source in places:
        value = place.get(name)
        # An empty environment variable is as good as none.
        if value is not None and (place is not environ or value):
            found = (value, source)
    return found


def _checkIdentity(values: dict[str, Any]) -> None:
    """
    The required settings are given; the component's JID and the users'
    domain are domains, and differ.
    """
    for required in ("jid", "secret", "domain", "roster_url"):
        if not values.get(required):
            raise ConfigError(f"--{SETTINGS_BY_KEY[required].name}: is required")
    values["jid"] = _checkJID("jid", values["jid"])
    values["domain"] = _checkJID("domain", values["domain"])
    if values["jid"] == values["domain"]:
        raise ConfigError("--jid: must differ from --domain (the component has its own subdomain)")


def _checkURL(option: str, url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--{option}: must be an http:// or https:// URL, got {url!r}")


def _checkURLs(values: dict[str, Any]) -> None:
    """
    The web app's URLs are HTTP(S); the roster URL has one C{%s}.
    """
    url: str = values["roster_url"]
    _checkURL("roster-url", url)
    _checkURL("users-url", values.get("users_url"))
    _checkURL("events-url", values.get("events_url"))
    if values.get("events_url") is not None and not eventSecrets(values.get("events_secret")):
        raise ConfigError("--events-secret: is required with --events-url (the web app checks the signature)")
    if url.count("%s") != 1:
        raise ConfigError("--roster-url: must contain %s exactly once (the username goes there)")


def eventSecrets(value: str | None) -> tuple[str, ...]:
    """
    The keys C{--events-secret} holds: split on spaces, commas and lines,
    so a file may list one per line.
    """
    return tuple((value or "").replace(",", " ").split())


def _checkKick(values: dict[str, Any]) -> None:
    """
    Kicks need an authorization (unless disabled) and a nickname a room
    takes.
    """
    if not values.get("no_kick") and not values.get("kick_authorization"):
        raise ConfigError(
            "--kick-authorization: is required to serve POST /muc_kick "
            "(or pass --no-kick to disable kicking)"
        )
    if "kick_nick" in values:
        nick = roomNickname(values["kick_nick"])
        if nick is None:
            raise ConfigError(f"--kick-nick: {values['kick_nick']!r} cannot be a room nickname")
        values["kick_nick"] = nick


def _checkServer(values: dict[str, Any]) -> None:
    """
    What is said of the XMPP server holds together: its stanza limit, its
    port, and how rosters are written into it.
    """
    if values.get("max_stanza_bytes", MIN_MAX_STANZA_BYTES) < MIN_MAX_STANZA_BYTES:
        raise ConfigError(f"--max-stanza-bytes: must be at least {MIN_MAX_STANZA_BYTES}, got {values['max_stanza_bytes']}")
    if values.get("roster_sync", "privilege") not in ROSTER_SYNCS:
        raise ConfigError(f"--roster-sync: must be one of {', '.join(ROSTER_SYNCS)}, got {values['roster_sync']!r}")
    apiURL = values.get("ejabberd_api_url")
    if values.get("roster_sync") == "ejabberd-api" and apiURL is None:
        raise ConfigError("--ejabberd-api-url: is required with --roster-sync ejabberd-api")
    _checkURL("ejabberd-api-url", apiURL)
    _checkDelegation(values)
    if "xmpp_port" in values and values["xmpp_port"] > 65535:
        raise ConfigError(f"--xmpp-port: {values['xmpp_port']} is not a port number")


def _checkDelegation(values: dict[str, Any]) -> None:
    """
    Without delegation, the server answers clients' roster gets from what
    it stores: only a server that takes writes outside XMPP (ejabberd's
    API, which every node of a cluster shares) and a full sync that
    reaches every user before they log in keep that right.
    """
    delegation = values.get("delegation", "expected")
    if delegation not in DELEGATIONS:
        raise ConfigError(f"--delegation: must be one of {', '.join(DELEGATIONS)}, got {delegation!r}")
    if delegation != "none":
        return
    if values.get("roster_sync") != "ejabberd-api":
        raise ConfigError("--delegation none: needs --roster-sync ejabberd-api (an ejabberd cluster)")
    if values.get("users_url") is None:
        raise ConfigError("--delegation none: needs --users-url: full syncs write every user's roster "
                          "before they log in, since rosteradmin answers none of their queries")


def _checkState(values: dict[str, Any]) -> None:
    """
    C{--state} names an SQLite file, or a PostgreSQL database by a URL
    libpq reads and whose options it would use (it checks some only when
    connecting, which would make a typo look like an unreachable server),
    with its driver installed.  The URL is never echoed, nor any part of
    it: it may hold a password.
    """
    state = values.get("state")
    if state is None or "://" not in state:
        return
    if not isPostgreSQL(state):
        raise ConfigError(f"--state: expected a file or a postgresql:// URL, got a {state.partition(':')[0]}: URL")
    try:
        import psycopg
    except ImportError:
        raise ConfigError("--state: a postgresql:// URL needs the psycopg driver: "
                          "pip install 'rosteradmin[postgresql]'") from None
    from rosteradmin.statepg import unusableOption

    try:
        unusable = unusableOption(state)
    except psycopg.ProgrammingError:
        # libpq's reason quotes the part of the URL it cannot read.
        raise ConfigError("--state: not a PostgreSQL URL libpq reads (a character to percent-encode, "
                          "a space, or an unknown option)") from None
    if unusable is not None:
        raise ConfigError(f"--state: the PostgreSQL URL cannot be used: {unusable}")
