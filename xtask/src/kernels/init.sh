#!/bin/busybox sh
# /init of the kernel-matrix initramfs (written by `cargo xtask kernels`): mounts what
# ferroscope needs, runs the matrix steps (matrix.sh, the same steps the host runs), sends
# the results to the host as base64 of a tar on the second serial port, and powers off.
/bin/busybox --install -s /bin
export PATH=/bin NO_COLOR=1
# The initramfs holds only files: make the mount points.
mkdir -p /proc /sys /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
. /matrix.conf
export OUT FERROSCOPE C_PROGRAM PYTHON PY_SCRIPT RECORD_SECONDS RATE KPROBE_PROGRAM KPROBE_ROUNDS
[ -n "${RUST_LOG:-}" ] && export RUST_LOG
sh /matrix.sh
# The host reads what lies between the two marker lines; a missing end marker means the
# output was cut off.
{
	echo "-----BEGIN MATRIX RESULTS-----"
	tar -cf - -C "$OUT" . | base64
	echo "-----END MATRIX RESULTS-----"
} > /dev/ttyS1
poweroff -f
