#!/usr/bin/env bash
# NAT lab from the shell: the same topology as tests/netlab/lab.py.
#
#   tests/netlab/netlab.sh up [--symmetric] [--wan-prefix 10.99.0]   -> prints the lab prefix
#   tests/netlab/netlab.sh exec PREFIX ROLE CMD...                   (ROLE: inet relay r1 r2 h1 h2)
#   tests/netlab/netlab.sh down PREFIX
#   tests/netlab/netlab.sh selftest   (build, punch TCP through both NATs, tear down)
#
# Namespaces are named PREFIX-ROLE with a random PREFIX, so parallel labs do not collide.
# veth pairs are created directly inside the namespaces (ip -n), never in the host namespace.
# "up" tears down whatever it built if any step fails. Needs root, iproute2 and nftables.
set -euo pipefail

ROLES="inet relay r1 r2 h1 h2"

die() { echo "netlab: $*" >&2; exit 1; }

down() {
  local p=$1 role pid
  for role in $ROLES; do
    if ip netns list | grep -qw "$p-$role"; then
      for pid in $(ip netns pids "$p-$role" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    fi
  done
  for role in $ROLES; do ip netns del "$p-$role" 2>/dev/null || true; done
}

ruleset() {
  local masq=masquerade
  [ "$1" = symmetric ] && masq="masquerade fully-random"
  cat <<NFT
table ip gbnat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" $masq
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        ct status dnat accept
    }
    chain input {
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        iifname "lan" accept
        ct state established,related accept
    }
}
NFT
}

up() {
  local mode=port-preserving wan=10.99.0
  while [ $# -gt 0 ]; do
    case $1 in
      --symmetric) mode=symmetric ;;
      --wan-prefix) wan=$2; shift ;;
      *) die "unknown option $1" ;;
    esac
    shift
  done
  [ "$(id -u)" = 0 ] || die "must run as root"
  command -v nft >/dev/null || die "nft missing: apt-get install -y nftables"
  local p="gb$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  trap 'down '"$p"'; die "build failed; torn down"' ERR
  local role n net
  for role in $ROLES; do
    ip netns add "$p-$role"
    ip -n "$p-$role" link set lo up
  done
  ip -n "$p-inet" link add br0 type bridge
  ip -n "$p-inet" link set br0 up
  for pair in relay:10 r1:1 r2:2; do
    role=${pair%%:*}; n=${pair##*:}
    ip -n "$p-$role" link add wan type veth peer name "$role" netns "$p-inet"
    ip -n "$p-inet" link set "$role" master br0
    ip -n "$p-inet" link set "$role" up
    ip -n "$p-$role" addr add "$wan.$n/24" dev wan
    ip -n "$p-$role" link set wan up
  done
  for n in 1 2; do
    net=192.168.$n
    ip -n "$p-r$n" link add lan type veth peer name lan netns "$p-h$n"
    ip -n "$p-r$n" addr add "$net.1/24" dev lan
    ip -n "$p-h$n" addr add "$net.10/24" dev lan
    ip -n "$p-r$n" link set lan up
    ip -n "$p-h$n" link set lan up
    ip -n "$p-h$n" route add default via "$net.1"
    ip netns exec "$p-r$n" sysctl -qw net.ipv4.ip_forward=1
    ruleset "$mode" | ip netns exec "$p-r$n" nft -f -
  done
  trap - ERR
  echo "$p"
}

selftest() {
  local here p ok=0
  here=$(cd "$(dirname "$0")" && pwd)
  for mode in "" --symmetric; do
    p=$(up $mode)
    local start
    start=$(python3 -c 'import time; print(time.time() + 0.5)')
    ip netns exec "$p-h1" python3 "$here/simopen.py" 40001 10.99.0.2 40002 4 "$start" >"/tmp/$p.h1" &
    local a=$!
    ip netns exec "$p-h2" python3 "$here/simopen.py" 40002 10.99.0.1 40001 4 "$start" >"/tmp/$p.h2" &
    local b=$!
    local ra=0 rb=0
    wait $a || ra=$?
    wait $b || rb=$?
    echo "${mode:-port-preserving}: h1 $(cat "/tmp/$p.h1") h2 $(cat "/tmp/$p.h2")"
    rm -f "/tmp/$p.h1" "/tmp/$p.h2"
    down "$p"
    if [ -z "$mode" ] && { [ $ra != 0 ] || [ $rb != 0 ]; }; then ok=1; fi
    if [ -n "$mode" ] && { [ $ra = 0 ] || [ $rb = 0 ]; }; then ok=1; fi
  done
  [ $ok = 0 ] && echo "selftest: OK" || { echo "selftest: FAILED"; return 1; }
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) [ $# = 2 ] || die "usage: down PREFIX"; down "$2" ;;
  exec) [ $# -ge 4 ] || die "usage: exec PREFIX ROLE CMD..."; p=$2 role=$3; shift 3
        exec ip netns exec "$p-$role" "$@" ;;
  selftest) selftest ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
