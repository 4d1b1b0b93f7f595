#!/usr/bin/env bash
# Container start command for RunPod (and any host that wants SSH next to the server).
#
#   start.sh [command ...]      default command: lda serve
#
# - Checks that the model volume (LDA_MODELS_DIR, default /models) and the cache directories in it
#   are writable, prints the volume's free space, and refuses to start when they are not: a pod
#   whose volume is missing or read-only would otherwise fail mid-download or fill the container
#   disk with tens of GB of weights.
# - With LDA_SELFTEST=1, runs `lda selftest` first and starts nothing if it fails.
# - Warns when the server would listen on every interface without an API key (LDA_API_KEY).
# - When PUBLIC_KEY is set (RunPod puts the account's SSH keys there), also starts sshd for the
#   user running this script; sshd runs unprivileged, so its config and host keys live in ~/.ssh.
# - LDA_RAY_START=head starts a Ray head on this node (port RAY_PORT, default 6379) before the
#   server, whose ranks then run on the cluster (DISTRIBUTED_EXECUTOR_BACKEND=ray unless set);
#   LDA_RAY_START=worker joins the cluster at RAY_ADDRESS (host:port) and runs no server, lending this
#   node's GPUs to the head's server (docs/deploy/scale-out.md).
# - Forwards SIGTERM/SIGINT to the server and exits with the server's exit code, so stopping the
#   pod shuts vLLM down cleanly instead of killing it mid-request.
set -euo pipefail

MODELS_DIR="${LDA_MODELS_DIR:-/models}"
SSH_PORT="${SSH_PORT:-22}"
SSH_LISTEN_ADDRESS="${SSH_LISTEN_ADDRESS:-0.0.0.0}"
SSHD_DIR="${HOME}/.ssh/sshd"

server_pid=""
sshd_pid=""
ray_command=()

log() {
    printf 'start.sh: %s\n' "$*" >&2
}

# True when this user can create files in $1 (made if missing). A real write, not `test -w`, which
# knows nothing of a read-only mount's quirks or of full disks.
can_write() {
    local dir="$1" probe
    mkdir -p "$dir" 2>/dev/null || return 1
    probe="$dir/.lda-write-test.$$"
    { : >"$probe"; } 2>/dev/null || return 1
    rm -f "$probe"
}

# "<free> GiB free of <size> GiB on <mount point>" for the filesystem holding $1.
free_space() {
    df -Pk "$1" | awk 'NR == 2 { printf "%.1f GiB free of %.1f GiB on %s", $4 / 1048576, $2 / 1048576, $6 }'
}

