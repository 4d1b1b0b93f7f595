#!/usr/bin/env bash
# Container start command for RunPod (and any host that wants SSH next to the server).
#
#   start.sh [command ...]      default command: lda serve
#
# - Starts the server (configured only by environment variables, see deploy/runpod/README.md).
# - When PUBLIC_KEY is set (RunPod puts the account's SSH keys there), also starts sshd for the
#   user running this script; sshd runs unprivileged, so its config and host keys live in ~/.ssh.
# - Forwards SIGTERM/SIGINT to the server and exits with the server's exit code, so stopping the
#   pod shuts vLLM down cleanly instead of killing it mid-request.
set -euo pipefail

SSH_PORT="${SSH_PORT:-22}"
SSH_LISTEN_ADDRESS="${SSH_LISTEN_ADDRESS:-0.0.0.0}"
SSHD_DIR="${HOME}/.ssh/sshd"

server_pid=""
sshd_pid=""

log() {
    printf 'start.sh: %s\n' "$*" >&2
}

# A cache dir on a volume that this user cannot write (a volume mounted root-owned, say) must not
# stop the pod: fall back to the container disk and say so.
ensure_writable_dir() {
    local var="$1" fallback="$2" dir
    dir="${!var:-}"
    [[ -n "$dir" ]] || return 0
    if mkdir -p "$dir" 2>/dev/null && [[ -w "$dir" ]]; then
        return 0
    fi
    log "WARNING: $var=$dir is not writable by $(id -un); using $fallback (not persistent)"
    mkdir -p "$fallback"
    export "$var=$fallback"
}

start_sshd() {
    local sshd_bin
    sshd_bin="$(command -v sshd || true)"
    [[ -n "$sshd_bin" ]] || sshd_bin=/usr/sbin/sshd
    if [[ ! -x "$sshd_bin" ]]; then
        log "PUBLIC_KEY is set but sshd is not installed; continuing without SSH"
        return 0
    fi

    mkdir -p "${HOME}/.ssh" "$SSHD_DIR"
    chmod 700 "${HOME}/.ssh" "$SSHD_DIR"
    printf '%s\n' "$PUBLIC_KEY" >"${HOME}/.ssh/authorized_keys"
    chmod 600 "${HOME}/.ssh/authorized_keys"

    local kind
    for kind in ed25519 rsa; do
        if [[ ! -f "$SSHD_DIR/ssh_host_${kind}_key" ]]; then
            ssh-keygen -q -t "$kind" -N "" -f "$SSHD_DIR/ssh_host_${kind}_key"
        fi
    done

    # Privilege separation needs this directory only when sshd runs as root.
    if [[ "$(id -u)" -eq 0 ]]; then
        mkdir -p /run/sshd
        chmod 755 /run/sshd
    fi

    cat >"$SSHD_DIR/sshd_config" <<EOF
Port ${SSH_PORT}
ListenAddress ${SSH_LISTEN_ADDRESS}
HostKey ${SSHD_DIR}/ssh_host_ed25519_key
HostKey ${SSHD_DIR}/ssh_host_rsa_key
PidFile ${SSHD_DIR}/sshd.pid
AuthorizedKeysFile ${HOME}/.ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
X11Forwarding no
Subsystem sftp internal-sftp
EOF
    # SSH sessions don't inherit the container's environment: hand over what `lda` commands need.
    local name setenv="SetEnv"
    for name in PATH HF_HOME LDA_CACHE_DIR VLLM_CACHE_ROOT; do
        if [[ -n "${!name:-}" ]]; then
            setenv+=" ${name}=\"${!name}\""
        fi
    done
    if [[ "$setenv" != SetEnv ]]; then
        printf '%s\n' "$setenv" >>"$SSHD_DIR/sshd_config"
    fi

    # sshd re-executes itself, so it needs its absolute path; -D keeps it our child, -e logs to stderr.
    "$sshd_bin" -D -e -f "$SSHD_DIR/sshd_config" &
    sshd_pid=$!
    log "sshd started on port ${SSH_PORT} (pid ${sshd_pid}) for user $(id -un)"
}

# The next two functions run from traps, which shellcheck cannot see.
# shellcheck disable=SC2329
forward() {
    local sig="$1"
    if [[ -z "$server_pid" ]]; then
        log "received SIG${sig} before the server started; exiting"
        exit $((128 + $(kill -l "$sig")))
    fi
    log "received SIG${sig}, forwarding to the server (pid ${server_pid})"
    kill -s "$sig" "$server_pid" 2>/dev/null || true
}

# shellcheck disable=SC2329
stop_sshd() {
    if [[ -n "$sshd_pid" ]]; then
        kill "$sshd_pid" 2>/dev/null || true
        wait "$sshd_pid" 2>/dev/null || true
    fi
}

main() {
    trap 'forward TERM' TERM
    trap 'forward INT' INT
    trap stop_sshd EXIT

    ensure_writable_dir HF_HOME "${HOME}/.cache/huggingface"
    ensure_writable_dir LDA_CACHE_DIR "${HOME}/.cache/lda"
    ensure_writable_dir VLLM_CACHE_ROOT "${HOME}/.cache/vllm"

    if [[ -n "${PUBLIC_KEY:-}" ]]; then
        start_sshd
    fi

    if [[ $# -eq 0 ]]; then
        set -- lda serve
    fi
    log "starting: $*"
    # A non-interactive shell starts background children with SIGINT ignored; undo that, or the
    # forwarded SIGINT would be lost.
    (trap - INT && exec "$@") &
    server_pid=$!

    # `wait` returns early (status > 128) whenever a trapped signal arrives, so keep waiting while
    # the server lives; bash keeps a reaped child's status, so the last `wait` reports it.
    while kill -0 "$server_pid" 2>/dev/null; do
        wait "$server_pid" || true
    done
    local status=0
    wait "$server_pid" || status=$?
    log "server exited with status ${status}"
    exit "$status"
}

main "$@"
