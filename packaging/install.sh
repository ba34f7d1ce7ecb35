#!/bin/sh
# packaging/install.sh install|uninstall: tportknockd's files, system-wide (`make install`,
# `make uninstall`) or staged under DESTDIR (`make deb` stages the package's tree this way,
# so the package and `make install` install the same files).
#
# Variables, GNU style: DESTDIR, PREFIX (default /usr/local), BINDIR, SBINDIR, MANDIR,
# DOCDIR, PYTHONDIR, UNITDIR, SYSCONFDIR (/etc), STATEDIR (/var/lib/tportknockd),
# SYSTEM_PYTHON (/usr/bin/python3: the programs run on the system's Python, not a venv).
# With DESTDIR empty it also does what the package's maintainer scripts do: the system user,
# owners and modes, byte-compiling. `uninstall` keeps the configuration, the state directory
# and the user, as removing a package does; PURGE=yes removes them too.
set -eu
umask 022

action=${1:-}
top=$(cd "$(dirname "$0")/.." && pwd)

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}
BINDIR=${BINDIR:-$PREFIX/bin}
SBINDIR=${SBINDIR:-$PREFIX/sbin}
MANDIR=${MANDIR:-$PREFIX/share/man}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/tportknockd}
SYSCONFDIR=${SYSCONFDIR:-/etc}
STATEDIR=${STATEDIR:-/var/lib/tportknockd}
if [ "$PREFIX" = /usr ]; then
    # Debian's places for packaged files.
    PYTHONDIR=${PYTHONDIR:-/usr/lib/python3/dist-packages}
    UNITDIR=${UNITDIR:-/lib/systemd/system}
else
    # Debian's python3 looks in /usr/local/lib/python3.X/dist-packages; systemd in
    # /usr/local/lib/systemd/system.
    minor=$("$SYSTEM_PYTHON" -c 'import sys; print(sys.version_info[1])')
    PYTHONDIR=${PYTHONDIR:-$PREFIX/lib/python3.$minor/dist-packages}
    UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
fi
USER_NAME=tportknockd
CONFIG=$SYSCONFDIR/tportknockd.conf
DEFAULTS=$SYSCONFDIR/default/tportknockd
MAN_PAGES="tportknockd.8 tportknockd.conf.5 tportknock.1"
EXAMPLES="examples/knock.conf examples/knock.nft examples/door-nft packaging/full-root.conf"

say() { printf '%s\n' "$*"; }

# A two-line program that runs `module`'s main() on the system Python. The package
# directory is put on sys.path only when the system Python would not look there anyway.
launcher() {
    module=$1 target=$2
    install -d "$(dirname "$target")"
    {
        say "#!$SYSTEM_PYTHON"
        say "# ${target##*/}: installed from tportknockd's packaging/install.sh."
        say "import sys"
        if ! "$SYSTEM_PYTHON" -c 'import sys; sys.exit(sys.argv[1] not in sys.path)' "$PYTHONDIR"
        then
            say "sys.path.insert(0, '$PYTHONDIR')"
        fi
        say "from $module import main"
        say "sys.exit(main())"
    } > "$target.tmp"
    chmod 0755 "$target.tmp"
    mv "$target.tmp" "$target"
}

# A configuration file is installed once: an existing one is the administrator's.
install_config() {
    source=$1 target=$2
    if [ -z "$DESTDIR" ] && [ -e "$target" ]; then
        if ! cmp -s "$source" "$target"; then
            say "kept $target (yours); the shipped one is $source"
        fi
        return
    fi
    install -D -m 0644 "$source" "$DESTDIR$target"
}

