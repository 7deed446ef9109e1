#!/usr/bin/env bash
# Several hosts on one machine: one network namespace per host, each joined by a veth pair to
# one bridge, every host with its own address in a private /24. A test cuts a host off the
# network (its veth taken down: packets vanish, no reset, as when a cable or a switch port
# dies) and restores it. Needs root (or sudo) and iproute2's `ip`.
#
# usage: infra/netns.sh create HOST...   a namespace per HOST, on the bridge (idempotent)
#        infra/netns.sh addr HOST         the host's address
#        infra/netns.sh gateway           the bridge's address (the machine's side: servers
#                                         that stay outside the namespaces listen on it)
#        infra/netns.sh name HOST         the namespace's name (for `ip netns exec`)
#        infra/netns.sh exec HOST CMD...  run CMD inside the host's namespace
#        infra/netns.sh cut HOST          take the host off the network
#        infra/netns.sh restore HOST      put it back
#        infra/netns.sh state HOST        prints `up` or `cut`
#        infra/netns.sh list              the hosts: name, address, state
#        infra/netns.sh destroy           end the processes inside, delete the namespaces, the
#                                         veth pairs and the bridge (idempotent)
#        infra/netns.sh gc                destroy every network whose owner process is gone
#
# Settings: INDEXIFY_NETNS_PREFIX names everything this network creates (default `ixn0`; `ixn`
# then 1-4 of [a-z0-9]: namespace `<prefix>-<host>`, bridge `<prefix>-br`, the machine's end
# of host HOST's veth `<prefix>-<host>`; HOST is 1-7 of [a-z0-9], starting with a letter).
# INDEXIFY_NETNS_SUBNET is the /24's first three octets (default 10.231.0; the bridge is .1,
# hosts get .2 upwards); `create` refuses a subnet the machine already uses elsewhere.
# INDEXIFY_NETNS_OWNER is a PID: once it is gone, `gc` destroys the network (tests set it, so
# a network survives no killed test run for long).
set -euo pipefail

PREFIX=${INDEXIFY_NETNS_PREFIX:-ixn0}
SUBNET=${INDEXIFY_NETNS_SUBNET:-10.231.0}
STATE_ROOT=${INDEXIFY_NETNS_STATE_DIR:-/run/indexify-netns}
STATE_DIR="$STATE_ROOT/$PREFIX"
BRIDGE="$PREFIX-br"
IP=$(command -v ip || echo /usr/sbin/ip)

log() { printf '[netns] %s\n' "$*" >&2; }
die() {
  printf '[netns] ERROR: %s\n' "$*" >&2
  exit 1
}

[[ $PREFIX =~ ^ixn[a-z0-9]{1,4}$ ]] || die "INDEXIFY_NETNS_PREFIX must be 'ixn' and 1-4 of [a-z0-9], not '$PREFIX'"
[[ $SUBNET =~ ^10\.([0-9]{1,3})\.([0-9]{1,3})$ ]] && ((BASH_REMATCH[1] < 256 && BASH_REMATCH[2] < 256)) ||
  die "INDEXIFY_NETNS_SUBNET must be three octets of 10.0.0.0/8, e.g. 10.231.0, not '$SUBNET'"
[[ -x $IP ]] || die "iproute2's ip is not installed (apt-get install iproute2)"

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}
ipc() { as_root "$IP" "$@"; }

check_host() {
  [[ ${1:-} =~ ^[a-z][a-z0-9]{0,6}$ ]] || die "a host name is 1-7 of [a-z0-9] starting with a letter, not '${1:-}'"
}
ns_name() { echo "$PREFIX-$1"; }
veth() { echo "$PREFIX-$1"; }
ns_exists() { [[ -e /run/netns/$(ns_name "$1") ]]; }
link_exists() { ipc link show dev "$1" >/dev/null 2>&1; }

# the hosts of this network, one per line
hosts() {
  local ns
  for ns in /run/netns/"$PREFIX"-*; do
    [[ -e $ns ]] || continue
    echo "${ns##*/"$PREFIX"-}"
  done
}

# host_addr HOST: the address of the host's eth0, or nothing
host_addr() {
  ns_exists "$1" || return 0
  ipc -n "$(ns_name "$1")" -4 -o addr show dev eth0 2>/dev/null | awk '{ sub("/.*", "", $4); print $4 }'
}

# serialise changes to this network across concurrent scripts (fd 8)
lock() {
  as_root mkdir -p "$STATE_DIR"
  exec 8>"$STATE_DIR/lock"
  flock 8
}

subnet_in_use_elsewhere() {
  ipc -4 -o addr show | awk '{ print $2, $4 }' | grep -v "^$BRIDGE " | grep -q " ${SUBNET//./\\.}\." && return 0
  ipc -4 route show | grep -v " dev $BRIDGE " | grep -q "^${SUBNET//./\\.}\." && return 0
  return 1
}

ensure_bridge() {
  if ! link_exists "$BRIDGE"; then
    if subnet_in_use_elsewhere; then
      [[ -n $(hosts) ]] || as_root rm -rf "$STATE_DIR"
      die "$SUBNET.0/24 is already used on this machine: choose another INDEXIFY_NETNS_SUBNET"
    fi
    ipc link add "$BRIDGE" type bridge
    log "bridge $BRIDGE ($SUBNET.1/24)"
  fi
  ipc -4 -o addr show dev "$BRIDGE" | grep -q " $SUBNET.1/24 " || ipc addr add "$SUBNET.1/24" dev "$BRIDGE"
  ipc link set "$BRIDGE" up
  echo "$SUBNET" >"$STATE_DIR/subnet"
  if [[ -n ${INDEXIFY_NETNS_OWNER:-} ]]; then echo "$INDEXIFY_NETNS_OWNER" >"$STATE_DIR/owner"; fi
}

