#!/bin/sh
# packaging/build-deb.sh OUTDIR: build OUTDIR/tportknockd_VERSION_all.deb with dpkg-deb.
# The tree is what `packaging/install.sh install` stages with PREFIX=/usr (the same files as
# `make install`), plus Debian's copyright and changelog, and the maintainer scripts of
# packaging/debian/. No build dependency beyond dpkg.
set -eu
umask 022

top=$(cd "$(dirname "$0")/.." && pwd)
outdir=$(mkdir -p "${1:-$top/dist}" && cd "${1:-$top/dist}" && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$top/src/tportknockd/__init__.py")
changelog_version=$(sed -n '1s/^tportknockd (\([^)]*\)).*/\1/p' "$top/packaging/debian/changelog")
if [ "$version" != "$changelog_version" ]; then
    echo "version $version but packaging/debian/changelog is at $changelog_version:" \
        "add a changelog entry" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tportknockd-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

DESTDIR=$root PREFIX=/usr sh "$top/packaging/install.sh" install
doc=$root/usr/share/doc/tportknockd
install -m 0644 "$top/packaging/debian/copyright" "$doc/copyright"
# A native package: its Debian changelog is changelog.gz.
gzip -9 -n -c "$top/packaging/debian/changelog" > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

installed_size=$(du -s -k --apparent-size "$root" | cut -f1)
install -d "$root/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    "$top/packaging/debian/control" > "$root/DEBIAN/control"
install -m 0644 "$top/packaging/debian/conffiles" "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$top/packaging/debian/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort \
    | xargs md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"

# Reproducible: every file dated by the changelog's last entry.
stamp=$(sed -n 's/^ -- .*>  //p' "$top/packaging/debian/changelog" | head -n 1)
find "$root" -exec touch -h -d "$stamp" {} +
SOURCE_DATE_EPOCH=$(date -d "$stamp" +%s)
export SOURCE_DATE_EPOCH

deb=$outdir/tportknockd_${version}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
