#!/usr/bin/env bash
# Builds a real Consul agent from its Go module, once, and caches it outside the
# repo, keyed by version. Prints the path of the binary on its last line.
#
#   scripts/consul.sh            # build if missing, print the binary's path
#
# Nothing of Consul is committed. `go install github.com/hashicorp/consul@...` fails
# on the module's replace directives, so the module is copied to a writable place
# and the nested modules it replaces are downloaded into the matching subfolders.
set -euo pipefail

version=${CONSUL_VERSION:-1.21.0}
cache=${LODESTAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lodestar}
out="$cache/consul-$version/consul"

if [ -x "$out" ] && "$out" version >/dev/null 2>&1; then
  echo "$out"
  exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

echo "consul.sh: building consul $version (first time only, ~15-25 min on 2 cores)" >&2
dir=$(go mod download -json "github.com/hashicorp/consul@v$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "consul.sh: download of consul $version failed" >&2; exit 1; }
cp -r "$dir" "$work/consul"
chmod -R u+w "$work/consul"

# The nested modules consul's go.mod replaces with ../<folder>, at the versions
# known to build with consul 1.21.0.
nested="api@v1.31.2 envoyextensions@v0.7.3 proto-public@v0.6.2 sdk@v0.16.1 troubleshoot@v0.7.1"
for mv in $nested; do
  m=${mv%@*} v=${mv#*@}
  d=$(go mod download -json "github.com/hashicorp/consul/$m@$v" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$d" ] || { echo "consul.sh: download of consul/$m $v failed" >&2; exit 1; }
  rm -rf "${work:?}/consul/$m"
  cp -r "$d" "$work/consul/$m"
  chmod -R u+w "$work/consul/$m"
done

mkdir -p "$(dirname "$out")"
(cd "$work/consul" && go build -trimpath -o "$out.tmp" .)
mv "$out.tmp" "$out"
echo "$out"
