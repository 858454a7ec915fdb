"""Shell completion scripts for mcctl (``mcctl completion bash|zsh``)."""

from __future__ import annotations

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
)

_BASH = """\
# bash completion for mcctl; install with:
#   mcctl completion bash > ~/.local/share/bash-completion/completions/mcctl
_mcctl() {
    local cur words=() w
    cur="${COMP_WORDS[COMP_CWORD]}"
    for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
        case "$w" in --socket|--timeout|--name|--to|--since|--kind) ;; --*) ;; *) words+=("$w") ;; esac
    done
    if [[ "$cur" == --* ]]; then COMPREPLY=($(compgen -W "@OPTIONS@" -- "$cur")); return; fi
    case "${#words[@]}:${words[0]}:${words[1]}" in
        0::) COMPREPLY=($(compgen -W "@TOP@" -- "$cur")) ;;
        1:client:) COMPREPLY=($(compgen -W "@CLIENT_VERBS@" -- "$cur")) ;;
        1:server:) COMPREPLY=($(compgen -W "@SERVER_VERBS@" -- "$cur")) ;;
        2:client:set|2:client:get) COMPREPLY=($(compgen -W "@CLIENT_KEYS@" -- "$cur")) ;;
        2:server:set|2:server:get) COMPREPLY=($(compgen -W "@SERVER_KEYS@" -- "$cur")) ;;
        1:daemon:) COMPREPLY=($(compgen -W "@DAEMON_VERBS@" -- "$cur")) ;;
        1:wait:) COMPREPLY=($(compgen -W "client server @STATES@" -- "$cur")) ;;
        2:wait:client) COMPREPLY=($(compgen -W "@CLIENT_STATES@" -- "$cur")) ;;
        2:wait:server) COMPREPLY=($(compgen -W "@SERVER_STATES@" -- "$cur")) ;;
        1:help:) COMPREPLY=($(compgen -W "@HELP_TOPICS@" -- "$cur")) ;;
        1:completion:) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
    esac
}
complete -F _mcctl mcctl
"""

_ZSH = """\
#compdef mcctl
# zsh completion for mcctl: uses the bash one through bashcompinit; install with:
#   mcctl completion zsh > "${fpath[1]}/_mcctl"
autoload -U +X bashcompinit && bashcompinit
"""


def script(shell: str) -> str:
    bash = (
        _BASH.replace("@OPTIONS@", " ".join(OPTIONS))
        .replace("@TOP@", " ".join(TOP_COMMANDS))
        .replace("@DAEMON_VERBS@", " ".join(DAEMON_VERBS))
        .replace("@HELP_TOPICS@", " ".join(HELP_TOPICS))
        .replace("@CLIENT_VERBS@", " ".join(CLIENT_VERBS))
        .replace("@SERVER_VERBS@", " ".join(SERVER_VERBS))
        .replace("@CLIENT_KEYS@", " ".join(CLIENT_KEYS))
        .replace("@SERVER_KEYS@", " ".join(SERVER_KEYS))
        .replace("@STATES@", " ".join((*CLIENT_STATES, *SERVER_STATES)))
        .replace("@CLIENT_STATES@", " ".join(CLIENT_STATES))
        .replace("@SERVER_STATES@", " ".join(SERVER_STATES))
    )
    return bash if shell == "bash" else _ZSH + bash