# the lowest host number of the subnet no host of this network has
free_number() {
  local used=" " h a n
  for h in $(hosts); do
    a=$(host_addr "$h")
    [[ -n $a ]] && used+="${a##*.} "
  done
  for ((n = 2; n < 255; n++)); do
    [[ $used == *" $n "* ]] || {
      echo "$n"
      return 0
    }
  done
  die "no free address left in $SUBNET.0/24"
}

create_host() {
  local h=$1 ns v addr
  ns=$(ns_name "$h")
  v=$(veth "$h")
  ns_exists "$h" || ipc netns add "$ns"
  if ! link_exists "$v"; then
    # the host's end is created inside its namespace directly: `eth0` there never meets the
    # machine's own eth0
    ipc link add "$v" type veth peer name eth0 netns "$ns"
  fi
  ipc link set "$v" master "$BRIDGE"
  ipc link set "$v" up
  addr=$(host_addr "$h")
  if [[ -z $addr ]]; then
    addr="$SUBNET.$(free_number)"
    ipc -n "$ns" addr add "$addr/24" dev eth0
  fi
  ipc -n "$ns" link set lo up
  ipc -n "$ns" link set eth0 up
  log "host $h: namespace $ns, address $addr"
}

cmd_create() {
  (($# > 0)) || die "name the hosts to create"
  local h
  for h in "$@"; do check_host "$h"; done
  lock
  ensure_bridge
  for h in "$@"; do create_host "$h"; done
}

need_host() {
  check_host "${1:-}"
  ns_exists "$1" || die "no host '$1' in network $PREFIX (create it first)"
}

cmd_cut() {
  need_host "${1:-}"
  ipc link set "$(veth "$1")" down
  log "host $1 cut off ($(host_addr "$1"))"
}

cmd_restore() {
  need_host "${1:-}"
  ipc link set "$(veth "$1")" master "$BRIDGE"
  ipc link set "$(veth "$1")" up
  log "host $1 restored ($(host_addr "$1"))"
}

host_state() {
  if ipc -o link show dev "$(veth "$1")" 2>/dev/null | grep -q '[<,]UP[,>]'; then echo up; else echo cut; fi
}

# ns_pids: the processes inside this network's namespaces
ns_pids() {
  local h
  for h in $(hosts); do ipc netns pids "$(ns_name "$h")" 2>/dev/null || true; done
}

# end_processes: SIGTERM what runs inside the namespaces (all at once: brokers that lose
# their quorum one by one would each wait for it), SIGKILL what is left after 10 s
end_processes() {
  local pids i
  pids=$(ns_pids)
  [[ -n $pids ]] || return 0
  log "ending the processes in network $PREFIX: $(echo "$pids" | paste -sd ' ' -)"
  # shellcheck disable=SC2086  # a list of PIDs
  as_root kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ -n $(ns_pids) ]] || return 0
    sleep 0.1
  done
  pids=$(ns_pids)
  log "still running after 10 s, killed: $(echo "$pids" | paste -sd ' ' -)"
  # shellcheck disable=SC2086
  [[ -z $pids ]] || as_root kill -KILL $pids 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    [[ -n $(ns_pids) ]] || return 0
    sleep 0.1
  done
}

cmd_destroy() {
  lock
  local h
  end_processes
  for h in $(hosts); do
    ! link_exists "$(veth "$h")" || ipc link del "$(veth "$h")"
    ipc netns del "$(ns_name "$h")" 2>/dev/null || true
  done
  ! link_exists "$BRIDGE" || ipc link del "$BRIDGE"
  # a veth whose namespace went first (deleted by hand)
  for h in $(ipc -o link show type veth 2>/dev/null | awk -F': ' '{ sub("@.*", "", $2); print $2 }' | grep "^$PREFIX-" || true); do
    ipc link del "$h" 2>/dev/null || true
  done
  as_root rm -rf "$STATE_DIR"
  log "network $PREFIX destroyed"
}

cmd_list() {
  local h
  for h in $(hosts); do
    printf '%s %s %s %s\n' "$h" "$(ns_name "$h")" "$(host_addr "$h")" "$(host_state "$h")"
  done
}

cmd_gc() {
  local dir owner
  for dir in "$STATE_ROOT"/ixn*; do
    [[ -f $dir/owner ]] || continue
    owner=$(tr -dc '0-9' <"$dir/owner")
    [[ -n $owner ]] && kill -0 "$owner" 2>/dev/null && continue
    log "network ${dir##*/}: its owner (pid ${owner:-?}) is gone"
    INDEXIFY_NETNS_PREFIX=${dir##*/} INDEXIFY_NETNS_SUBNET=$(cat "$dir/subnet" 2>/dev/null || echo "$SUBNET") \
      INDEXIFY_NETNS_OWNER='' "${BASH_SOURCE[0]}" destroy
  done
}

case ${1:-} in
  create) shift && cmd_create "$@" ;;
  addr)
    need_host "${2:-}"
    host_addr "$2"
    ;;
  gateway) echo "$SUBNET.1" ;;
  name)
    check_host "${2:-}"
    ns_name "$2"
    ;;
  exec)
    need_host "${2:-}"
    ns=$(ns_name "$2")
    shift 2
    exec "$IP" netns exec "$ns" "$@"
    ;;
  cut) cmd_cut "${2:-}" ;;
  restore) cmd_restore "${2:-}" ;;
  state)
    need_host "${2:-}"
    host_state "$2"
    ;;
  list) cmd_list ;;
  destroy) cmd_destroy ;;
  gc) cmd_gc ;;
  *)
    sed -n '/^# usage:/,/^# Settings:/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
