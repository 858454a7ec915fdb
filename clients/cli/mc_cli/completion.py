"""Shell completion scripts for mcctl (``mcctl completion bash|zsh``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mc_control import ControlClient
from mc_control.codes import CLIENT_KEYS, SERVER_KEYS

from .grammar import (
    CLIENT_STATES,
    CLIENT_VERBS,
    DAEMON_VERBS,
    HELP_TOPICS,
    OPTIONS,
    SERVER_STATES,
    SERVER_VERBS,
    TOP_COMMANDS,
    states_of,
)

_BASH = """\
# bash completion for mcctl; install with:
#   mcctl completion bash > ~/.local/share/bash-completion/completions/mcctl
_mcctl() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    if [[ "$prev" == --socket ]]; then COMPREPLY=($(compgen -f -- "$cur")); return; fi
    if [[ "$cur" == --* ]]; then COMPREPLY=($(compgen -W "@OPTIONS@" -- "$cur")); return; fi
    # mcctl says what may come next, as its shell does: the same rules, and
    # instance names and client ids from mcd.
    local IFS=$'\\n' next
    next="$(MCCTL_COMPLETE="${COMP_WORDS[*]:1:COMP_CWORD-1}" "${COMP_WORDS[0]}" 2>/dev/null)"
    COMPREPLY=($(compgen -W "$next" -- "$cur"))
}
complete -F _mcctl mcctl
"""

_ZSH = """\
#compdef mcctl
# zsh completion for mcctl: uses the bash one through bashcompinit; install with:
#   mcctl completion zsh > "${fpath[1]}/_mcctl"
autoload -U +X bashcompinit && bashcompinit
"""


#: Asks mcd: ``ask(cmd, **params)`` returns the command's result.
Ask = Callable[..., dict[str, Any]]


def candidates(words: Sequence[str], ask: Ask) -> list[str]:
    """What may come after ``words`` (mcctl's words before the one being
    completed, without mcctl's own name): the commands, verbs, keys, states
    and help topics of the grammar, and after ``--name``, ``--to`` and
    ``server kick`` the instance names or client ids mcd has now (none
    when ``ask`` fails: completion never breaks a prompt)."""
    words = _unsplit(words)
    name = "default"
    kept: list[str] = []
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
        elif word.startswith("--"):
            skip = OPTIONS.get(word, (False, ""))[0]  # it takes a value: the next word
            if word == "--name" and i + 1 < len(words):
                name = words[i + 1]
        else:
            kept.append(word)
    if words and words[-1] == "--kind":
        return ["client", "server"]
    if words and words[-1] in ("--to", "--name"):
        kind = kept[0] if kept and kept[0] in ("client", "server") else "server"
        return _client_ids(ask, name) if words[-1] == "--to" else _instance_names(ask, kind)
    if words and OPTIONS.get(words[-1], (False, ""))[0]:
        return []  # a number or a path: nothing to offer
    if not kept:
        return list(TOP_COMMANDS)
    head = kept[0]
    if head in ("client", "server"):
        verbs = CLIENT_VERBS if head == "client" else SERVER_VERBS
        if len(kept) == 1:
            return list(verbs)
        if len(kept) == 2 and kept[1] in ("set", "get"):
            return list(CLIENT_KEYS if head == "client" else SERVER_KEYS)
        if len(kept) == 2 and head == "server" and kept[1] == "kick":
            return _client_ids(ask, name)
        return []
    if len(kept) == 1:
        return list(_SECOND_WORDS.get(head, ()))
    if head == "wait" and len(kept) == 2 and kept[1] in ("client", "server"):
        return list(states_of(kept[1]))
    return []


def _unsplit(words: Sequence[str]) -> list[str]:
    """``--name=web`` as ``--name web``: bash hands it over as ``--name``,
    ``=``, ``web`` (``=`` breaks words there), readline as one word."""
    out: list[str] = []
    for word in words:
        if word == "=" and out and out[-1].startswith("--"):
            continue
        if word.startswith("--") and "=" in word:
            out.extend(part for part in word.split("=", 1) if part)
        else:
            out.append(word)
    return out


_SECOND_WORDS: dict[str, tuple[str, ...]] = {
    "daemon": DAEMON_VERBS,
    "help": HELP_TOPICS,
    "wait": ("client", "server", *CLIENT_STATES, *SERVER_STATES),
    "completion": ("bash", "zsh"),
}


def _client_ids(ask: Ask, server: str) -> list[str]:
    try:
        result = ask("server.clients", name=server)
    except Exception:  # completion must never break the prompt
        return []
    return [str(c) for c in result.get("clients", [])]


def _instance_names(ask: Ask, kind: str) -> list[str]:
    try:
        result = ask("list")
    except Exception:  # completion must never break the prompt
        return []
    return [str(i["name"]) for i in result.get("instances", []) if i.get("kind") == kind]


def print_candidates(line: str) -> int:
    """``MCCTL_COMPLETE="WORDS" mcctl``: print what may come after WORDS
    (newline-separated, as the bash script passes them), one per line."""
    words = [w for w in line.split("\n") if w]
    socket = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--socket"), None)

    def ask(cmd: str, **params: object) -> dict[str, Any]:
        with ControlClient(socket, timeout=COMPLETION_TIMEOUT) as client:
            return client.request(cmd, **params)

    for word in candidates(words, ask):
        print(word)
    return 0


#: How long a Tab waits for mcd's instance names or client ids.
COMPLETION_TIMEOUT = 2.0


def script(shell: str) -> str:
    bash = _BASH.replace("@OPTIONS@", " ".join(OPTIONS))
    return bash if shell == "bash" else _ZSH + bash