install_files() {
    d=$DESTDIR
    (cd "$top/src" && find tportknockd -name '*.py' -not -path '*/__pycache__/*') |
        while read -r module; do
            install -D -m 0644 "$top/src/$module" "$d$PYTHONDIR/$module"
        done
    launcher tportknockd.cli "$d$SBINDIR/tportknockd"
    launcher tportknockd.client "$d$BINDIR/tportknock"
    install -d "$d$UNITDIR"
    sed "s|/usr/sbin/tportknockd|$SBINDIR/tportknockd|g" "$top/packaging/tportknockd.service" \
        > "$d$UNITDIR/tportknockd.service"
    chmod 0644 "$d$UNITDIR/tportknockd.service"
    for page in $MAN_PAGES; do
        section=${page##*.}
        install -d "$d$MANDIR/man$section"
        gzip -9 -n -c "$top/man/$page" > "$d$MANDIR/man$section/$page.gz"
        chmod 0644 "$d$MANDIR/man$section/$page.gz"
    done
    install -d "$d$DOCDIR/examples" "$d$DOCDIR/docs"
    install -m 0644 "$top/README.md" "$d$DOCDIR/"
    # The README links into docs/ and the man pages point at docs/otp-v1.md and
    # docs/failing-closed.md: they go where those links lead.
    install -m 0644 "$top"/docs/*.md "$d$DOCDIR/docs/"
    for example in $EXAMPLES; do
        install -m 0644 "$top/$example" "$d$DOCDIR/examples/"
    done
    install_config "$top/packaging/tportknockd.conf" "$CONFIG"
    install_config "$top/packaging/tportknockd.default" "$DEFAULTS"
    install -d "$d$STATEDIR"
    if [ -z "$d" ]; then
        set_up_system
    fi
}

# What the package's postinst does: the user, who owns what, byte-compiled modules.
set_up_system() {
    if ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "tportknockd port-knocking daemon" "$USER_NAME"
        say "created the system user $USER_NAME"
    fi
    # The daemon reads its config as that user; its commands are a secret from others.
    chown "root:$USER_NAME" "$CONFIG"
    chmod 0640 "$CONFIG"
    chown "$USER_NAME:$USER_NAME" "$STATEDIR"
    chmod 0700 "$STATEDIR"
    "$SYSTEM_PYTHON" -m compileall -q "$PYTHONDIR/tportknockd"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    say "installed; set INTERFACE in $DEFAULTS, write your events in $CONFIG, then"
    say "  systemctl enable --now tportknockd"
}

uninstall_files() {
    d=$DESTDIR
    if [ -z "$d" ] && [ -d /run/systemd/system ]; then
        systemctl disable --now tportknockd.service 2>/dev/null || true
    fi
    # Without the daemon nothing would ever open the door ports again: take its table away.
    if [ -z "$d" ] && [ -x "$SBINDIR/tportknockd" ]; then
        "$SBINDIR/tportknockd" --remove-table >/dev/null 2>&1 || true
    fi
    rm -rf "$d$PYTHONDIR/tportknockd" "$d$DOCDIR"
    rm -f "$d$SBINDIR/tportknockd" "$d$BINDIR/tportknock" "$d$UNITDIR/tportknockd.service"
    for page in $MAN_PAGES; do
        rm -f "$d$MANDIR/man${page##*.}/$page.gz"
    done
    if [ "${PURGE:-no}" = yes ]; then
        rm -rf "$d$CONFIG" "$d$DEFAULTS" "$d$STATEDIR"
        if [ -z "$d" ] && getent passwd "$USER_NAME" >/dev/null; then
            userdel "$USER_NAME"
            say "removed the system user $USER_NAME"
        fi
    else
        # rmdir: an empty state directory goes, one with a record of open doors stays.
        rmdir "$d$STATEDIR" 2>/dev/null || true
        say "kept $CONFIG, $DEFAULTS, $STATEDIR (if not empty) and the user $USER_NAME;"
        say "'make uninstall PURGE=yes' removes them too"
    fi
    if [ -z "$d" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
}

refuse_if_packaged() {
    if [ -z "$DESTDIR" ] && dpkg-query -W -f='${Status}' tportknockd 2>/dev/null \
            | grep -q ' installed$'; then
        say "the tportknockd package is installed: use apt to remove or upgrade it" >&2
        exit 1
    fi
}

case "$action" in
    install) refuse_if_packaged; install_files ;;
    uninstall) refuse_if_packaged; uninstall_files ;;
    *) say "usage: $0 install|uninstall" >&2; exit 2 ;;
esac