# The model volume and every cache directory must be writable; otherwise refuse with what to do.
check_storage() {
    local name dir unwritable=()
    can_write "$MODELS_DIR" || unwritable+=("LDA_MODELS_DIR=${MODELS_DIR}")
    for name in HF_HOME LDA_CACHE_DIR VLLM_CACHE_ROOT; do
        dir="${!name:-}"
        if [[ -n "$dir" ]] && ! can_write "$dir"; then
            unwritable+=("${name}=${dir}")
        fi
    done
    if [[ ${#unwritable[@]} -gt 0 ]]; then
        log "ERROR: not writable by $(id -un) (uid $(id -u)): ${unwritable[*]}"
        log "refusing to start: model downloads and compile caches need them, and must not fill the container disk."
        log "Fix: mount a volume at ${MODELS_DIR} that uid $(id -u) can write (RunPod: the template's volume mount path;" \
            "docker: -v lda-models:${MODELS_DIR}), or point these variables at writable directories."
        exit 1
    fi
    log "model volume ${MODELS_DIR}: $(free_space "$MODELS_DIR")"
    # Same device as / means no volume is mounted there: the files live on the container disk.
    if [[ "$(stat -c %d "$MODELS_DIR")" == "$(stat -c %d /)" ]]; then
        log "WARNING: ${MODELS_DIR} is on the container's own disk, not a mounted volume: downloads are lost when the container is removed"
    fi
}

# Warns when `lda serve` would listen on every interface with no API key: anyone who can reach the
# port could then generate with the models. Host and key as the server resolves them: flags over
# HOST / LDA_API_KEY, and the server's own default host (127.0.0.1).
warn_if_open() {
    [[ "${1:-}" == lda && "${2:-}" == serve ]] || return 0
    shift 2
    local host="${HOST:-127.0.0.1}" port="${PORT:-8000}" key="${LDA_API_KEY:-}" previous="" arg
    for arg in "$@"; do
        case "$previous" in
            --host) host="$arg" ;;
            --port) port="$arg" ;;
            --api-key) key="$arg" ;;
        esac
        case "$arg" in
            --host=*) host="${arg#--host=}" ;;
            --port=*) port="${arg#--port=}" ;;
            --api-key=*) key="${arg#--api-key=}" ;;
        esac
        previous="$arg"
    done
    case "$host" in
        0.0.0.0 | :: | "[::]" | "*") ;;
        *) return 0 ;;
    esac
    if [[ -z "$key" ]]; then
        log "WARNING: the server listens on ${host}:${port} (every interface) without an API key: anyone who can reach" \
            "the port can use it. Set LDA_API_KEY (RunPod: a secret, {{ RUNPOD_SECRET_lda_api_key }}); clients then send" \
            "'Authorization: Bearer <key>'."
    fi
}

# LDA_SELFTEST=1: `lda selftest` before the server, while the GPU is still free (on a pod, the
# server holds most of its memory once up). A failure stops here, with selftest's status.
run_selftest() {
    log "LDA_SELFTEST=1: running lda selftest before the server"
    local status=0
    lda selftest || status=$?
    if [[ $status -ne 0 ]]; then
        log "lda selftest failed (status ${status}); not starting the server"
        exit "$status"
    fi
    log "lda selftest passed"
}

# LDA_RAY_START: the node's part in a Ray cluster. Sets the command to run (a worker's is `ray start
# --block`, which holds the node in the cluster until stopped) or starts the head before the server.
setup_ray() {
    local role="${LDA_RAY_START:-}" port="${RAY_PORT:-6379}"
    case "$role" in
        "") return 0 ;;
        head)
            log "LDA_RAY_START=head: starting a Ray head on port ${port}"
            ray start --head --port="$port" --disable-usage-stats
            # "auto": the cluster started on this machine, whatever address its head bound.
            export RAY_ADDRESS="${RAY_ADDRESS:-auto}"
            export DISTRIBUTED_EXECUTOR_BACKEND="${DISTRIBUTED_EXECUTOR_BACKEND:-ray}"
            ;;
        worker)
            if [[ -z "${RAY_ADDRESS:-}" ]]; then
                log "ERROR: LDA_RAY_START=worker needs RAY_ADDRESS, the head's host:port (e.g. 10.0.0.1:6379)"
                exit 2
            fi
            log "LDA_RAY_START=worker: joining the Ray cluster at ${RAY_ADDRESS}; no server on this node"
            ray_command=(ray start --address="$RAY_ADDRESS" --block --disable-usage-stats)
            ;;
        *)
            log "ERROR: LDA_RAY_START must be head or worker; got '${role}'"
            exit 2
            ;;
    esac
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
    for name in PATH LDA_MODELS_DIR HF_HOME LDA_CACHE_DIR VLLM_CACHE_ROOT; do
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

    check_storage

    if [[ -n "${PUBLIC_KEY:-}" ]]; then
        start_sshd
    fi

    setup_ray
    if [[ ${#ray_command[@]} -gt 0 ]]; then
        set -- "${ray_command[@]}"
    elif [[ $# -eq 0 ]]; then
        set -- lda serve
    fi
    if [[ "${LDA_SELFTEST:-0}" == 1 ]]; then
        run_selftest
    fi
    warn_if_open "$@"
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
