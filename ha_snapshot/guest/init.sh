#!/bin/sh
# shellcheck shell=sh
# /init of the ha-snapshot test guest (busybox sh, PID 1).
#
# Loads the virtio modules, mounts the ext4 data partition (the journal is
# replayed by the mount), checks the records already there, starts the QEMU
# guest agent, then appends numbered fixed-size records, each fsync'ed
# before "DURABLE n" is printed on the console. ha.mode=verify only checks
# and powers off; ha.agent=0 leaves qemu-ga off (a silent agent). The record format is ha_snapshot/guest/records.py's:
#   "R <n, 8 digits> <uptime in cs, 12 digits> <PAD> <check, 10 digits>\n",
#   128 bytes, check = (n * 69069 + cs * 40503 + 12345) mod 2^32.
# Console lines the host reads: "GUEST up", "VERIFY ok records=N",
# "VERIFY bad records=N torn=T out_of_order=O tail_bytes=B",
# "DURABLE n", "GUEST error <what>"; with sqlite3 in the initramfs also
# "SQLITE ok transactions=N" (or "SQLITE bad ...") and "COMMITTED n": an
# sqlite database (WAL, synchronous=FULL) beside the records, one
# committed transaction at a time.
# A second data disk (ha.data2=DEV, default /dev/vdb1 when there is one:
# an ext4 partition, build.py's data disk) gets records of its own, the
# same format and numbering, appended and fsync'ed after each record of
# the first disk: "VERIFY2 ...", "GUEST up2 records=N", "DURABLE2 n".
# Without it the guest prints and does exactly what it did before.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
export PATH LD_LIBRARY_PATH

mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /run /var /tmp /data
ln -s /run /var/run
mount -t tmpfs tmp /tmp

