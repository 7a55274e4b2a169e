#!/bin/busybox sh
# /init of the kernel matrix guest: mount what captrace's tests use, run each
# test binary under /tests with -test.v, print an exit marker per binary, and
# power off. The host reads everything from the serial console (no 9p here).
# Settings arrive as environment variables from the kernel command line.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin TMPDIR=/tmp HOME=/root

mkdir -p /proc /sys /dev /tmp /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t bpf bpffs /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Controllers for child cgroups, as on a systemd host (best effort).
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
	echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
hostname captrace-guest
ip link set lo up 2>/dev/null

echo "CAPTRACE-KERNELS-BOOTED kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
env | grep '^CAPTRACE_' | sort | sed 's/^/CAPTRACE-KERNELS-ENV /'

export CAPTRACE_KERNEL_GUEST=1
for bin in /tests/*/*.test; do
	name=${bin##*/}
	name=${name%.test}
	echo "CAPTRACE-KERNELS-BEGIN $name"
	cd "${bin%/*}"
	if [ -n "$CAPTRACE_TEST_RUN" ]; then
		"$bin" -test.v -test.count=1 -test.timeout="${CAPTRACE_TEST_TIMEOUT:-10m}" -test.run="$CAPTRACE_TEST_RUN"
	else
		"$bin" -test.v -test.count=1 -test.timeout="${CAPTRACE_TEST_TIMEOUT:-10m}"
	fi
	status=$?
	cd /
	echo
	echo "CAPTRACE-KERNELS-EXIT $name status=$status uptime=$(cut -d' ' -f1 /proc/uptime)"
done
echo "CAPTRACE-KERNELS-DONE"
sync
poweroff -f
# Not reached; if it is, panic=-1 and qemu's -no-reboot end the run.
