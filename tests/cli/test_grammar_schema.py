"""mcctl's grammar and the control schema agree (mcctl itself never imports pydantic)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from mc_cli.grammar import HELP_TOPICS, UsageError, parse
from mc_cli.main import HELP, help_text
from mc_control.schema import COMMANDS, REQUEST_ADAPTER

# A CLI form of every command mcctl sends as a request.
CLI_FORMS = [
    ["list"],
    ["daemon", "status"],
    ["daemon", "stop"],
    ["client", "create"],
    ["client", "remove", "--name", "x"],
    ["client", "set", "address", "127.0.0.1"],
    ["client", "set", "port", "30000"],
    ["client", "set", "client_id", "abcXYZ"],
    ["client", "set", "interface", ""],
    ["client", "set", "bind_port", "none"],
    ["client", "set", "tls", "true"],
    ["client", "set", "tls_verify", "off"],
    ["client", "set", "tls_ca", "/etc/ssl/ca.pem"],
    ["client", "set", "auth_token", "none"],
    ["server", "set", "tls_cert", "/etc/ssl/cert.pem"],
    ["server", "set", "auth_token", "s3cret"],
    ["client", "get"],
    ["client", "get", "port"],
    ["client", "connect"],
    ["client", "connect", "--wait", "--timeout", "3"],
    ["client", "disconnect"],
    ["client", "status"],
    ["client", "send", "echo", '{"message": "hello"}'],
    ["client", "send", "ping"],
    ["client", "send", "ping", "--timeout", "2"],
    ["stats"],
    ["stats", "--name", "s1", "--kind", "server"],
    ["client", "request", "status", '{"verbose": true}', "--timeout", "5"],
    ["server", "request", "--to", "abcXYZ", "ping"],
    ["server", "create", "--name", "s1"],
    ["server", "remove"],
    ["server", "set", "interface", "*"],
    ["server", "set", "port", "0"],
    ["server", "get", "interface"],
    ["server", "start"],
    ["server", "stop"],
    ["server", "status"],
    ["server", "send", "echo", "{}"],
    ["server", "send", "--to", "abc", "echo", "{}"],
    ["server", "send", "echo", "{}", "--timeout", "0.5"],
    ["server", "clients"],
    ["server", "kick", "abc", "too", "noisy"],
]
# Commands mcctl sends on its own: `version` says hello, `events` and `wait` subscribe.
INTERNAL = {"hello", "subscribe"}


@pytest.mark.parametrize("words", CLI_FORMS, ids=" ".join)
def test_every_request_the_cli_builds_validates(words: list[str]) -> None:
    inv = parse(words)
    assert inv.action == "request" and inv.cmd
    REQUEST_ADAPTER.validate_python({"id": 1, "cmd": inv.cmd, **inv.params})


def test_every_command_has_a_cli_form() -> None:
    built = {parse(words).cmd for words in CLI_FORMS}
    assert built | INTERNAL == set(COMMANDS)


def test_internal_commands_validate() -> None:
    REQUEST_ADAPTER.validate_python({"cmd": "hello", "api_version": 1})
    inv = parse(["events", "--name", "x"])
    assert inv.action == "events"
    REQUEST_ADAPTER.validate_python(
        {"cmd": "subscribe", "instances": [{"kind": "client", "name": "x"}], "since": {"boot_id": "b", "seq": 0}}
    )


@pytest.mark.parametrize(
    "words",
    [
        ["client", "set", "port", "x"],
        ["server", "send", "s", "[]"],
        ["client", "send", "s", "{"],
        ["client", "send", ""],
    ],
)
def test_bad_values_never_become_requests(words: list[str]) -> None:
    with pytest.raises(UsageError):
        parse(words)


def test_mcctl_one_shot_path_imports_no_pydantic_and_no_library() -> None:
    code = (
        "import sys; from mc_cli.main import main\n"
        "heavy = [m for m in ('pydantic', 'missioncommander', 'mc_daemon', 'readline') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_light_key_and_event_lists_agree_with_the_schema() -> None:
    from typing import get_args

    from mc_control import codes, schema

    assert get_args(schema.ClientKey) == codes.CLIENT_KEYS
    assert get_args(schema.ServerKey) == codes.SERVER_KEYS
    assert get_args(schema.EventName) == codes.EVENT_NAMES


def test_a_send_names_a_timeout_only_when_told_and_mcctl_waits_past_mcds_own() -> None:
    """Unsaid, mcd's default wait applies (and an mcd from before the field
    takes the command); mcctl waits for the answer past it, as for a
    request: a send into a full queue is answered queue_full, never with
    "mcd did not answer"."""
    from mc_cli.commands import answer_timeout
    from mc_control import schema
    from mc_control.codes import DEFAULT_WAITS

    plain = parse(["client", "send", "ping"])
    assert "timeout" not in plain.params
    assert schema.ClientSend.model_fields["timeout"].default == DEFAULT_WAITS["client.send"]
    assert answer_timeout(plain, 5.0) == DEFAULT_WAITS["client.send"] + 5.0
    told = parse(["client", "send", "ping", "--timeout", "2"])
    assert told.params["timeout"] == 2.0 and answer_timeout(told, 5.0) == 7.0
    server = parse(["server", "send", "ping"])
    assert "timeout" not in server.params and answer_timeout(server, 5.0) == 5.0  # a server's send waits only when told


def test_every_setting_of_the_library_can_be_set_on_a_hosted_instance() -> None:
    from mc_control import codes
    from missioncommander import Client, Server
    from missioncommander import _config as cfg

    def settings(cls: type) -> set[str]:
        return {name for klass in cls.__mro__ for name, value in vars(klass).items() if isinstance(value, cfg.Setting)}

    assert settings(Client) == set(codes.CLIENT_KEYS)
    assert settings(Server) == set(codes.SERVER_KEYS)


def test_the_settings_said_to_change_live_are_the_librarys_unlocked_ones() -> None:
    from mc_control import codes
    from missioncommander import Client, Server

    assert {key for key in codes.CLIENT_KEYS if not getattr(Client, key).locked} == codes.LIVE_CLIENT_KEYS
    assert {key for key in codes.SERVER_KEYS if not getattr(Server, key).locked} == codes.LIVE_SERVER_KEYS


def test_an_instance_name_given_as_a_word_points_to_name() -> None:
    with pytest.raises(UsageError, match=r"for the instance 'second': server create --name second"):
        parse(["server", "create", "second"])
    with pytest.raises(UsageError, match=r"client set address 127\.0\.0\.1;"):
        parse(["client", "connect", "127.0.0.1"])  # an address, more likely than a name
    with pytest.raises(UsageError, match=r"client status takes no arguments\)$"):
        parse(["client", "status", "a", "b"])


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["client", "create", "bad name"], "client create --name 'bad name')"),
        (["client", "create", ""], "client create --name '')"),
        (["client", "connect", "my host"], "client set address 'my host';"),
        (["server", "web 2", "set", "port", "0"], "server set port 0 --name 'web 2')"),
        (["server", "web", "send", "hi", '{"a": 1}'], """server send hi '{"a": 1}' --name web)"""),
    ],
)
def test_a_hint_to_copy_is_quoted_as_a_shell_reads_it(argv: list[str], hint: str) -> None:
    """A hint with a name or value of several words, or none, left it bare:
    copied, it was another command (``--name bad name``)."""
    with pytest.raises(UsageError) as refused:
        parse(argv)
    assert hint in str(refused.value), str(refused.value)


def test_an_optional_setting_is_unset_by_what_get_shows_of_one_unset() -> None:
    """`get` shows an unset setting as '-': typed back, it unsets, as none does."""
    for word in ("-", "none", "null", ""):
        for key in ("servers", "tls_ca", "bind_port", "auth_token"):
            assert parse(["client", "set", key, word]).params["value"] is None, (key, word)
    assert parse(["client", "set", "client_id", "-"]).params["value"] == "-"  # not optional: the library judges it


def test_a_setting_given_more_than_one_word_is_told_to_quote_them() -> None:
    """The shell splits at spaces: servers typed as the library's own
    'host:port host:port' string came out as the bare usage line."""
    with pytest.raises(
        UsageError,
        match=r"^client set servers takes one value, not 2: quote one with spaces "
        r"\(client set servers '\[::1\]:5000 127\.0\.0\.1:6000'\); or separate the servers with commas$",
    ):
        parse(["client", "set", "servers", "[::1]:5000", "127.0.0.1:6000"])
    inv = parse(["client", "set", "servers", "[::1]:5000 127.0.0.1:6000"])  # quoted: one value, which mcd reads
    REQUEST_ADAPTER.validate_python({"cmd": inv.cmd, **inv.params})
    # No quoting makes one number of '1 s' or one flag of 'yes please': no such advice there.
    with pytest.raises(UsageError, match=r"^client set heartbeat_interval takes one value, not 2: a number, without"):
        parse(["client", "set", "heartbeat_interval", "1", "s"])
    with pytest.raises(UsageError, match=r"^server set port takes one value, not 2: a number$"):
        parse(["server", "set", "port", "30", "000"])
    with pytest.raises(UsageError, match=r"^client set tls takes one value, not 2: true or false$"):
        parse(["client", "set", "tls", "yes", "please"])
    for kind, key in (("client", "address"), ("server", "interface"), ("client", "tls_hostname")):
        with pytest.raises(UsageError, match=rf"^{kind} set {key} takes one value, not 2: one word \(a host name"):
            parse([kind, "set", key, "my", "host"])


def test_a_payload_of_dash_is_read_by_the_caller_and_refused_without_one() -> None:
    inv = parse(["client", "send", "report", "-"], lambda: '{"n": 1}')
    assert inv.params["payload"] == {"n": 1}
    REQUEST_ADAPTER.validate_python({"cmd": inv.cmd, **inv.params})
    # The shell gives no reader: its standard input is the person typing.
    with pytest.raises(UsageError, match="one-shot mcctl, not the shell"):
        parse(["client", "send", "report", "-"])
    with pytest.raises(UsageError, match="NaN is not JSON"):
        parse(["server", "send", "x", '{"n": NaN}'])
    with pytest.raises(UsageError, match="1e400 is beyond the range"):  # Python reads it as infinity
        parse(["server", "send", "x", '{"n": [1e400]}'])


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('client send echo {"message": "hello world"}', ["client", "send", "echo", '{"message": "hello world"}']),
        ("client send echo '{\"n\": 1}'", ["client", "send", "echo", '{"n": 1}']),  # quoted, as in mcctl
        (
            'server request --to c1 status {"a": {"b": [1, 2]}} --timeout 2',
            ["server", "request", "--to", "c1", "status", '{"a": {"b": [1, 2]}}', "--timeout", "2"],
        ),
        ("client set address 127.0.0.1", ["client", "set", "address", "127.0.0.1"]),
        ("client send x {not json", ["client", "send", "x", "{not", "json"]),  # the grammar says what is wrong
    ],
)
def test_the_shell_keeps_an_unquoted_json_object_as_one_word(line: str, words: list[str]) -> None:
    from mc_cli.repl import split_line

    assert split_line(line) == words


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("client send x {not json", "invalid JSON payload: Expecting property name enclosed in double quotes"),
        ('client request x {"a": } --timeout 2', "invalid JSON payload: Expecting value"),
        ('client request x {"a": 1} --timeout soon', None),  # the JSON is fine: the timeout is not
        ("client send x '{not json", None),  # unbalanced quotes: they are what is wrong
        ("client send a{b}", None),  # a brace inside a word is no payload
    ],
)
def test_the_shell_says_what_is_wrong_with_an_unquoted_json_object(line: str, said: str | None) -> None:
    from mc_cli.repl import unquoted_json_error

    error = unquoted_json_error(line)
    if said is None:
        assert error is None
    else:
        assert error is not None and str(error).startswith(said) and "^" in str(error)


@pytest.mark.parametrize(
    "name", ["default", "lab-2", "a.b_c", "A" * 64, "A" * 65, "café", "-x", "_x", "x y", "x\n", ""]
)
def test_the_name_rule_the_gui_checks_is_the_schemas(name: str) -> None:
    from pydantic import ValidationError

    from mc_control.codes import name_problem

    try:
        REQUEST_ADAPTER.validate_python({"cmd": "client.create", "name": name})
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == (name_problem(name) is None)


def test_every_help_topic_completion_offers_has_a_help_of_its_own() -> None:
    assert all(help_text(topic) != HELP for topic in HELP_TOPICS)
    assert help_text("nosuch") == HELP


@pytest.mark.parametrize("value", ["0", "-1", "nan", "-inf"])
def test_a_timeout_that_is_no_positive_number_says_what_was_given(value: str) -> None:
    """`--timeout nan` was told "must be positive", which it is not quite about."""
    with pytest.raises(UsageError, match=rf"^--timeout must be a number of seconds above 0, not '{re.escape(value)}'$"):
        parse(["client", "request", "x", "--timeout", value])
