#!/bin/sh
# Install what bench/smtp.py and bench/pop3.py need.  Idempotent; run as root.
#
#   Debian packages: postfix (for the smtp-source load generator and the
#                    optional Postfix peer), dovecot-pop3d (POP3 peer).
#   Virtualenvs under $BENCH_HOME (default /tmp/txmailhub-bench):
#     venv-aio      aiosmtpd        (SMTP peer)
#     venv-twisted  stock Twisted   (`twistd mail` SMTP and POP3 peer)
#     venv-tools    py-spy          (sampling profiler, optional)
#
# No mail daemon is left running: package scripts are kept from starting
# services, and if a system postfix or dovecot is found running anyway it is
# stopped.  The benchmark starts its own private instances on 127.0.0.1.
set -eu
BENCH_HOME=${BENCH_HOME:-/tmp/txmailhub-bench}
PYTHON=${PYTHON:-python3}

need_apt=""
command -v smtp-source >/dev/null 2>&1 || [ -x /usr/sbin/smtp-source ] || need_apt="$need_apt postfix"
[ -x /usr/sbin/dovecot ] || need_apt="$need_apt dovecot-pop3d"

if [ -n "$need_apt" ]; then
    echo "installing:$need_apt"
    # Keep maintainer scripts from starting daemons (Debian's policy-rc.d
    # convention); only add the guard if none is there, and remove ours after.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        guard=yes
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need_apt
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
fi

# A system-wide daemon must not be left running (nor listening on 25/110).
if [ -f /var/spool/postfix/pid/master.pid ] && postfix status >/dev/null 2>&1; then
    echo "stopping the system postfix"; postfix stop || true
fi
if [ -f /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
    echo "stopping the system dovecot"; doveadm stop || true
fi
if command -v ss >/dev/null 2>&1 && ss -ltn | awk '{print $4}' | grep -Eq ':(25|110)$'; then
    echo "warning: something listens on port 25 or 110 (not started by this script)" >&2
fi

mkvenv() {  # name import-name pip-spec...
    dir="$BENCH_HOME/$1"; mod=$2; shift 2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import $mod" 2>/dev/null; then
        echo "$dir: ok"; return 0
    fi
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q "$@"
    echo "$dir: installed $*"
}
mkdir -p "$BENCH_HOME"
mkvenv venv-aio aiosmtpd aiosmtpd
mkvenv venv-twisted twisted twisted
if [ "${BENCH_NO_PYSPY:-}" != 1 ]; then
    [ -x "$BENCH_HOME/venv-tools/bin/py-spy" ] || {
        "$PYTHON" -m venv "$BENCH_HOME/venv-tools"
        "$BENCH_HOME/venv-tools/bin/python" -m pip install -q py-spy || echo "py-spy not installed (optional)" >&2
    }
fi

echo "versions:"
postconf -d mail_version 2>/dev/null || true
dovecot --version 2>/dev/null | sed 's/^/dovecot /' || true
"$BENCH_HOME/venv-aio/bin/python" -c "import aiosmtpd; print('aiosmtpd', aiosmtpd.__version__)"
"$BENCH_HOME/venv-twisted/bin/python" -c "import twisted; print('twisted', twisted.__version__)"
