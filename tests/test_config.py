"""
Tests for configuration: the settings table, precedence, secrets from files
and the environment, and one clear line per bad or missing option.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from twisted.python.usage import UsageError

from rosteradmin.config import SETTINGS, SETTINGS_BY_KEY, Config, ConfigError, buildConfig, loadTOML
from rosteradmin.options import Options
from rosteradmin.startup import EX_CONFIG
from rosteradmin.tap import makeService

REQUIRED = {"jid": "roster.example.org", "secret": "s", "domain": "example.org",
            "roster_url": "http://app/%s", "no_kick": True}


def build(environ: dict[str, str] | None = None, **values: Any) -> Config:
    """
    Build a configuration from the required options plus C{values}, as the
    command line gives them, with the given environment only.
    """
    return buildConfig({**REQUIRED, **values}, environ=environ or {})


def writeTOML(tmp_path: Path, text: str) -> str:
    """
    Write a TOML configuration file and return its path.
    """
    path = tmp_path / "rosteradmin.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def configError(**values: Any) -> str:
    """
    The message of the ConfigError that building with C{values} raises,
    checked to be one line.
    """
    environ = values.pop("environ", None)
    with pytest.raises(ConfigError) as e:
        build(environ, **values)
    message = str(e.value)
    assert "\n" not in message and message
    return message


# The table


def test_settingsMatchConfig() -> None:
    """
    Every setting is a Config field with the same default, and every Config
    field is a setting: the table and the value cannot drift apart.
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert set(fields) == set(SETTINGS_BY_KEY)
    for setting in SETTINGS:
        f = fields[setting.key]
        if f.default is not dataclasses.MISSING:
            assert f.default == setting.default, setting.key
        elif f.default_factory is not dataclasses.MISSING:
            assert setting.default is None and f.default_factory() == {}
        else:
            assert setting.default is None, setting.key


def test_settingNames() -> None:
    """
    Option names have dashes, keys underscores, and secrets an environment
    variable named after the key.
    """
    url = SETTINGS_BY_KEY["roster_url"]
    assert (url.name, url.key) == ("roster-url", "roster_url")
    secret = SETTINGS_BY_KEY["kick_authorization"]
    assert secret.secret and secret.environmentVariable == "ROSTERADMIN_KICK_AUTHORIZATION"
    assert {s.key for s in SETTINGS if s.secret} == {"secret", "kick_authorization", "refresh_authorization",
                                                    "ejabberd_api_authorization", "events_secret"}


def test_specOptionsExist() -> None:
    """
    Every command-line option SPEC section 5 names is in the table.
    """
    names = {s.name for s in SETTINGS if s.cli}
    assert {"jid", "secret", "xmpp-host", "xmpp-port", "domain", "roster-url", "http",
            "kick-authorization", "no-kick", "refresh-authorization"} <= names


# Defaults and precedence


def test_defaults() -> None:
    """
    Unset options take the documented defaults.
    """
    config = build()
    assert (config.xmpp_host, config.xmpp_port, config.http, config.fetch_timeout, config.fetch_concurrency) == (
        "127.0.0.1", 5347, "tcp:5280:interface=127.0.0.1", 10.0, 64)
    assert (config.max_roster_bytes, config.max_body_bytes, config.kick_authorization,
            config.refresh_authorization, config.web_app_headers) == (16 * 1024 * 1024, 1024 * 1024, None, None, {})


def test_configIsFrozen() -> None:
    """
    A built configuration cannot be changed.
    """
    config = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.jid = "other.example.org"  # type: ignore[misc]


def test_tomlOverridesDefaults(tmp_path: Path) -> None:
    """
    Values from the TOML file replace the defaults, with their types.
    """
    path = writeTOML(tmp_path, '''
        xmpp_host = "xmpp.internal"
        xmpp_port = 6000
        fetch_timeout = 3
        stay_in_rooms = true
        [web_app_headers]
        Authorization = "Bearer app"
    ''')
    config = build(config=path)
    assert (config.xmpp_host, config.xmpp_port, config.fetch_timeout, config.stay_in_rooms) == (
        "xmpp.internal", 6000, 3.0, True)
    assert isinstance(config.fetch_timeout, float)
    assert config.web_app_headers == {"Authorization": "Bearer app"}


