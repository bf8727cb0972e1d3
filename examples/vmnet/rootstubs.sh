#!/bin/sh
# rootstubs.sh DIR writes, into DIR, the helpers rootlesskit needs to run
# as root on a machine without subordinate ids for root: newuidmap and
# newgidmap, which (as root) write /proc/PID/{uid,gid}_map directly, and
# getsubids, which reports 100000-165535 as every user's subordinate
# range. Put DIR first in PATH; /etc/subuid and /etc/subgid are not
# touched. It also writes a pasta wrapper that adds --runas 0 (pasta
# refuses to run as root without it) and, if $PASTA_PIDFILE is set,
# --pid "$PASTA_PIDFILE".
set -eu
dir=${1:?usage: rootstubs.sh DIR}
mkdir -p "$dir"
cat >"$dir/newuidmap" <<'STUB'
#!/bin/sh
pid=$1; shift; map=""
while [ $# -ge 3 ]; do map="$map$1 $2 $3
"; shift 3; done
printf '%s' "$map" >/proc/$pid/uid_map
STUB
sed 's/uid_map/gid_map/' "$dir/newuidmap" >"$dir/newgidmap"
printf '#!/bin/sh\n[ "$1" = -g ] && shift\necho "0: $1 100000 65536"\n' >"$dir/getsubids"
printf '#!/bin/sh\nexec /usr/bin/pasta --runas 0 ${PASTA_PIDFILE:+--pid "$PASTA_PIDFILE"} "$@"\n' >"$dir/pasta"
chmod +x "$dir/newuidmap" "$dir/newgidmap" "$dir/getsubids" "$dir/pasta"
