#!/bin/sh
# Builds the box image (default tag esb/box:latest) from the local esb
# executable, offline: FROM scratch plus esb, its dynamic loader and shared
# objects (as ldd lists them), CA certificates, /etc/passwd and /etc/group,
# an empty /tmp (1777). No registry, no package manager. See docs/box.md.
#
#   deploy/box/build.sh                  # target/release/esb, else target/debug/esb
#   ESB_BIN=/path/to/esb TAG=esb/box:dev deploy/box/build.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tag=${TAG:-esb/box:latest}
esb=${ESB_BIN:-}
if [ -z "$esb" ]; then
    if [ -x "$repo/target/release/esb" ]; then
        esb=$repo/target/release/esb
    else
        esb=$repo/target/debug/esb
    fi
fi
[ -x "$esb" ] || { echo "no esb executable at $esb (cargo build -p esb-cli)" >&2; exit 1; }
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
root=$stage/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/esb"
cp "$esb" "$root/usr/local/bin/esb"

# The loader and every shared object, at the paths the executable names.
# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
# "/lib64/ld-linux-x86-64.so.2 (0x...)".
ldd "$esb" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }
' | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# Debian's /lib64 and /lib are symlinks into /usr on merged-/usr hosts; the
# copies above keep the paths the executable and loader ask for.

cp -L "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/var/lib/esb:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"

tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$stage/rootfs.tar" .
cp "$here/Dockerfile" "$stage/Dockerfile"
docker build -q -t "$tag" "$stage" >/dev/null
echo "built $tag from $esb ($(du -sh "$stage/rootfs.tar" | cut -f1) root)"