def test_tomlAlone(tmp_path: Path) -> None:
    """
    The TOML file may hold every required setting.
    """
    path = writeTOML(tmp_path, '''
        jid = "roster.example.org"
        secret = "from-file"
        domain = "example.org"
        roster_url = "https://app.example.org/rosters/%s"
        kick_authorization = "Bearer kick"
    ''')
    config = buildConfig({"config": path}, environ={})
    assert (config.jid, config.secret, config.roster_url, config.kick_authorization, config.no_kick) == (
        "roster.example.org", "from-file", "https://app.example.org/rosters/%s", "Bearer kick", False)


def test_commandLineOverridesTOML(tmp_path: Path) -> None:
    """
    Command-line values beat the TOML file, and strings from the command line
    are converted to the setting's type.
    """
    path = writeTOML(tmp_path, 'xmpp_port = 6000\nfetch_timeout = 3\nxmpp_host = "toml.host"\n')
    config = build(config=path, xmpp_port="7000", fetch_timeout="7.5")
    assert (config.xmpp_port, config.fetch_timeout, config.xmpp_host) == (7000, 7.5, "toml.host")


def test_secretPrecedence(tmp_path: Path) -> None:
    """
    For secrets: TOML < environment < command line.
    """
    path = writeTOML(tmp_path, 'secret = "from-toml"\n')
    env = {"ROSTERADMIN_SECRET": "from-env"}
    assert build(config=path, secret=None).secret == "from-toml"
    assert build(config=path, secret=None, environ=env).secret == "from-env"
    assert build(config=path, secret="from-cli", environ=env).secret == "from-cli"
    assert build(secret=None, environ=env).secret == "from-env"


def test_emptyEnvironmentVariableIgnored(tmp_path: Path) -> None:
    """
    An empty environment variable does not hide the TOML value.
    """
    path = writeTOML(tmp_path, 'secret = "from-toml"\n')
    assert build(config=path, secret=None, environ={"ROSTERADMIN_SECRET": ""}).secret == "from-toml"


def test_environmentOnlyForSecrets() -> None:
    """
    Only secrets are read from the environment; other settings are not.
    """
    config = build(environ={"ROSTERADMIN_XMPP_PORT": "9999", "ROSTERADMIN_JID": "evil.example.org"})
    assert (config.xmpp_port, config.jid) == (5347, "roster.example.org")


def test_otherSecretsFromEnvironment() -> None:
    """
    The kick and refresh authorizations also come from the environment.
    """
    config = build(no_kick=None, environ={
        "ROSTERADMIN_KICK_AUTHORIZATION": "Bearer kick",
        "ROSTERADMIN_REFRESH_AUTHORIZATION": "Bearer refresh",
    })
    assert (config.kick_authorization, config.refresh_authorization) == ("Bearer kick", "Bearer refresh")


def test_secretFile(tmp_path: Path) -> None:
    """
    A secret file is read and surrounding whitespace (the editor's trailing
    newline) dropped.
    """
    path = tmp_path / "secret"
    path.write_text("hunter2\n")
    assert build(secret=None, secret_file=str(path)).secret == "hunter2"


def test_secretFileFromTOML(tmp_path: Path) -> None:
    """
    The TOML file may name a secret file instead of holding the secret.
    """
    secret = tmp_path / "kick"
    secret.write_text("Bearer kick\n")
    path = writeTOML(tmp_path, f'kick_authorization_file = "{secret}"\n')
    assert build(config=path, no_kick=None).kick_authorization == "Bearer kick"


def test_secretFilePrecedence(tmp_path: Path) -> None:
    """
    In each place a secret file counts like the secret itself: a command-line
    file beats the environment, and the environment beats a TOML file.
    """
    fromFile = tmp_path / "secret"
    fromFile.write_text("from-secret-file")
    path = writeTOML(tmp_path, f'secret_file = "{fromFile}"\n')
    env = {"ROSTERADMIN_SECRET": "from-env"}
    assert build(config=path, secret=None).secret == "from-secret-file"
    assert build(config=path, secret=None, environ=env).secret == "from-env"
    assert build(secret=None, secret_file=str(fromFile), environ=env).secret == "from-secret-file"


