#!/usr/bin/env bash
# Run a command in a brand-new Debian 12 root, as on a machine nothing was ever installed on.
#
#   bash scripts/fresh-root.sh 'bash scripts/test.sh'
#   bash scripts/fresh-root.sh --commit HEAD~3 'bash scripts/demo.sh'   # another commit
#   bash scripts/fresh-root.sh --keep 'bash scripts/demo.sh'            # keep the root to look inside
#   bash scripts/fresh-root.sh --no-cache 'bash scripts/test.sh'        # cold: no download or compiler cache
#
# Every run:
#   1. unpacks a minimal Debian 12 (debootstrap --variant=minbase bookworm, from the mirror this
#      machine's apt uses; made once and kept as a tarball in $FRESH_ROOT_CACHE) into a new
#      directory under $FRESH_ROOT_TMP;
#   2. `git clone`s the committed HEAD (or --commit) of this repository into /work/libsae inside
#      it: uncommitted changes are not taken, as in CI;
#   3. runs the command there as root, with a clean environment, and prints its exit status and
#      wall time; then unmounts and deletes the root (unless --keep).
#
# Taken from this machine, because every new machine of this kind has them: how it reaches the
# package registries (CA certificates, /etc/pip.conf, apt's Acquire and proxy settings, the PIP_*
# and proxy variables). Shared with this machine, because they change no result: download caches
# (apt's archives, pip's cache, libsae's wheelhouse of PyPI files that scripts/python-env.sh
# keeps) and the compiler cache (ccache). Nothing else: no installed package, build tree or venv
# of this machine is visible inside, so a missing install step fails here as on a new machine.
# Needs root (chroot, mounts) and debootstrap (installed on first use).
set -euo pipefail

usage() { sed -n '2,23p' "$0"; }
keep=0 caches=1 commit=HEAD
while [[ $# -gt 1 ]]; do
  case "$1" in
    --keep) keep=1; shift ;;
    --no-cache) caches=0; shift ;;
    --commit) commit=$2; shift 2 ;;
    *) break ;;
  esac
done
if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then usage; exit 2; fi
cmd=$1

die() { echo "fresh-root: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "needs root (it makes a chroot and bind mounts)"
top=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel) || die "not inside the libsae repository"
rev=$(git -C "$top" rev-parse --verify "$commit^{commit}") || die "no commit '$commit'"

cache_dir=${FRESH_ROOT_CACHE:-/var/cache/libsae-fresh-root}
tmp_dir=${FRESH_ROOT_TMP:-/tmp}
base=$cache_dir/bookworm-minbase.tar

# The host's Debian mirror, as its apt sources name it (deb822 or one-line format).
host_mirror() {
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [[ -n "$m" ]] || m=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "$m"
}

make_base() {
  command -v debootstrap >/dev/null || {
    echo "fresh-root: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  }
  local mirror staging t0=$SECONDS
  mirror=$(host_mirror)
  [[ -n "$mirror" ]] || die "cannot find this machine's Debian mirror in /etc/apt"
  mkdir -p "$cache_dir"
  staging=$(mktemp -d "$tmp_dir/fresh-root-base.XXXXXX")
  chmod 0755 "$staging"
  echo "fresh-root: making the base root once: debootstrap --variant=minbase bookworm $mirror" >&2
  if ! debootstrap --variant=minbase bookworm "$staging" "$mirror" >"$cache_dir/debootstrap.log" 2>&1; then
    rm -rf --one-file-system "$staging"
    die "debootstrap failed; its log: $cache_dir/debootstrap.log"
  fi
  # The same suites as this machine (security and updates too), from the same sources file.
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    cp /etc/apt/sources.list.d/*.sources "$staging/etc/apt/sources.list.d/"
    : >"$staging/etc/apt/sources.list"
  elif [[ -f /etc/apt/sources.list ]]; then
    cp /etc/apt/sources.list "$staging/etc/apt/sources.list"
  fi
  tar -C "$staging" -cf "$base.part" . && mv "$base.part" "$base"
  rm -rf --one-file-system "$staging"
  echo "fresh-root: base root made in $((SECONDS - t0)) s ($base)" >&2
}
[[ -s $base ]] || make_base

root=$(mktemp -d "$tmp_dir/fresh-root.XXXXXX")
mounts=()
# The processes running inside the root (a command's background jobs outlive it: test.sh's
# sanitizer build after a failed test, say).
inside() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    [[ $r == "$root" || $r == "$root"/* ]] && echo "${p#/proc/}"
  done
}
cleanup() {
  local i pids
  pids=$(inside)
  if [[ -n "$pids" ]]; then
    kill -TERM $pids 2>/dev/null || true
    sleep 2
    pids=$(inside)
    [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
  fi
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  if awk -v r="$root/" 'index($2, r) == 1 {found = 1} END {exit !found}' /proc/mounts; then
    echo "fresh-root: something is still mounted under $root; left in place" >&2
  elif [[ $keep -eq 1 ]]; then
    echo "fresh-root: root kept at $root (chroot $root /bin/bash; delete it with rm -rf --one-file-system)" >&2
  else
    rm -rf --one-file-system "$root"
  fi
}
trap 'rc=$?; set +e; cleanup; exit $rc' EXIT
bind() {  # bind <host dir> <dir inside the root>
  mkdir -p "$1" "$root$2"
  mount --bind "$1" "$root$2"
  mounts+=("$root$2")
}

tar -C "$root" -xf "$base"
chmod 0755 "$root"  # the chroot's "/": mktemp's 0700 would lock out every user but root
cp /etc/resolv.conf "$root/etc/resolv.conf"

# How this machine reaches the registries.
mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates" "$root/etc/apt/apt.conf.d"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
[[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$root/etc/pip.conf"
for f in /etc/apt/apt.conf.d/*; do
  grep -qiE 'Acquire::|proxy' "$f" 2>/dev/null && cp "$f" "$root/etc/apt/apt.conf.d/"
done
access_env=()
while IFS='=' read -r k v; do
  [[ $k == PIP_* || ${k,,} == http_proxy || ${k,,} == https_proxy || ${k,,} == no_proxy ]] && access_env+=("$k=$v")
done < <(env)

mount -t proc proc "$root/proc"; mounts+=("$root/proc")
mount --rbind /sys "$root/sys"; mount --make-rslave "$root/sys"; mounts+=("$root/sys")
mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"; mounts+=("$root/dev")
if [[ $caches -eq 1 ]]; then
  bind /var/cache/apt/archives /var/cache/apt/archives
  mkdir -p /var/cache/apt/archives/partial
  bind /root/.cache/pip /root/.cache/pip
  bind /root/.cache/libsae /root/.cache/libsae     # scripts/python-env.sh's wheelhouse
  bind /root/.cache/ccache /root/.cache/ccache
fi

mkdir -p "$root/work"
git clone -q "$top" "$root/work/libsae"
git -C "$root/work/libsae" checkout -q "$rev"

echo "fresh-root: running '$cmd' on $(git -C "$top" log -1 --format='%h %s' "$rev" | cut -c1-80)" >&2
echo "fresh-root: in a new Debian 12 root $root (caches: $([[ $caches -eq 1 ]] && echo shared || echo none))" >&2
start=$SECONDS
set +e
chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CI=true "${access_env[@]}" \
  /bin/bash -c "cd /work/libsae && $cmd" </dev/null
status=$?
set -e
echo "fresh-root: '$cmd' exited $status after $((SECONDS - start)) s" >&2
exit $status