PAD=PADDING-PADDING-PADDING-PADDING-PADDING-PADDING-PADDING-PADDING-PADDING-PADDING-PADDING-PADD
RECORD=128
MODE=workload
DEVICE=
DEVICE2=
LIMIT=0
AGENT=1
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case $arg in
        ha.mode=*) MODE=${arg#ha.mode=} ;;
        ha.data=*) DEVICE=${arg#ha.data=} ;;
        ha.data2=*) DEVICE2=${arg#ha.data2=} ;;
        ha.records=*) LIMIT=${arg#ha.records=} ;;
        ha.agent=*) AGENT=${arg#ha.agent=} ;;
    esac
done

fail() {
    echo "GUEST error $*"
    sync
    poweroff -f
    sleep 3600
}

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev \
         virtio_pci virtio_blk virtio_console; do
    insmod /modules/$m.ko || fail "insmod $m"
done

# NOTE: the data partition is the disk's Linux one: vda2 on the bootable
# disk (vda1 is the FAT boot partition).
if [ -z "$DEVICE" ]; then
    DEVICE=/dev/vda2
fi
i=0
while [ ! -b "$DEVICE" ]; do
    i=$((i + 1))
    [ $i -gt 500 ] && fail "no block device $DEVICE"
    usleep 10000
done
mount -t ext4 -o rw "$DEVICE" /data || fail "mount $DEVICE"
F=/data/records
touch $F
# NOTE: insmod virtio_blk probed every disk, partitions and /dev nodes
# included, before it returned: a second disk is there now or never.
if [ -z "$DEVICE2" ] && [ -b /dev/vdb1 ]; then
    DEVICE2=/dev/vdb1
fi
F2=
if [ -n "$DEVICE2" ]; then
    mkdir -p /data2
    mount -t ext4 -o rw "$DEVICE2" /data2 || fail "mount $DEVICE2"
    F2=/data2/records
    touch $F2
fi

# One awk process checks every record, as records.py does: the file is a
# row of 128-byte slots; slot k holds a good record numbered k, or is torn
# (or holds a good record with another number: out of order); an
# incomplete slot at the end counts as tail_bytes only. awk reads lines: a
# slot is good when a line ends at its end and the 127 bytes before the
# newline are a good record; every other slot a line covers is torn.
# NOTE: NUL bytes become "?" first (awk strings end at NUL); busybox awk
# reads "00000116" as octal and prints %d in 32 bits: numbers lose their
# leading zeros first, the check is printed with %.0f (exact below 2^53).
verify() {
    f=${1:-$F}
    size=$(stat -c %s "$f")
    tr '\000' '?' < "$f" | awk -v size="$size" -v rec=$RECORD -v pad="$PAD" \
        -v tag="${2:-VERIFY}" '
        function num(s) { sub(/^0+/, "", s); return s + 0 }
        function slot(r, k,    f) {
            if (split(r, f, " ") != 5 || f[1] != "R" || f[4] != pad || \
                length(f[2]) != 8 || f[2] !~ /^[0-9]+$/ || \
                length(f[3]) != 12 || f[3] !~ /^[0-9]+$/ || \
                f[5] != sprintf("%010.0f", (num(f[2]) * 69069 + \
                    num(f[3]) * 40503 + 12345) % 4294967296)) torn++
            else if (num(f[2]) != k) order++
            else good++
        }
        {
            before = off
            off += length($0) + 1
            if (off > size) { off = before; exit }
            slots = int(off / rec) - int(before / rec)
            if (slots > 0 && off % rec == 0 && length($0) >= rec - 1) {
                torn += slots - 1
                slot(substr($0, length($0) - rec + 2), off / rec)
            } else torn += slots
        }
        END {
            torn += int(size / rec) - int(off / rec)
            tail = size % rec
            bad = torn + order + (tail > 0)
            printf "%s %s records=%d", tag, bad ? "bad" : "ok", good
            if (bad) printf " torn=%d out_of_order=%d tail_bytes=%d", \
                torn, order, tail
            printf "\n"
        }'
}

# The database: transaction c inserts row c and adds c to the totals row,
# so a lost, partial or doubled transaction shows as a mismatch.
DB=/data/app.db
# NOTE: one transaction, run at every boot: a crash (or a crash-consistent
# snapshot) during the set-up leaves no half schema behind.
SQL_INIT="PRAGMA journal_mode=WAL;
BEGIN;
CREATE TABLE IF NOT EXISTS tx(id INTEGER PRIMARY KEY, t INTEGER NOT NULL,
                              body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS totals(k INTEGER PRIMARY KEY CHECK (k = 1),
                                  n INTEGER NOT NULL, total INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
COMMIT;"
SQL_CHECK="PRAGMA integrity_check;
SELECT 'rows', count(*), coalesce(max(id), 0), coalesce(sum(id), 0) FROM tx;
SELECT 'totals', n, total FROM totals;"

verify_db() {
    out=$(sqlite3 -batch $DB "$SQL_CHECK" 2>&1 | tr '\n|' '  ')
    set -f
    # shellcheck disable=SC2086
    set -- $out
    set +f
    if [ $# -eq 8 ] && [ "$1 $2 $6" = "ok rows totals" ] &&
       [ "$3" = "$4" ] && [ "$3" = "$7" ] && [ "$5" = "$8" ]; then
        echo "SQLITE ok transactions=$3"
    else
        echo "SQLITE bad $out"
    fi
}

# NOTE: one sqlite3 process for all transactions (starting one per
# transaction costs ~0.3 s under TCG): awk writes them into its stdin, the
# pipe paces awk; sqlite3 prints "COMMITTED c" once COMMIT has returned.
db_workload() {
    c=$(sqlite3 -batch $DB "SELECT coalesce(max(id), 0) FROM tx") ||
        fail "sqlite3 $DB"
    awk -v c="$c" -v limit="$LIMIT" 'BEGIN {
        q = "\047"
        print "PRAGMA synchronous=FULL;"
        while (limit == 0 || c < limit) {
            c++
            printf "BEGIN; INSERT INTO tx VALUES (%d, " \
                   "CAST(strftime(%s%%s%s) AS INTEGER), %stransaction %d%s);" \
                   " UPDATE totals SET n = n + 1, total = total + %d;" \
                   " COMMIT; SELECT %sCOMMITTED %d%s;\n", \
                   c, q, q, q, c, q, c, q, c, q
        }
    }' | sqlite3 -batch -bail $DB || echo "GUEST error sqlite3 workload"
}

verify
if [ -n "$F2" ]; then verify $F2 VERIFY2; fi
if [ "$MODE" = verify ]; then
    if [ -x /usr/bin/sqlite3 ]; then
        if [ -s $DB ]; then verify_db; else echo "SQLITE none"; fi
    fi
    umount /data
    if [ -n "$F2" ]; then umount /data2; fi
    poweroff -f
    sleep 3600
fi

for d in /sys/class/virtio-ports/*; do
    if [ -e "$d/name" ] && [ "$(cat "$d/name")" = org.qemu.guest_agent.0 ]
    then
        if [ -x /usr/sbin/qemu-ga ] && [ "$AGENT" = 1 ]; then
            /usr/sbin/qemu-ga -m virtio-serial -p "/dev/${d##*/}" \
                -t /run -f /run/qemu-ga.pid &
        fi
    fi
done

# NOTE: a torn tail (an append not yet fsync'ed when the disk was copied)
# is cut off; the numbering goes on from the last whole record.
size=$(stat -c %s $F)
n=$((size / RECORD))
truncate -s $((n * RECORD)) $F
echo "GUEST up records=$n"
if [ -n "$F2" ]; then
    size=$(stat -c %s $F2)
    n2=$((size / RECORD))
    truncate -s $((n2 * RECORD)) $F2
    echo "GUEST up2 records=$n2"
fi
# NOTE: the database is checked and written beside the records, not
# before them: starting sqlite3 twice costs the first record ~1 s.
if [ -x /usr/bin/sqlite3 ]; then
    (
        sqlite3 -batch $DB "$SQL_INIT" > /dev/null || fail "sqlite3 $DB"
        verify_db
        db_workload
    ) &
fi
while [ "$LIMIT" -eq 0 ] || [ "$n" -lt "$LIMIT" ]; do
    n=$((n + 1))
    read -r up _ < /proc/uptime
    cs=$((${up%.*} * 100 + 1${up#*.} - 100))
    id=$((100000000 + n))
    t=$((1000000000000 + cs))
    check=$((10000000000 + (n * 69069 + cs * 40503 + 12345) % 4294967296))
    echo "R ${id#1} ${t#1} $PAD ${check#1}" >> $F
    sync $F || fail "fsync of record $n"
    echo "DURABLE $n"
    if [ -n "$F2" ]; then
        n2=$((n2 + 1))
        id=$((100000000 + n2))
        check=$((10000000000 + (n2 * 69069 + cs * 40503 + 12345) % 4294967296))
        echo "R ${id#1} ${t#1} $PAD ${check#1}" >> $F2
        sync $F2 || fail "fsync of record $n2 on the second disk"
        echo "DURABLE2 $n2"
    fi
done
echo "GUEST done records=$n"
while :; do sleep 3600; done