def test_secretFileReaderInjected() -> None:
    """
    Secret files are read through the injected reader, given the option
    name and the path.
    """
    calls: list[tuple[str, str]] = []

    def readFile(name: str, path: str) -> str:
        calls.append((name, path))
        return "from-reader"

    config = buildConfig({**REQUIRED, "secret": None, "secret_file": "/run/credentials/secret"},
                         environ={}, readFile=readFile)
    assert config.secret == "from-reader"
    assert calls == [("secret", "/run/credentials/secret")]


def test_domainsNormalised() -> None:
    """
    The component JID and the domain are stringprepped.
    """
    config = build(jid="Roster.Example.ORG", domain="EXAMPLE.org")
    assert (config.jid, config.domain) == ("roster.example.org", "example.org")


def test_kickAuthorizationSatisfiesKick() -> None:
    """
    With a kick authorization, kicking needs no --no-kick.
    """
    config = build(no_kick=None, kick_authorization="Bearer kick")
    assert (config.no_kick, config.kick_authorization) == (False, "Bearer kick")


# One line naming the option


@pytest.mark.parametrize("values, message", [
    ({"jid": None}, "--jid: is required"),
    ({"jid": ""}, "--jid: is required"),
    ({"secret": None}, "--secret: is required"),
    ({"domain": None}, "--domain: is required"),
    ({"roster_url": None}, "--roster-url: is required"),
    ({"jid": "a@@b"}, "--jid: 'a@@b' is not a valid JID"),
    ({"jid": "user@roster.example.org"}, "--jid: 'user@roster.example.org' must be a domain"),
    ({"jid": "roster.example.org/res"}, "--jid: 'roster.example.org/res' must be a domain"),
    ({"domain": "exa mple.org"}, "--domain: 'exa mple.org' is not a valid JID"),
    ({"domain": "u@example.org"}, "--domain: 'u@example.org' must be a domain"),
    ({"jid": "example.org"}, "--jid: must differ from --domain"),
    ({"jid": "EXAMPLE.org"}, "--jid: must differ from --domain"),
    ({"roster_url": "ftp://x/%s"}, "--roster-url: must be an http:// or https:// URL"),
    ({"roster_url": "app/%s"}, "--roster-url: must be an http:// or https:// URL"),
    ({"roster_url": "http://x/"}, "--roster-url: must contain %s exactly once"),
    ({"roster_url": "http://x/%s/%s"}, "--roster-url: must contain %s exactly once"),
    ({"no_kick": None}, "--kick-authorization: is required"),
    ({"kick_nick": ""}, "--kick-nick: '' cannot be a room nickname"),
    ({"kick_nick": "bot\u0007"}, "--kick-nick: 'bot\\x07' cannot be a room nickname"),
    ({"kick_nick": "x" * 1024}, "--kick-nick: 'xxx"),
    ({"xmpp_port": "70000"}, "--xmpp-port: 70000 is not a port number"),
    ({"xmpp_port": "65536"}, "--xmpp-port: 65536 is not a port number"),
    ({"xmpp_port": "many"}, "--xmpp-port: expected a number, got 'many'"),
    ({"xmpp_port": "53.5"}, "--xmpp-port: expected a number"),
    ({"xmpp_port": "0"}, "--xmpp-port: must be greater than 0"),
    ({"xmpp_port": "-1"}, "--xmpp-port: must be greater than 0"),
    ({"fetch_timeout": "0"}, "--fetch-timeout: must be greater than 0"),
    ({"fetch_timeout": "-2.5"}, "--fetch-timeout: must be greater than 0"),
    ({"fetch_timeout": "soon"}, "--fetch-timeout: expected a number"),
    ({"fetch_timeout": "nan"}, "--fetch-timeout: expected a finite number"),
    ({"fetch_timeout": "inf"}, "--fetch-timeout: expected a finite number"),
    ({"iq_timeout": "0"}, "--iq-timeout: must be greater than 0"),
    ({"fetch_concurrency": "0"}, "--fetch-concurrency: must be greater than 0"),
    ({"max_roster_bytes": "lots"}, "--max-roster-bytes: expected a number"),
    ({"max_body_bytes": "-1"}, "--max-body-bytes: must be greater than 0"),
    ({"reconnect_max_delay": "0"}, "--reconnect-max-delay: must be greater than 0"),
    ({"keepalive_interval": "0"}, "--keepalive-interval: must be greater than 0"),
    ({"secret": None, "secret_file": "/nonexistent/secret"}, "--secret-file: cannot read /nonexistent/secret"),
    ({"no_kick": None, "kick_authorization_file": "/nonexistent/k"}, "--kick-authorization-file: cannot read"),
    ({"config": "/nonexistent.toml"}, "--config: cannot read /nonexistent.toml"),
])
def test_badOptionsNamed(values: dict[str, Any], message: str) -> None:
    """
    Each problem is one line starting with the option it is about.
    """
    assert configError(**values).startswith(message)


def test_emptySecretFile(tmp_path: Path) -> None:
    """
    A secret file holding only whitespace is refused, naming the option.
    """
    path = tmp_path / "secret"
    path.write_text("\n")
    assert configError(secret=None, secret_file=str(path)) == f"--secret-file: {path} is empty"


def test_secretFileNotUTF8(tmp_path: Path) -> None:
    """
    A secret file that is not UTF-8 text is refused, naming the option.
    """
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe\x00")
    assert configError(secret=None, secret_file=str(path)).startswith(f"--secret-file: cannot read {path}")


def test_secretIsADirectory(tmp_path: Path) -> None:
    """
    A secret file that is a directory is refused, naming the option.
    """
    assert configError(secret=None, secret_file=str(tmp_path)).startswith(f"--secret-file: cannot read {tmp_path}")


def test_errorsNeverShowSecrets(tmp_path: Path) -> None:
    """
    Messages about other options do not carry the secret's value.
    """
    assert "hunter2" not in configError(secret="hunter2", jid=None)
    assert "hunter2" not in configError(secret="hunter2", roster_url="http://x/")


# The TOML file


@pytest.mark.parametrize("text, message", [
    ("jid = ", "--config: {path} is not valid TOML"),
    ("[[[", "--config: {path} is not valid TOML"),
    ("jid = 'a'\njid = 'b'", "--config: {path} is not valid TOML"),
    ("colour = 'blue'", "--config: unknown setting 'colour' in {path}"),
    ("roster-url = 'http://x/%s'", "--config: unknown setting 'roster-url' in {path}"),
    ("jid_file = '/etc/jid'", "--config: unknown setting 'jid_file' in {path}"),
    ("config = 'other.toml'", "--config: unknown setting 'config' in {path}"),
    ("no_kick = 'yes'", "--no-kick: expected true or false, got 'yes'"),
    ("stay_in_rooms = 1", "--stay-in-rooms: expected true or false, got 1"),
    ("xmpp_port = true", "--xmpp-port: expected a number, got True"),
    ("xmpp_port = '5347x'", "--xmpp-port: expected a number"),
    ("xmpp_port = 5347.5", "--xmpp-port: expected a whole number, got 5347.5"),
    ("fetch_concurrency = inf", "--fetch-concurrency: expected a whole number, got inf"),
    ("fetch_timeout = nan", "--fetch-timeout: expected a finite number, got nan"),
    ("fetch_timeout = -inf", "--fetch-timeout: expected a finite number"),
    ("fetch_timeout = [1]", "--fetch-timeout: expected a number"),
    ("xmpp_host = 3", "--xmpp-host: expected a string, got 3"),
    ("kick_nick = ['a']", "--kick-nick: expected a string"),
    ("web_app_headers = 3", "web_app_headers: expected a table of strings"),
    ("web_app_headers = 'Authorization: x'", "web_app_headers: expected a table of strings"),
    ("[web_app_headers]\nX-Count = 3", "web_app_headers: expected a table of strings"),
    ("secret_file = 3", "--secret-file: expected a path"),
])
def test_badTOML(tmp_path: Path, text: str, message: str) -> None:
    """
    Bad TOML files are refused with one line naming the file or setting.
    """
    path = writeTOML(tmp_path, text)
    assert configError(config=path, secret=None, no_kick=None, kick_authorization="k").startswith(
        message.format(path=path))


def test_tomlWholeNumberFloatAccepted(tmp_path: Path) -> None:
    """
    A whole number written as a float is accepted for an integer setting.
    """
    path = writeTOML(tmp_path, "fetch_concurrency = 8.0\n")
    config = build(config=path)
    assert config.fetch_concurrency == 8 and isinstance(config.fetch_concurrency, int)


def test_loadTOMLAllowsSecretFiles(tmp_path: Path) -> None:
    """
    The TOML keys C{<secret>_file} are allowed, next to the settings.
    """
    path = writeTOML(tmp_path, "secret_file = '/s'\nrefresh_authorization_file = '/r'\njid = 'x'\n")
    assert loadTOML(path) == {"secret_file": "/s", "refresh_authorization_file": "/r", "jid": "x"}


def test_badTOMLStopsBeforeOtherChecks(tmp_path: Path) -> None:
    """
    A bad file is reported even when required options are also missing.
    """
    path = writeTOML(tmp_path, "colour = 'blue'")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        buildConfig({"config": path}, environ={})


# The twistd options


def test_optionsBuildTheServiceTree() -> None:
    """
    The twistd options validate into a Config, and makeService builds the
    named services without starting anything.
    """
    options = Options()
    options.parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                          "--roster-url", "http://app/%s", "--kick-authorization", "k",
                          "--http", "tcp:0:interface=127.0.0.1"])
    top = makeService(options)
    assert [s.name for s in top] == ["backend", "component", "sync", "online-check", "requests", "http"]
    assert not top.running


def test_optionsReportConfigErrors() -> None:
    """
    A configuration error is a usage error with the same one line.
    """
    with pytest.raises(UsageError, match="^--roster-url: must contain %s exactly once"):
        Options().parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                                "--roster-url", "http://app/", "--no-kick"])


def test_badEndpointRefused() -> None:
    """
    A --http value that is not a Twisted endpoint is a usage error.
    """
    with pytest.raises(UsageError, match="--http: 'nonsense:1' is not a Twisted endpoint"):
        Options().parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                                "--roster-url", "http://app/%s", "--no-kick", "--http", "nonsense:1"])


def test_relativeSecretFileFromTOMLDirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A relative secret file in the TOML file is read from the TOML file's
    directory, not from the working directory.
    """
    (tmp_path / "etc" / "credentials").mkdir(parents=True)
    (tmp_path / "etc" / "credentials" / "secret").write_text("next-to-config\n")
    (tmp_path / "cwd" / "credentials").mkdir(parents=True)
    (tmp_path / "cwd" / "credentials" / "secret").write_text("in-working-directory\n")
    (tmp_path / "etc" / "rosteradmin.toml").write_text('secret_file = "credentials/secret"\n')
    monkeypatch.chdir(tmp_path / "cwd")
    assert build(config=str(tmp_path / "etc" / "rosteradmin.toml"), secret=None).secret == "next-to-config"
    assert loadTOML("../etc/rosteradmin.toml") == {"secret_file": str(tmp_path / "etc" / "credentials" / "secret")}


def test_relativeSecretFileFromCommandLine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A relative secret file on the command line stays relative to the
    working directory, even with a TOML file elsewhere.
    """
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "secret").write_text("next-to-config\n")
    (tmp_path / "secret").write_text("in-working-directory\n")
    path = writeTOML(tmp_path / "etc", "")
    monkeypatch.chdir(tmp_path)
    assert build(config=path, secret=None, secret_file="secret").secret == "in-working-directory"


class Twistd(dict[str, Any]):
    """
    Stands for twistd's C{ServerOptions}, the parent of our options when
    twistd parses them.
    """


@pytest.mark.parametrize("args, line", [
    (["--bogus"], "rosteradmin: option --bogus not recognized; `twistd rosteradmin --help` lists the options"),
    (["--no-kick", "true"], "rosteradmin: unexpected argument 'true': flags such as --no-kick take no value"),
    (["--roster-url", "http://app/"], "rosteradmin: --roster-url: must contain %s exactly once (the username goes there)"),
])
def test_usageErrorUnderTwistdIsOneLine(args: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    """
    Parsed by twistd, a usage error exits with EX_CONFIG after one line on
    standard error, instead of reaching twistd, which would print its whole
    usage page and exit 1.
    """
    options = Options()
    options.parent = Twistd(logger=None)
    with pytest.raises(SystemExit) as e:
        options.parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                              "--roster-url", "http://app/%s", "--no-kick", *args])
    assert e.value.code == EX_CONFIG == 78
    assert capsys.readouterr() == ("", line + "\n")


def test_unexpectedArgumentRefused() -> None:
    """
    Outside twistd a word that is not an option is a usage error naming it.
    """
    with pytest.raises(UsageError, match="^unexpected argument 'true': flags such as --no-kick take no value$"):
        Options().parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                                "--roster-url", "http://app/%s", "--no-kick", "true"])


@pytest.mark.parametrize("http, message", [
    ("ssl:8443:privateKey=/nonexistent/key.pem",
     "--http: 'ssl:8443:privateKey=/nonexistent/key.pem': cannot read /nonexistent/key.pem: No such file or directory"),
    ("systemd:domain=INET:index=0",
     "--http: 'systemd:domain=INET:index=0': systemd passed no such socket "
     "(start rosteradmin from a .socket unit, or listen on tcp: or unix:)"),
    ("systemd:domain=INET:name=web",
     "--http: 'systemd:domain=INET:name=web': systemd passed no such socket "
     "(start rosteradmin from a .socket unit, or listen on tcp: or unix:)"),
])
def test_unusableEndpointRefused(http: str, message: str) -> None:
    """
    An endpoint whose parser fails (C{ssl:} without its key, C{systemd:}
    without a passed socket: systemd passes sockets only to the process
    it starts) is a usage error naming --http and the cause.
    """
    with pytest.raises(UsageError) as e:
        Options().parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                                "--roster-url", "http://app/%s", "--no-kick", "--http", http])
    assert str(e.value) == message


def test_kickNickResourceprepped() -> None:
    """
    The kick nickname is kept as rooms compare it: a zero-width space is
    dropped by resourceprep.
    """
    assert build(None, kick_nick="Bot\u200b").kick_nick == "Bot"


def test_domainTrailingDotDropped() -> None:
    """
    A domain given with its final dot (example.org.) is the domain the
    server uses, without it: the JIDs it sends never carry the dot.
    """
    config = buildConfig({"jid": "roster.example.org.", "secret": "s", "domain": "example.org.",
                          "roster_url": "http://w/%s", "no_kick": True}, environ={})
    assert (config.domain, config.jid) == ("example.org", "roster.example.org")


def test_stateTakesAFileOrAPostgreSQLURL() -> None:
    """
    C{--state} is an SQLite file or a C{postgresql://} URL; another
    scheme, or a URL libpq cannot read, is refused without echoing the
    URL, which may hold a password.
    """
    assert build(None, state="/var/lib/rosteradmin/state.sqlite").state == "/var/lib/rosteradmin/state.sqlite"
    url = "postgresql://rosteradmin:s3cret@db.example.org:5432/rosteradmin"
    assert build(None, state=url).state == url
    assert build(None, state="postgres://db/rosteradmin").state == "postgres://db/rosteradmin"
    with pytest.raises(ConfigError, match="^--state: expected a file or a postgresql:// URL, got a mysql: URL$"):
        build(None, state="mysql://u:s3cret@db/x")
    with pytest.raises(ConfigError, match="^--state: not a PostgreSQL URL libpq reads") as e:
        build(None, state="postgresql://u:s3cret@db/x?bogus=1")
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("url", [
    "postgresql://u:sec%zzret@db/x",
    "postgresql://u:sec ret@db/x",
    "postgresql://u:secret@db/x?sslmode=secret",
    "postgresql://u:secret@db:secret/x",
    "postgresql://u:secret@db/x?connect_timeout=secret",
    "postgresql://u:secret@db/x?target_session_attrs=secret",
])
def test_stateURLErrorsNeverEchoIt(url: str) -> None:
    """
    A C{postgresql://} URL that libpq cannot read, or whose options it
    would refuse when connecting (an unknown C{sslmode}, a port that is
    not a number), is a configuration error, which never repeats any part
    of the URL: the password may be anywhere in it.
    """
    with pytest.raises(ConfigError, match="^--state: ") as e:
        build(None, state=url)
    assert not any(token in str(e.value) for token in ("secret", "sec ret", "sec%zzret"))
